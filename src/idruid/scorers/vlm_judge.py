"""LayoutSAM-eval's VLM judge (CreatiLayout, Zhang et al. 2025b; paper section 4.1, Table 2), as
CreatiLayout's ``score_layoutsam_benchmark.py`` scores a generated image:

1. each box is cropped from the generated image at its own resolution (boxes.truncated_windows);
2. spatial: is the subject (the box's SHORT region caption) present in the crop?
3. only if it is: are the subject's colour, texture and shape consistent with the box's
   DETAILED caption (an attribute the description does not mention counts as consistent)?

A "no" on the spatial question fails all four; scores are micro-averages over all boxes
(idruid.metrics.aggregate_sam). The questions are the script's, word for word (the script drops
'/' from both captions, since it also names crop files after them).

How an answer is read (``rule``):

- "generate" (the default, the script's rule): the model writes an answer to the question and
  it counts as "yes" when it holds "Yes" or "yes" anywhere. The script calls MiniCPM-V's
  ``chat()``, which samples by default (temperature 0.7, top-p 0.8; its ``seed=42`` argument is
  not one chat reads); here decoding is greedy, the deterministic reading of the same rule, and
  stops after ``max_new_tokens`` (the script allows 2048).
- "logits": "Yes" when logit("Yes") > logit("No") at the first answer position, one forward
  pass. It can disagree with the script's rule wherever the model's most likely first token is
  neither word, or the answer says "yes" later.

Any local transformers VLM whose processor has a chat template works (MiniCPM-V's remote code
does not load through AutoModelForImageTextToText; Qwen2-VL, Llava, Idefics3... do).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from idruid.boxes import truncated_windows

from .protocols import RegionJudgement
from .roles import check_model_dir

if TYPE_CHECKING:
    from PIL import Image
    from transformers import PreTrainedModel, ProcessorMixin

ATTRIBUTES = ("color", "texture", "shape")  # RegionJudgement's fields after "spatial"
ANSWERS = ("Yes", "No")
ANSWER_RULES = ("generate", "logits")  # the script's reading of a written answer; the logit reading
DEFAULT_RULE = "generate"

# (crops, questions) -> (n,) bool: the VLM's yes/no for each crop and its question.
Answerer = Callable[[Sequence[np.ndarray], Sequence[str]], np.ndarray]

# ----------------------------------------------------------------------------- crops


def box_crops(image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """The crop of each normalised xyxy box of an (H, W, C) image as the script takes it: a list of
    (h_k, w_k, C) arrays at the image's own resolution (no resampling), at least 1 x 1 each
    (idruid.boxes.truncated_windows)."""
    image = np.asarray(image)
    windows = truncated_windows(boxes, image.shape[0], image.shape[1])
    return [image[r0:r1, c0:c1] for r0, r1, c0, c1 in windows.tolist()]


# ----------------------------------------------------------------------------- questions

_REPLY = 'Strictly answer with "Yes" or "No", without any irrelevant words.'


def _quoted(caption: str) -> str:
    return caption.replace("/", "")  # as the script, which also names crop files after captions


def spatial_question(subject: str) -> str:
    """LayoutSAM-eval's first question: is the box's subject (its short caption) in the crop?"""
    return f'Is the subject "{_quoted(subject)}" present in the image? {_REPLY}'


def attribute_question(attribute: str, subject: str, description: str) -> str:
    """The colour / texture / shape question: is the subject's attribute consistent with the
    detailed description? A description silent on the attribute must be answered "Yes"."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute {attribute!r}: expected one of {ATTRIBUTES}")
    return (
        f'Is the subject in "{_quoted(subject)}" in the image consistent with the {attribute} described '
        f'in the detailed description: "{_quoted(description)}"? {_REPLY} If the {attribute} is not '
        f'mentioned in the detailed description, the answer is "Yes".'
    )


def says_yes(answer: str) -> bool:
    """The script's reading of a written answer: "Yes" or "yes" anywhere in it."""
    return "Yes" in answer or "yes" in answer


# ----------------------------------------------------------------------------- protocol


