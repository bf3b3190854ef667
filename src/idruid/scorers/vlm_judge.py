"""LayoutSAM-eval's VLM judge (CreatiLayout, Zhang et al. 2025b; paper section 4.1, Table 2).

The protocol scores every box of a generated image by questioning a vision-language model
about the crop of that box, taken from the generated image at its own resolution:

1. spatial: is the box's subject present in the crop?
2. only if it is: do the colour, the texture and the shape of the subject agree with the
   box's detailed caption (an attribute the caption does not mention counts as agreeing)?

A "no" on the spatial question fails all four; scores are micro-averages over all boxes
(idruid.metrics.aggregate_sam). CreatiLayout asks MiniCPM-V and searches the generated text
for "yes"; here an answer is read in one forward pass as the sign of logit("Yes") - logit("No")
at the first answer position, so it is deterministic and testable. Any local transformers VLM
whose processor has a chat template works (Llava, Qwen2-VL, Idefics3, ...).

Our layouts carry one caption per box, so it serves both as the subject of the spatial
question and as the detailed description of the attribute questions (LayoutSAM has a short
and a detailed caption per box; the question functions take both).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from idruid.boxes import pixel_windows

from .protocols import RegionJudgement
from .registry import check_model_dir

if TYPE_CHECKING:
    from PIL import Image
    from transformers import PreTrainedModel, ProcessorMixin

ATTRIBUTES = ("color", "texture", "shape")  # RegionJudgement's fields after "spatial"
ANSWERS = ("Yes", "No")

# (crops, questions) -> (n,) bool: the VLM's yes/no for each crop and its question.
Answerer = Callable[[Sequence[np.ndarray], Sequence[str]], np.ndarray]

# ----------------------------------------------------------------------------- crops


def box_crops_pixels(image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """The pixels of each normalised xyxy box of an (H, W, C) image: a list of (h_k, w_k, C)
    arrays at the image's own resolution (no resampling), at least 1 x 1 each
    (idruid.boxes.pixel_windows)."""
    image = np.asarray(image)
    windows = pixel_windows(boxes, image.shape[0], image.shape[1])
    return [image[r0:r1, c0:c1] for r0, r1, c0, c1 in windows.tolist()]


# ----------------------------------------------------------------------------- questions

_REPLY = 'Reply with one word, "Yes" or "No".'


def spatial_question(subject: str) -> str:
    """LayoutSAM-eval's first question: is the box's subject in the crop at all?"""
    return f'Does this image contain "{subject}"? {_REPLY}'


def attribute_question(attribute: str, subject: str, description: str) -> str:
    """The colour / texture / shape question: does the subject's attribute agree with the
    detailed description? A description silent on the attribute must be answered "Yes"."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute {attribute!r}: expected one of {ATTRIBUTES}")
    return (
        f'Does the {attribute} of "{subject}" in this image agree with the description "{description}"? '
        f'If the description does not mention its {attribute}, reply "Yes". {_REPLY}'
    )


# ----------------------------------------------------------------------------- protocol


def judge_regions(
    crops: Sequence[np.ndarray], captions: Sequence[str], ask: Answerer
) -> list[RegionJudgement]:
    """The protocol's verdicts for boxes given as crops and captions: one batch of spatial
    questions, then one batch of the three attribute questions for the boxes that passed it.
    Boxes that fail the spatial question fail everything and are asked nothing more."""
    if len(crops) != len(captions):
        raise ValueError(f"got {len(crops)} crops but {len(captions)} captions")
    spatial = np.asarray(ask(crops, [spatial_question(c) for c in captions]), dtype=bool).reshape(-1)
    if spatial.shape != (len(crops),):
        raise ValueError(f"the answerer gave {spatial.shape[0]} answers to {len(crops)} spatial questions")
    present = np.flatnonzero(spatial)
    attribute_crops = [crops[k] for k in present for _ in ATTRIBUTES]
    questions = [attribute_question(a, captions[k], captions[k]) for k in present for a in ATTRIBUTES]
    agrees = np.zeros((len(crops), len(ATTRIBUTES)), dtype=bool)
    if len(present):
        answers = np.asarray(ask(attribute_crops, questions), dtype=bool).reshape(-1)
        if answers.shape != (len(questions),):
            raise ValueError(f"the answerer gave {answers.shape[0]} answers to {len(questions)} questions")
        agrees[present] = answers.reshape(len(present), len(ATTRIBUTES))
    return [RegionJudgement(bool(s), *map(bool, a)) for s, a in zip(spatial, agrees, strict=True)]


