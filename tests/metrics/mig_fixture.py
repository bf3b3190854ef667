"""The COCO-MIG parity fixture (made with MIG_Bench's unmodified eval_mig.py) and the fakes that
replay its stored model outputs through idruid's own GroundingDINO wrapper and COCO-MIG scoring.

The fixture lives beside the checkout (``shared/data/coco-mig-parity``, or where
``$IDRUID_COCO_MIG_PARITY_DIR`` says); its README states the official rules. Tests that need it
skip when it is absent. ``FixtureProcessor`` and ``FixtureNetwork`` stand in for transformers'
GroundingDINO: they tokenise like the fixture's tokenizer ([CLS], one token per word, '.', [SEP])
with the ids GroundingDINO hard-codes, and answer each prompt with the stored ``pred_logits`` /
``pred_boxes`` of the image being scored, so everything after the network (sigmoid, token choice,
threshold, boxes) is idruid's code. ``FixtureSam`` answers with the stored masks, the best of three by
``np.argmax`` of the stored scores as eval_mig.py picks it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from idruid.layout import Instance, Layout

BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco-mig-parity"
FIXTURE = Path(os.environ.get("IDRUID_COCO_MIG_PARITY_DIR", BESIDE_CHECKOUT))
PRESENT = (FIXTURE / "fixture.jsonl").is_file()

SPECIAL_IDS = {"[PAD]": 0, "[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}  # GroundingDINO's
MAX_TEXT_LEN = 256
EMPTY_SLOT_BOX = (0.5, 0.5, 0.1, 0.1)  # padding slots: logits -inf, never kept


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def fixture_layout(record: dict) -> Layout:
    """The record's COCO-MIG layout, boxes as the YAML's float64 values."""
    instances = tuple(Instance(inst["phrase"], tuple(inst["box"])) for inst in record["instances"])
    return Layout(record["prompt"], instances, meta={"index": record["index"], "level": record["level"]})


def rle_mask(runs: list[int], height: int, width: int) -> np.ndarray:
    """The fixture's row-major run lengths (false first) -> (height, width) bool."""
    return np.repeat(np.arange(len(runs)) % 2, runs).reshape(height, width).astype(bool)


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- GroundingDINO


class _Tokenizer:
    """The fixture's tokeniser with GroundingDINO's special ids; words get ids from 2000 on."""

    cls_token, sep_token = "[CLS]", "[SEP]"

    def __init__(self) -> None:
        self.ids = dict(SPECIAL_IDS)
        self.words: dict[int, str] = {}

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(t) for t in tokens]

    def _id(self, token: str) -> int:
        if token not in self.ids:
            self.ids[token] = 2000 + len(self.words)
            self.words[self.ids[token]] = token
        return self.ids[token]

    def tokens(self, prompt: str) -> list[str]:
        """ "hot dog." -> [CLS] hot dog . [SEP]: each word, '.' split off as its own token."""
        out = ["[CLS]"]
        for word in prompt.split():
            stem = word.rstrip(".")
            out += ([stem] if stem else []) + ["."] * (len(word) - len(stem))
        return out + ["[SEP]"]

    def decode(self, ids: list[int]) -> list[str]:
        names = {v: k for k, v in self.ids.items()}
        return [names[i] for i in ids]


class _Batch(dict):
    def to(self, *args, **kwargs):
        return self


class FixtureProcessor:
    """GroundingDinoProcessor's part: token ids padded to the batch's longest prompt, and the
    images passed through unchanged (the network recognises nothing by them; they are recorded)."""

    def __init__(self, tokenizer: _Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, images, text, **kwargs) -> _Batch:
        rows = [self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokens(t)) for t in text]
        input_ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = torch.tensor(row)
            mask[b, : len(row)] = 1
        pixels = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
        return _Batch(input_ids=input_ids, attention_mask=mask, pixel_values=pixels)


@dataclass
class FixtureNetwork:
    """GroundingDinoForObjectDetection's part: the stored pred_logits / pred_boxes of ``record``
    (the fixture image being scored) for each prompt's caption; text positions past the prompt
    and padding slots are -inf, as in the real model."""

    tokenizer: _Tokenizer
    record: dict | None = None
    config: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(max_text_len=MAX_TEXT_LEN))
    seen: list[np.ndarray] = field(default_factory=list)  # the images the network was shown

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self

    def __call__(self, input_ids, attention_mask, pixel_values, **kwargs):
        queries = {q["caption"]: q for q in self.record["queries"]}
        answers = []
        for b in range(len(input_ids)):
            self.seen.append(pixel_values[b].numpy())
            tokens = self.tokenizer.decode(input_ids[b, : int(attention_mask[b].sum())].tolist())
            query = queries[" ".join(tokens[1:-2]) + "."]  # [CLS] words . [SEP] -> "words."
            assert tokens == query["tokens"], (tokens, query["tokens"])
            answers.append(query)
        slots = max(len(q["pred_boxes"]) for q in answers)
        logits = torch.full((len(answers), slots, MAX_TEXT_LEN), float("-inf"), dtype=torch.float32)
        boxes = torch.tensor(EMPTY_SLOT_BOX, dtype=torch.float32).repeat(len(answers), slots, 1)
        for b, query in enumerate(answers):
            stored = torch.from_numpy(np.asarray(query["pred_logits"], dtype=np.float32))  # (Q, T)
            logits[b, : stored.shape[0], : stored.shape[1]] = stored
            boxes[b, : stored.shape[0]] = torch.from_numpy(np.asarray(query["pred_boxes"], dtype=np.float32))
        return SimpleNamespace(logits=logits, pred_boxes=boxes)


def fixture_detector() -> tuple:
    """idruid's GroundingDinoDetector over the fake network at the official thresholds, and the
    network (set its ``record`` to the image being scored)."""
    from idruid.scorers.grounding_dino import GroundingDinoDetector

    tokenizer = _Tokenizer()
    network = FixtureNetwork(tokenizer)
    return GroundingDinoDetector(network, FixtureProcessor(tokenizer), "cpu", 0.25, 0.25), network


# ----------------------------------------------------------------------------- SAM


@dataclass
class FixtureSam:
    """The Segmenter protocol over the stored masks of ``record``'s instances."""

    record: dict | None = None
    seen: list[np.ndarray] = field(default_factory=list)

    def segment(self, images: np.ndarray, boxes) -> list[np.ndarray]:
        assert len(images) == 1, "the fixture is scored one image at a time"
        instances = self.record["instances"]
        assert len(boxes[0]) == len(instances)
        np.testing.assert_allclose(np.asarray(boxes[0], np.float64), [i["box"] for i in instances], atol=1e-7)
        self.seen.append(np.asarray(images[0]))
        masks = []
        for inst in instances:
            sam = inst["sam"]
            best = int(np.argmax(np.asarray(sam["scores"], dtype=np.float32)))  # the first on a tie
            masks.append(rle_mask(sam["masks_rle"][best], sam["mask_height"], sam["mask_width"]))
        return [np.stack(masks)]