def judge_regions(
    crops: Sequence[np.ndarray], subjects: Sequence[str], descriptions: Sequence[str], ask: Answerer
) -> list[RegionJudgement]:
    """The protocol's verdicts for boxes given as crops, subjects (short captions) and detailed
    descriptions: one batch of spatial questions, then one batch of the three attribute questions
    for the boxes that passed it. Boxes that fail the spatial question fail everything and are
    asked nothing more."""
    if not len(crops) == len(subjects) == len(descriptions):
        raise ValueError(
            f"got {len(crops)} crops, {len(subjects)} subjects and {len(descriptions)} descriptions"
        )
    spatial = np.asarray(ask(crops, [spatial_question(s) for s in subjects]), dtype=bool).reshape(-1)
    if spatial.shape != (len(crops),):
        raise ValueError(f"the answerer gave {spatial.shape[0]} answers to {len(crops)} spatial questions")
    present = np.flatnonzero(spatial)
    attribute_crops = [crops[k] for k in present for _ in ATTRIBUTES]
    questions = [attribute_question(a, subjects[k], descriptions[k]) for k in present for a in ATTRIBUTES]
    agrees = np.zeros((len(crops), len(ATTRIBUTES)), dtype=bool)
    if len(present):
        answers = np.asarray(ask(attribute_crops, questions), dtype=bool).reshape(-1)
        if answers.shape != (len(questions),):
            raise ValueError(f"the answerer gave {answers.shape[0]} answers to {len(questions)} questions")
        agrees[present] = answers.reshape(len(present), len(ATTRIBUTES))
    return [RegionJudgement(bool(s), *map(bool, a)) for s, a in zip(spatial, agrees, strict=True)]


def _check_batch(
    images: np.ndarray,
    boxes: Sequence[np.ndarray],
    captions: Sequence[Sequence[str]],
    subjects: Sequence[Sequence[str]],
) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be (B, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if not len(images) == len(boxes) == len(captions) == len(subjects):
        raise ValueError(
            f"got {len(images)} images, {len(boxes)} box lists, {len(captions)} caption lists and "
            f"{len(subjects)} subject lists"
        )
    for b, (image_boxes, image_captions, image_subjects) in enumerate(
        zip(boxes, captions, subjects, strict=True)
    ):
        count = len(np.asarray(image_boxes).reshape(-1, 4))
        if not count == len(image_captions) == len(image_subjects):
            raise ValueError(
                f"image {b}: {count} boxes but {len(image_captions)} captions "
                f"and {len(image_subjects)} subjects"
            )
        for k, (caption, subject) in enumerate(zip(image_captions, image_subjects, strict=True)):
            for what, text in (("caption", caption), ("subject", subject)):
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"image {b}, box {k}: the {what} must be a non-empty string")


# ----------------------------------------------------------------------------- VLM


def answer_token_id(tokenizer, word: str) -> int:
    """The vocabulary id of an answer word, which must be a single known token: the logit rule
    reads the next-token logit of exactly that token."""
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"the tokenizer has no single token for {word!r} (it gives {pieces}); the judge's logit rule "
            f"reads answers from the next-token logits of {ANSWERS[0]!r} and {ANSWERS[1]!r}"
        )
    return int(ids[0])