def _check_batch(images: np.ndarray, boxes: Sequence[np.ndarray], captions: Sequence[Sequence[str]]) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (B, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if not len(images) == len(boxes) == len(captions):
        raise ValueError(
            f"got {len(images)} images, {len(boxes)} box lists and {len(captions)} caption lists"
        )
    for b, (image_boxes, image_captions) in enumerate(zip(boxes, captions, strict=True)):
        count = len(np.asarray(image_boxes).reshape(-1, 4))
        if count != len(image_captions):
            raise ValueError(f"image {b}: {count} boxes but {len(image_captions)} captions")
        for k, caption in enumerate(image_captions):
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"image {b}, box {k}: the caption must be a non-empty string")


# ----------------------------------------------------------------------------- VLM


def answer_token_id(tokenizer, word: str) -> int:
    """The vocabulary id of an answer word, which must be a single known token: the judge reads
    the next-token logit of exactly that token."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"the tokenizer has no single token for {word!r} (it gives {pieces}); the VLM judge reads "
            f"answers from the next-token logits of {ANSWERS[0]!r} and {ANSWERS[1]!r}"
        )
    return int(ids[0])


class VlmJudge:
    """A local vision-language model behind the Judge protocol, asking LayoutSAM-eval's questions.

    Each question goes to the model as one user turn (the crop, then the text) formatted by the
    processor's chat template with the generation prompt; the answer is "Yes" when the logit of
    the "Yes" token beats that of "No" at the first answer position. Prompts are right-padded
    and read at each row's last real token: a plain forward numbers positions from 0 whatever
    the mask, so each prompt keeps the positions it has alone (left padding shifts them, which
    only purely relative encodings such as RoPE ignore). batch_size bounds prompts per forward.
    """

    def __init__(
        self, model: PreTrainedModel, processor: ProcessorMixin, device: str = "cpu", batch_size: int = 16
    ) -> None:
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(
                "the VLM's processor has no chat template (chat_template.jinja); the judge formats "
                "its questions with it"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.yes_id, self.no_id = (answer_token_id(processor.tokenizer, word) for word in ANSWERS)
        processor.tokenizer.padding_side = "right"
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str = "cpu", batch_size: int = 16, dtype: str = "auto"
    ) -> VlmJudge:
        """Model and processor from a local directory written by their save_pretrained (or a hub
        snapshot of a VLM such as Qwen2-VL or Llava)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        directory = check_model_dir("judge", path)
        processor = AutoProcessor.from_pretrained(directory)
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"{directory}: the processor has no chat template (chat_template.jinja)")
        model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype)
        return cls(model, processor, device, batch_size)

    def prompt(self, question: str) -> str:
        """One question as the model's chat text: a user turn of the crop and the question."""
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)

    def yes_margins(self, crops: Sequence[np.ndarray], questions: Sequence[str]) -> np.ndarray:
        """(n,) float32 logit("Yes") - logit("No") for each (h, w, 3) uint8 crop and its question."""
        import torch
        from PIL import Image

        if len(crops) != len(questions):
            raise ValueError(f"got {len(crops)} crops but {len(questions)} questions")
        margins = np.zeros(len(crops), dtype=np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            images: list[list[Image.Image]] = [[Image.fromarray(np.asarray(c))] for c in crops[chunk]]
            inputs = self.processor(
                images=images,
                text=[self.prompt(q) for q in questions[chunk]],
                padding=True,
                return_tensors="pt",
            ).to(device=self.device, dtype=self.model.dtype)
            last = inputs["attention_mask"].sum(dim=1) - 1  # (b,) each row's last real token
            keep, column = torch.unique(last, sorted=True, return_inverse=True)
            with torch.inference_mode():
                logits = self.model(**inputs, logits_to_keep=keep).logits  # (b, len(keep), V)
            rows = torch.arange(len(last), device=logits.device)
            answer = logits[rows, column.to(logits.device)].float()  # (b, V)
            margins[chunk] = (answer[:, self.yes_id] - answer[:, self.no_id]).cpu().numpy()
        return margins

    def answers(self, crops: Sequence[np.ndarray], questions: Sequence[str]) -> np.ndarray:
        """(n,) bool: True where the model prefers "Yes" to "No" (a tie reads as "No")."""
        return self.yes_margins(crops, questions) > 0

    def judge(
        self, images: np.ndarray, boxes: Sequence[np.ndarray], captions: Sequence[Sequence[str]]
    ) -> list[list[RegionJudgement]]:
        """images (B, H, W, 3) uint8; boxes[b] (n, 4) normalised xyxy and captions[b] (n) -> one
        verdict per box. All boxes of the batch are questioned together."""
        images = np.asarray(images)
        _check_batch(images, boxes, captions)
        crops = [
            crop for image, bx in zip(images, boxes, strict=True) for crop in box_crops_pixels(image, bx)
        ]
        flat = judge_regions(crops, [c for image_captions in captions for c in image_captions], self.answers)
        bounds = np.cumsum([0, *map(len, captions)])
        return [flat[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
