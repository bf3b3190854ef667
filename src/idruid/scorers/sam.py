"""SAM (or SAM-HQ) behind the Segmenter protocol, for COCO-MIG's colour check on real images.

COCO-MIG (MIG_Bench's eval_mig.py) prompts SAM with each instance's ground-truth box on the
512x512 image, keeps the best of SAM's three masks (highest predicted IoU, the first on a tie as
np.argmax) and counts the mask's pixels in the caption colour's HSV range. SamSegmenter does
the same with transformers' SamModel + SamProcessor loaded from a local directory: one forward
per chunk of images, all of an image's boxes prompted together (SAM decodes each box on its own,
so padding an image's boxes to the chunk's longest list changes nothing), masks brought back
to the image size by the processor's post_process_masks. Boxes are scaled to pixels unrounded
(idruid.boxes.to_pixels), as COCO-MIG does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from idruid.boxes import to_pixels

from .roles import check_model_dir

if TYPE_CHECKING:
    from transformers import SamModel, SamProcessor


def sam_model_type(path: str | os.PathLike) -> str:
    """The model type of a SAM folder: sam, or sam_hq (SAM-HQ, the I-DRUID authors' segmenter)."""
    return json.loads((check_model_dir("segmenter", path) / "config.json").read_text())["model_type"]


class SamSegmenter:
    """SAM (transformers) behind the Segmenter protocol: each box prompts one mask, the best of
    the multimask output by predicted IoU, thresholded at 0 on the image's own size."""

    def __init__(
        self, model: SamModel, processor: SamProcessor, device: str = "cpu", batch_size: int = 4
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.batch_size = batch_size  # images per vision-encoder forward (ViT-H at 1024 is heavy)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str = "cpu", batch_size: int = 4
    ) -> SamSegmenter:
        """Model and processor from a local directory written by their save_pretrained (or a hub
        snapshot such as facebook/sam-vit-huge, or syscv-community/sam-hq-vit-huge for SAM-HQ,
        downloaded beforehand)."""
        from transformers import SamHQModel, SamHQProcessor, SamModel, SamProcessor

        hq = sam_model_type(path) == "sam_hq"
        directory = check_model_dir("segmenter", path)
        model = (SamHQModel if hq else SamModel).from_pretrained(directory)
        processor = (SamHQProcessor if hq else SamProcessor).from_pretrained(directory)
        return cls(model, processor, device, batch_size)

    def segment(self, images: np.ndarray, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images (B, H, W, 3) uint8; boxes[b] (n_b, 4) normalised xyxy -> masks[b] (n_b, H, W) bool."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (B, H, W, 3) uint8, got {images.shape} {images.dtype}")
        if len(images) != len(boxes):
            raise ValueError(f"got {len(images)} images but {len(boxes)} box lists")
        height, width = images.shape[1:3]
        boxes = [to_pixels(b, height, width) for b in boxes]
        masks = [np.zeros((len(b), height, width), dtype=bool) for b in boxes]
        prompted = [k for k, b in enumerate(boxes) if len(b)]
        for start in range(0, len(prompted), self.batch_size):
            chunk = prompted[start : start + self.batch_size]
            chunk_masks = self._segment_chunk(images[chunk], [boxes[k] for k in chunk])
            for k, image_masks in zip(chunk, chunk_masks, strict=True):
                masks[k] = image_masks
        return masks

    def _segment_chunk(self, images: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        """One forward for images (b, H, W, 3) with boxes[i] (n_i >= 1, 4) in pixels."""
        import torch

        longest = max(len(b) for b in boxes)
        # Pad each image's list with copies of its last box: the decoder treats boxes independently.
        padded = [np.concatenate([b, np.repeat(b[-1:], longest - len(b), axis=0)]) for b in boxes]
        inputs = self.processor(
            images=list(images),
            input_boxes=[p.tolist() for p in padded],
            return_tensors="pt",
            input_data_format="channels_last",
        )
        with torch.no_grad():
            outputs = self.model(**inputs.to(self.device), multimask_output=True)
        best = outputs.iou_scores.argmax(dim=-1)  # (b, n)
        low_res = torch.gather(
            outputs.pred_masks,
            2,
            best[:, :, None, None, None].expand(-1, -1, 1, *outputs.pred_masks.shape[-2:]),
        )  # (b, n, 1, h, w)
        full = self.processor.post_process_masks(
            list(low_res.float().cpu()), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )  # b x (n, 1, H, W) bool
        return [m[: len(b), 0].numpy().astype(bool) for m, b in zip(full, boxes, strict=True)]