class VlmJudge:
    """A local vision-language model behind the Judge protocol, asking LayoutSAM-eval's questions.

    Each question goes to the model as one user turn (the crop, then the text) formatted by the
    processor's chat template with the generation prompt. ``rule`` says how the answer is read
    (module docstring): "generate" writes it greedily, up to ``max_new_tokens``, from left-padded
    prompts (as transformers' generate wants them); "logits" compares logit("Yes") and
    logit("No") at the first answer position of right-padded prompts, read at each row's last
    real token, so each prompt keeps the positions it has alone. ``batch_size`` bounds prompts
    per forward or generate call.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        device: str = "cpu",
        batch_size: int = 16,
        rule: str = DEFAULT_RULE,
        max_new_tokens: int = 32,
    ) -> None:
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(
                "the VLM's processor has no chat template (chat_template.jinja); the judge formats "
                "its questions with it"
            )
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(
                f"batch_size and max_new_tokens must be at least 1, got {batch_size}, {max_new_tokens}"
            )
        if rule not in ANSWER_RULES:
            raise ValueError(f"judge rule {rule!r}: expected one of {', '.join(ANSWER_RULES)}")
        self.rule = rule
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        if rule == "logits":
            self.answer_ids  # noqa: B018 -- fail now, not at the first question, if it cannot apply

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        batch_size: int = 16,
        dtype: str = "auto",
        rule: str = DEFAULT_RULE,
    ) -> VlmJudge:
        """Model and processor from a local directory written by their save_pretrained (or a hub
        snapshot of a VLM such as Qwen2-VL or Llava)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        directory = check_model_dir("judge", path)
        processor = AutoProcessor.from_pretrained(directory)
        if getattr(processor, "chat_template", None) is None:
            raise ValueError(f"{directory}: the processor has no chat template (chat_template.jinja)")
        model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype)
        return cls(model, processor, device, batch_size, rule)

    @cached_property
    def answer_ids(self) -> tuple[int, int]:
        """The vocabulary ids of "Yes" and "No", which the logit rule compares."""
        yes, no = (answer_token_id(self.processor.tokenizer, word) for word in ANSWERS)
        return yes, no

    def prompt(self, question: str) -> str:
        """One question as the model's chat text: a user turn of the crop and the question."""
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)

    def _chunks(self, crops: Sequence[np.ndarray], questions: Sequence[str], padding_side: str):
        """(slice, model inputs) per batch of at most batch_size prompts."""
        from PIL import Image

        if len(crops) != len(questions):
            raise ValueError(f"got {len(crops)} crops but {len(questions)} questions")
        for start in range(0, len(crops), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            images: list[list[Image.Image]] = [[Image.fromarray(np.asarray(c))] for c in crops[chunk]]
            inputs = self.processor(
                images=images,
                text=[self.prompt(q) for q in questions[chunk]],
                padding=True,
                padding_side=padding_side,
                return_tensors="pt",
            ).to(device=self.device, dtype=self.model.dtype)
            yield chunk, inputs

    def yes_margins(self, crops: Sequence[np.ndarray], questions: Sequence[str]) -> np.ndarray:
        """(n,) float32 logit("Yes") - logit("No") for each (h, w, 3) uint8 crop and its question."""
        import torch

        yes_id, no_id = self.answer_ids
        margins = np.zeros(len(crops), dtype=np.float32)
        for chunk, inputs in self._chunks(crops, questions, "right"):
            last = inputs["attention_mask"].sum(dim=1) - 1  # (b,) each row's last real token
            keep, column = torch.unique(last, sorted=True, return_inverse=True)
            with torch.inference_mode():
                logits = self.model(**inputs, logits_to_keep=keep).logits  # (b, len(keep), V)
            rows = torch.arange(len(last), device=logits.device)
            answer = logits[rows, column.to(logits.device)].float()  # (b, V)
            margins[chunk] = (answer[:, yes_id] - answer[:, no_id]).cpu().numpy()
        return margins

    def written_answers(self, crops: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        """The model's greedy answer to each crop and question, special tokens dropped."""
        import torch

        texts: list[str] = []
        tokenizer = self.processor.tokenizer
        for _, inputs in self._chunks(crops, questions, "left"):
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, inputs["input_ids"].shape[1] :]
            texts += tokenizer.batch_decode(new, skip_special_tokens=True)
        return texts

    def answers(self, crops: Sequence[np.ndarray], questions: Sequence[str]) -> np.ndarray:
        """(n,) bool by the judge's rule: the written answer says "Yes"/"yes" ("generate"), or
        logit("Yes") beats logit("No") ("logits"; a tie reads as "No")."""
        if self.rule == "logits":
            return self.yes_margins(crops, questions) > 0
        return np.array([says_yes(text) for text in self.written_answers(crops, questions)], dtype=bool)

    def judge(
        self,
        images: np.ndarray,
        boxes: Sequence[np.ndarray],
        captions: Sequence[Sequence[str]],
        subjects: Sequence[Sequence[str]] | None = None,
    ) -> list[list[RegionJudgement]]:
        """images (B, H, W, 3) uint8; boxes[b] (n, 4) normalised xyxy, captions[b] (n) the detailed
        descriptions and subjects[b] (n) the short captions that name each box's subject (None:
        the captions themselves) -> one verdict per box. All boxes of the batch are questioned
        together."""
        images = np.asarray(images)
        subjects = captions if subjects is None else subjects
        _check_batch(images, boxes, captions, subjects)
        crops = [crop for image, bx in zip(images, boxes, strict=True) for crop in box_crops(image, bx)]
        flat = judge_regions(
            crops,
            [s for image_subjects in subjects for s in image_subjects],
            [c for image_captions in captions for c in image_captions],
            self.answers,
        )
        bounds = np.cumsum([0, *map(len, captions)])
        return [flat[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
