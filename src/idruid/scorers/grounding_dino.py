"""GroundingDINO (transformers) behind the Detector protocol, for the RL reward and COCO-MIG's
position check on real images.

A prompt of one caption is GroundingDINO's own case, and the one COCO-MIG's scorer uses (it asks
for each object name on its own): a box's score is the max of sigmoid(logits) over every token of
the prompt, [CLS], '.' and [SEP] included, and the box is kept when that score is above
box_threshold (strictly), as GroundingDINO's ``predict`` keeps it. Its text_threshold only picks
the tokens of the box's phrase, so it keeps or drops nothing here; where no word token passes it
(the phrase is '.' alone) GroundingDINO's ``predict_with_classes`` raises IndexError, and this
keeps the box. With several captions in one prompt (the RL reward) the max over all tokens would
not say which caption a box answers: each caption then scores a box over its own tokens, and
keeps it above both thresholds (the phrase test). Boxes are converted as GroundingDINO does and
not clipped to the image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from idruid.boxes import cxcywh_to_xyxy

from .protocols import Detections
from .roles import check_model_dir

if TYPE_CHECKING:
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor


def grounding_prompt(captions: Sequence[str]) -> str:
    """GroundingDINO's text for a set of queries: "cap1. cap2. cap3." lower-cased. The model splits
    phrases at '.' and '?', so a caption may end with '.' but hold neither inside."""
    phrases = []
    for caption in captions:
        phrase = caption.strip().lower().rstrip(".").strip()
        if not phrase or "." in phrase or "?" in phrase:
            raise ValueError(f"caption {caption!r} must be non-empty and hold no '.' or '?' (phrase breaks)")
        phrases.append(phrase)
    return " ".join(f"{phrase}." for phrase in phrases)


def phrase_spans(input_ids: np.ndarray, separator_id: int, count: int) -> list[tuple[int, int]]:
    """[start, end) token span of each phrase of a "cap1. cap2." prompt in (T,) input_ids: the
    tokens after [CLS] or the previous '.', up to the next '.'."""
    separators = np.flatnonzero(np.asarray(input_ids) == separator_id)
    if len(separators) != count:
        raise ValueError(f"expected {count} '.' separators in the prompt, found {len(separators)}")
    starts = np.concatenate([[1], separators[:-1] + 1])[:count].astype(int)  # [CLS] opens the first
    if (separators <= starts).any():
        raise ValueError("a caption tokenised to no tokens")
    return list(zip(starts.tolist(), separators.tolist(), strict=True))


def caption_spans(input_ids: np.ndarray, length: int, separator_id: int, count: int) -> list[tuple[int, int]]:
    """[start, end) of the tokens that score a box for each of a prompt's ``count`` captions:
    the whole prompt (its ``length`` real tokens, [CLS] to [SEP]) for one caption, as
    GroundingDINO scores a box; each caption's own tokens (phrase_spans) for several."""
    if count == 1:
        return [(0, length)]
    return phrase_spans(input_ids, separator_id, count)


class GroundingDinoDetector:
    """GroundingDINO (transformers) behind the Detector protocol: all of an image's captions go
    into one prompt (one caption per prompt for COCO-MIG), and a query box scores for a caption
    by the max of sigmoid(logits) over caption_spans; kept when that score is above box_threshold
    (one caption) or above both thresholds (several; see the module docstring)."""

    def __init__(
        self,
        model: GroundingDinoForObjectDetection,
        processor: GroundingDinoProcessor,
        device: str = "cpu",
        box_threshold: float = 0.25,
        text_threshold: float = 0.25,
    ) -> None:
        from transformers.models.grounding_dino.modeling_grounding_dino import SPECIAL_TOKENS

        tokenizer = processor.tokenizer
        tokens = [tokenizer.cls_token, tokenizer.sep_token, ".", "?"]
        ids = [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]
        if ids != list(SPECIAL_TOKENS):
            # The model splits phrases at these hard-coded ids; another vocabulary would merge them.
            raise ValueError(f"tokenizer maps {tokens} to {ids}; GroundingDINO hard-codes {SPECIAL_TOKENS}")
        self.separator_id = ids[2]
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        box_threshold: float = 0.25,
        text_threshold: float = 0.25,
    ) -> GroundingDinoDetector:
        """Model and processor from a local directory written by their save_pretrained (or a hub
        snapshot); in transformers 5 AutoProcessor picks the PIL image processor without torchvision."""
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        directory = check_model_dir("detector", path)
        model = GroundingDinoForObjectDetection.from_pretrained(directory)
        processor = AutoProcessor.from_pretrained(directory)
        return cls(model, processor, device, box_threshold, text_threshold)

    def threshold(self, captions: int) -> float:
        """The score a box must exceed for a caption of a prompt of ``captions`` captions."""
        return self.box_threshold if captions == 1 else max(self.box_threshold, self.text_threshold)

    def detect(self, images: np.ndarray, captions: Sequence[Sequence[str]]) -> list[list[Detections]]:
        """images (B, H, W, 3) uint8; captions[b] the queries for image b -> detections[b][query],
        boxes normalised xyxy, best first. One forward for the batch; texts are padded."""
        import torch

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (B, H, W, 3) uint8, got {images.shape} {images.dtype}")
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} caption lists")
        prompts = [grounding_prompt(queries) for queries in captions]
        if not any(prompts):
            return [[] for _ in captions]
        inputs = self.processor(
            images=list(images),
            text=prompts,
            padding=True,
            return_tensors="pt",
            input_data_format="channels_last",
        )
        max_text_len = self.model.config.max_text_len
        lengths = inputs["attention_mask"].sum(dim=1)
        if int(lengths.max()) > max_text_len:
            # The model would silently cut the prompt, and the last captions with it.
            b = int(lengths.argmax())
            raise ValueError(f"image {b}: prompt of {int(lengths[b])} tokens, the model reads {max_text_len}")
        with torch.no_grad():
            outputs = self.model(**inputs.to(self.device))
        probs = outputs.logits.float().sigmoid().cpu().numpy()  # (B, Q, max_text_len), float32
        boxes = cxcywh_to_xyxy(outputs.pred_boxes.float().cpu().numpy())  # (B, Q, 4) float32, unclipped
        input_ids = inputs["input_ids"].cpu().numpy()  # (B, T)
        results = []
        for b, queries in enumerate(captions):
            detections = []
            threshold = self.threshold(len(queries))
            spans = caption_spans(input_ids[b], int(lengths[b]), self.separator_id, len(queries))
            for start, end in spans:
                scores = probs[b, :, start:end].max(axis=-1)  # (Q,)
                keep = np.flatnonzero(scores > np.float32(threshold))
                order = keep[np.argsort(-scores[keep], kind="stable")]
                detections.append(Detections(boxes=boxes[b, order], scores=scores[order].astype(np.float32)))
            results.append(detections)
        return results
