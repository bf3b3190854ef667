"""Detector, segmenter and judge protocols, and their analytic shapes-world versions.

The paper scores layouts with GroundingDINO (the RL reward, section 3.3, and COCO-MIG's
position check), SAM (COCO-MIG's colour check) and a VLM judge (LayoutSAM-eval's spatial,
colour, texture and shape questions). The protocols below are those models' interfaces;
the analytic classes implement them for the shapes world (idruid.data.shapes) with plain
image analysis and no knowledge of the target layout, so rewards and benchmarks run on a
CPU with no weights:

- each pixel takes the colour of the nearest swatch of the world's palette (a colour, its
  texture shade, or the background grey), and a pixel that no neighbour shares takes its
  neighbours' colour: like a learned detector, this reads a noisy or slightly off-colour
  render as its colours, where COCO-MIG's narrow HSV ranges (kept for its colour check,
  idruid.metrics) drop pixels and split shapes;
- candidates are connected components of each colour's pixels (after a 3x3 closing, so
  striped and dotted shapes form one piece; touching shapes of different colours stay apart);
- a query such as "a striped red circle" keeps the components of its colour and scores
  each by colour purity x shape likelihood x texture likelihood x a small-size penalty; the
  shape likelihood compares the component's silhouette with each shape drawn in its bounding
  box (IoU, skipping pixels that another object may cover).

Per-pixel work is numpy/scipy; Python loops run over images, queries and components only.

GroundingDinoDetector wraps a local transformers GroundingDINO checkpoint in the same Detector
protocol for real images (one box score per caption: the max over the caption's tokens), and
load_detector picks a detector by registry name or checkpoint directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import ndimage

from idruid.colors import COLOR_NAMES
from idruid.data.shapes import BACKGROUND, COLORS, SHADES
from idruid.metrics import box_iou, box_pixel_masks
from idruid.model_dirs import missing_files

if TYPE_CHECKING:
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

SHAPE_NAMES = ("circle", "square", "triangle")
TEXTURE_NAMES = ("solid", "striped", "dotted")

# ----------------------------------------------------------------------------- captions

_SHAPE_SYNONYMS = {
    "circle": "circle",
    "circles": "circle",
    "disc": "circle",
    "disk": "circle",
    "round": "circle",
    "ring": "circle",
    "square": "square",
    "squares": "square",
    "tile": "square",
    "block": "square",
    "box": "square",
    "triangle": "triangle",
    "triangles": "triangle",
    "triangular": "triangle",
    "pyramid": "triangle",
}
_TEXTURE_SYNONYMS = {
    "solid": "solid",
    "plain": "solid",
    "flat": "solid",
    "uniformly": "solid",
    "uniform": "solid",
    "striped": "striped",
    "stripes": "striped",
    "stripe": "striped",
    "stripy": "striped",
    "banded": "striped",
    "bands": "striped",
    "lined": "striped",
    "dotted": "dotted",
    "dots": "dotted",
    "dot": "dotted",
    "polka": "dotted",
    "speckled": "dotted",
    "spotted": "dotted",
}


@dataclass(frozen=True)
class CaptionAttributes:
    color: str | None
    shape: str | None
    texture: str | None


def _first(words: Sequence[str], table: dict[str, str]) -> str | None:
    return next((table[w] for w in words if w in table), None)


def parse_caption(caption: str) -> CaptionAttributes:
    """Colour, shape and texture named in a caption; None for what it does not name."""
    words = re.findall(r"[a-z]+", caption.lower())
    color = next((w for w in words if w in COLOR_NAMES), None)
    return CaptionAttributes(color, _first(words, _SHAPE_SYNONYMS), _first(words, _TEXTURE_SYNONYMS))


# ----------------------------------------------------------------------------- protocols


@dataclass
class Detections:
    boxes: np.ndarray  # (k, 4) float32 normalised xyxy, best first
    scores: np.ndarray  # (k,) float32 in [0, 1], descending

    @property
    def best(self) -> tuple[np.ndarray, float]:
        """The top box and its score; zeros and 0.0 when nothing was detected."""
        if len(self.scores) == 0:
            return np.zeros(4, dtype=np.float32), 0.0
        return self.boxes[0], float(self.scores[0])


class Detector(Protocol):
    def detect(self, images: np.ndarray, captions: Sequence[Sequence[str]]) -> list[list[Detections]]:
        """images (B, H, W, 3) uint8; captions[b] the queries for image b -> detections[b][query]."""
        ...


class Segmenter(Protocol):
    def segment(self, images: np.ndarray, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """images (B, H, W, 3) uint8; boxes[b] (n, 4) normalised -> masks[b] (n, H, W) bool."""
        ...


@dataclass(frozen=True)
class RegionJudgement:
    spatial: bool
    color: bool
    texture: bool
    shape: bool


class Judge(Protocol):
    def judge(
        self, images: np.ndarray, boxes: Sequence[np.ndarray], captions: Sequence[Sequence[str]]
    ) -> list[list[RegionJudgement]]:
        """images (B, H, W, 3) uint8; boxes[b] (n, 4) and captions[b] (n) -> one verdict per box."""
        ...


# ----------------------------------------------------------------------------- image analysis

# The palette the detector knows, as a learned detector knows what "red" looks like: each
# colour's base and texture shade, then the background. Labels: colour index, or BACKGROUND_LABEL.
_SWATCHES = np.array(
    [COLORS[c] for c in COLOR_NAMES] + [SHADES[c] for c in COLOR_NAMES] + [BACKGROUND], dtype=np.float64
)
BACKGROUND_LABEL = len(COLOR_NAMES)
_SWATCH_LABELS = np.array([*range(len(COLOR_NAMES)), *range(len(COLOR_NAMES)), BACKGROUND_LABEL])
PURE_DISTANCE = 60.0  # RGB distance to the nearest swatch within which a pixel counts as pure
MIN_AREA = 6  # components smaller than this (pixels) are specks and get a proportional penalty
SHAPE_TEMPERATURE = 0.05  # softmax temperature over the silhouette IoUs
TEXTURE_SIGMA = 12.0  # spread of the texture likelihood, in luminance units (0..255)
MIN_TEXTURE_CONTRAST = 25.0  # luminance contrast below which a pattern reads as solid
_LUMA = np.array([0.299, 0.587, 0.114])
_CLOSING = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Component:
    """One candidate object: a connected piece of one colour."""

    color: str
    mask: np.ndarray  # (H, W) bool
    box: np.ndarray  # (4,) float32 normalised xyxy, on pixel edges
    area: int
    purity: float  # share of the pixels close to one of the colour's swatches
    shape_probs: np.ndarray  # (3,) over SHAPE_NAMES
    texture_probs: np.ndarray  # (3,) over TEXTURE_NAMES

    @property
    def shape(self) -> str:
        return SHAPE_NAMES[int(np.argmax(self.shape_probs))]

    @property
    def texture(self) -> str:
        return TEXTURE_NAMES[int(np.argmax(self.texture_probs))]


def color_labels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) colour label per pixel (a COLOR_NAMES index or BACKGROUND_LABEL), and (H, W) bool
    purity: whether the pixel lies within PURE_DISTANCE of its swatch.

    A pixel whose label none of its 8 neighbours shares (a speck of noise, outside the image
    counting as background) takes the label most of its neighbours hold. Shapes keep their
    corners and apexes (those pixels have same-label neighbours) and their 1-pixel textures
    (base and shade share a label).
    """
    pixels = np.asarray(image, dtype=np.float64)
    distances = np.linalg.norm(pixels[..., None, :] - _SWATCHES, axis=-1)  # (H, W, 15)
    nearest = distances.argmin(axis=-1)
    pure = np.take_along_axis(distances, nearest[..., None], axis=-1)[..., 0] <= PURE_DISTANCE
    labels = _SWATCH_LABELS[nearest]
    one_hot = np.eye(BACKGROUND_LABEL + 1)[labels]  # (H, W, 8)
    padded = np.pad(one_hot, ((1, 1), (1, 1), (0, 0)))
    padded[0, :, BACKGROUND_LABEL] = padded[-1, :, BACKGROUND_LABEL] = 1.0
    padded[:, 0, BACKGROUND_LABEL] = padded[:, -1, BACKGROUND_LABEL] = 1.0
    height, width = labels.shape
    neighbours = sum(
        padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    )  # (H, W, 8): how many of the 8 neighbours hold each label
    isolated = np.take_along_axis(neighbours, labels[..., None], axis=-1)[..., 0] == 0
    return np.where(isolated, neighbours.argmax(axis=-1), labels), pure


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels that read as some colour rather than the background."""
    return color_labels(image)[0] != BACKGROUND_LABEL


def _close(mask: np.ndarray) -> np.ndarray:
    """3x3 binary closing that treats outside the image as background (no border erosion)."""
    padded = np.pad(mask, 1)
    return ndimage.binary_closing(padded, structure=_CLOSING)[1:-1, 1:-1]


def _softmax_neg_sq(distances: np.ndarray, sigma: float) -> np.ndarray:
    logits = -0.5 * (distances / sigma) ** 2
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def silhouettes(height: int, width: int) -> np.ndarray:
    """(3, height, width) bool: each of SHAPE_NAMES filling a height x width box, drawn as the
    shapes world draws it (pixel centres inside the ellipse; a triangle's apex at the top)."""
    v = ((np.arange(height) + 0.5) / height)[:, None]
    u = ((np.arange(width) + 0.5) / width)[None, :]
    shapes = {
        "circle": (2 * u - 1) ** 2 + (2 * v - 1) ** 2 <= 1.0,
        "square": np.ones((height, width), dtype=bool),
        "triangle": np.abs(u - 0.5) <= v / 2,
    }
    return np.stack([np.broadcast_to(shapes[name], (height, width)) for name in SHAPE_NAMES])


def shape_probabilities(mask: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
    """(3,) likelihood over SHAPE_NAMES: a softmax of the IoU between the component's silhouette
    and each shape drawn in its bounding box, as a person would compare outlines.

    ``hidden`` (H, W) marks pixels of other objects, which may cover this one: the comparison
    skips them, so a shape with a corner under a smaller shape still reads as itself.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    crop = mask[window]
    known = np.ones_like(crop) if hidden is None else crop | ~hidden[window]
    templates = silhouettes(*crop.shape)
    inter = (templates & crop & known).sum(axis=(1, 2))
    union = ((templates | crop) & known).sum(axis=(1, 2))
    logits = inter / np.maximum(union, 1) / SHAPE_TEMPERATURE
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def texture_effects(luma: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """|row|, |column| and |interaction| effects of the 2x2 pixel-parity means of luminance.

    Horizontal stripes give (contrast, 0, 0), a dot every other pixel gives all three at half
    the contrast, a solid fill gives about zero.
    """
    rows, cols = np.nonzero(mask)
    values = luma[rows, cols]
    cell = (rows % 2) * 2 + (cols % 2)
    counts = np.bincount(cell, minlength=4)
    if (counts == 0).any():
        return np.zeros(3)
    m00, m01, m10, m11 = np.bincount(cell, weights=values, minlength=4) / counts
    return np.abs(
        np.array([(m00 + m01 - m10 - m11) / 2, (m00 + m10 - m01 - m11) / 2, (m00 + m11 - m01 - m10) / 2])
    )


def texture_probabilities(luma: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(3,) likelihood over TEXTURE_NAMES (solid, striped, dotted) from the parity effects."""
    row, col, inter = texture_effects(luma, mask)
    half = (row + col + inter) / 3  # half the contrast, if dotted
    distances = np.array(
        [
            np.sqrt(row**2 + col**2 + inter**2),
            np.hypot(col, inter) + max(0.0, MIN_TEXTURE_CONTRAST - row),
            np.sqrt((row - half) ** 2 + (col - half) ** 2 + (inter - half) ** 2)
            + max(0.0, MIN_TEXTURE_CONTRAST - 2 * half),
        ]
    )
    return _softmax_neg_sq(distances, TEXTURE_SIGMA)


def _pixel_box(mask: np.ndarray) -> np.ndarray:
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array(
        [cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height], dtype=np.float32
    )


def analyse_image(image: np.ndarray) -> list[Component]:
    """All candidate objects of one (H, W, 3) uint8 image, colour by colour."""
    image = np.asarray(image)
    labels, pure = color_labels(image)
    luma = image.astype(np.float64) @ _LUMA
    components = []
    for c, color in enumerate(COLOR_NAMES):
        of_color = labels == c
        if not of_color.any():
            continue
        others = (labels != BACKGROUND_LABEL) & ~of_color  # what may cover this colour's shapes
        pieces, count = ndimage.label(_close(of_color))
        for k in range(1, count + 1):
            mask = (pieces == k) & of_color  # the piece's own pixels, not the closing's
            area = int(mask.sum())
            if area == 0:
                continue
            components.append(
                Component(
                    color=color,
                    mask=mask,
                    box=_pixel_box(mask),
                    area=area,
                    purity=float(pure[mask].mean()),
                    shape_probs=shape_probabilities(mask, others),
                    texture_probs=texture_probabilities(luma, mask),
                )
            )
    return components


# ----------------------------------------------------------------------------- detector


def match_score(component: Component, query: CaptionAttributes) -> float:
    """How well a component answers a query, in [0, 1]: colour purity (half the pixels pure
    is full marks) x shape likelihood x texture likelihood x small-size penalty. Attributes the
    query does not name do not count."""
    score = min(1.0, component.purity / 0.5) * min(1.0, component.area / MIN_AREA)
    if query.shape is not None:
        score *= float(component.shape_probs[SHAPE_NAMES.index(query.shape)])
    if query.texture is not None:
        score *= float(component.texture_probs[TEXTURE_NAMES.index(query.texture)])
    return score


def detect_in_components(components: Sequence[Component], caption: str) -> Detections:
    """All components of the caption's colour (any colour if it names none), best first."""
    query = parse_caption(caption)
    candidates = [c for c in components if query.color is None or c.color == query.color]
    scores = np.array([match_score(c, query) for c in candidates], dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    boxes = np.array([candidates[i].box for i in order], dtype=np.float32).reshape(-1, 4)
    return Detections(boxes=boxes, scores=scores[order])


class AnalyticDetector:
    """GroundingDINO's stand-in for the shapes world: colour components scored against the caption."""

    def detect(self, images: np.ndarray, captions: Sequence[Sequence[str]]) -> list[list[Detections]]:
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} caption lists")
        results = []
        for image, queries in zip(images, captions, strict=True):
            components = analyse_image(np.asarray(image))
            results.append([detect_in_components(components, q) for q in queries])
        return results


# ----------------------------------------------------------------------------- segmenter


class AnalyticSegmenter:
    """SAM's stand-in: the non-background pixels inside each box."""

    def segment(self, images: np.ndarray, boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        masks = []
        for image, image_boxes in zip(images, boxes, strict=True):
            height, width = image.shape[:2]
            foreground = foreground_mask(np.asarray(image))
            image_boxes = np.asarray(image_boxes, dtype=np.float64).reshape(-1, 4)
            masks.append(
                foreground & box_pixel_masks(image_boxes, height, width)
                if len(image_boxes)
                else np.zeros((0, height, width), dtype=bool)
            )
        return masks


# ----------------------------------------------------------------------------- judge

SPATIAL_IOU = 0.5  # an object's bbox must overlap the region this much to count as present


def judge_region(components: Sequence[Component], box: np.ndarray, caption: str) -> RegionJudgement:
    """LayoutSAM-eval's four questions for one region: is an object there, and does it have the
    caption's colour, texture and shape? Unnamed attributes count as matched; all False if absent."""
    present = [c for c in components if box_iou(c.box, np.asarray(box, dtype=np.float32)) >= SPATIAL_IOU]
    if not present:
        return RegionJudgement(False, False, False, False)
    query = parse_caption(caption)
    of_color = [c for c in present if c.color == query.color]
    color_ok = query.color is None or bool(of_color)
    pool = of_color if of_color else present
    obj = max(pool, key=lambda c: float(box_iou(c.box, np.asarray(box, dtype=np.float32))))
    return RegionJudgement(
        spatial=True,
        color=color_ok,
        texture=query.texture is None or obj.texture == query.texture,
        shape=query.shape is None or obj.shape == query.shape,
    )


class AnalyticJudge:
    """The VLM judge's stand-in (LayoutSAM-eval): spatial, colour, texture and shape per region."""

    def judge(
        self, images: np.ndarray, boxes: Sequence[np.ndarray], captions: Sequence[Sequence[str]]
    ) -> list[list[RegionJudgement]]:
        results = []
        for image, image_boxes, image_captions in zip(images, boxes, captions, strict=True):
            components = analyse_image(np.asarray(image))
            image_boxes = np.asarray(image_boxes, dtype=np.float32).reshape(-1, 4)
            if len(image_boxes) != len(image_captions):
                raise ValueError(f"got {len(image_boxes)} boxes but {len(image_captions)} captions")
            results.append(
                [judge_region(components, b, c) for b, c in zip(image_boxes, image_captions, strict=True)]
            )
        return results


# ----------------------------------------------------------------------------- grounding dino

# What a GroundingDINO directory needs, as (what is missing, files any one of which will do).
_GROUNDING_DINO_FILES = (
    ("config.json", ("config.json",)),
    ("weights", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")),
    ("image processor config", ("processor_config.json", "preprocessor_config.json")),
    ("tokenizer", ("tokenizer.json", "vocab.txt")),
)


def check_grounding_dino_dir(path: str | os.PathLike) -> Path:
    """The directory as a Path; FileNotFoundError naming what is missing, so a wrong path fails
    before transformers tries (and, offline, fails) to read it as a hub id."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"GroundingDINO directory {directory} does not exist")
    missing = missing_files(directory, _GROUNDING_DINO_FILES)
    if missing:
        raise FileNotFoundError(f"GroundingDINO directory {directory} lacks {'; '.join(missing)}")
    return directory


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


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) normalised centre/size boxes, as DETR-style heads predict them, to normalised
    corners clipped to the image."""
    centre, size = boxes[..., :2], boxes[..., 2:]
    return np.clip(np.concatenate([centre - size / 2, centre + size / 2], axis=-1), 0.0, 1.0)


class GroundingDinoDetector:
    """GroundingDINO (transformers) behind the Detector protocol: all of an image's captions go
    into one prompt, and a query box scores for a caption by the max over the caption's tokens
    of sigmoid(logits). A box is kept for a caption when that score reaches box_threshold and
    some token of the caption reaches text_threshold (GroundingDINO's phrase test); with the
    phrase fixed, the two gates reduce to score >= max(box_threshold, text_threshold)."""

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

        directory = check_grounding_dino_dir(path)
        model = GroundingDinoForObjectDetection.from_pretrained(directory)
        processor = AutoProcessor.from_pretrained(directory)
        return cls(model, processor, device, box_threshold, text_threshold)

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
        probs = outputs.logits.sigmoid().float().cpu().numpy()  # (B, Q, max_text_len)
        boxes = cxcywh_to_xyxy(outputs.pred_boxes.float().cpu().numpy()).astype(np.float32)  # (B, Q, 4)
        input_ids = inputs["input_ids"].cpu().numpy()  # (B, T)
        threshold = max(self.box_threshold, self.text_threshold)
        results = []
        for b, queries in enumerate(captions):
            detections = []
            for start, end in phrase_spans(input_ids[b], self.separator_id, len(queries)):
                scores = probs[b, :, start:end].max(axis=-1)  # (Q,)
                keep = np.flatnonzero(scores >= threshold)
                order = keep[np.argsort(-scores[keep], kind="stable")]
                detections.append(Detections(boxes=boxes[b, order], scores=scores[order].astype(np.float32)))
            results.append(detections)
        return results


DETECTORS = {"analytic": AnalyticDetector}
SEGMENTERS = {"analytic": AnalyticSegmenter}
JUDGES = {"analytic": AnalyticJudge}


def load_detector(spec: str, device: str = "cpu") -> Detector:
    """A detector by registry name ("analytic") or GroundingDINO checkpoint directory, so one
    command-line option covers the shapes world and real images."""
    if spec in DETECTORS:
        return DETECTORS[spec]()
    if Path(spec).is_dir():
        return GroundingDinoDetector.from_pretrained(spec, device)
    raise ValueError(
        f"unknown detector {spec!r}: use one of {sorted(DETECTORS)} or a local GroundingDINO directory"
    )
