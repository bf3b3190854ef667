"""Detector, segmenter and judge protocols, and their analytic shapes-world versions.

The paper scores layouts with GroundingDINO (the RL reward, section 3.3, and COCO-MIG's
position check), SAM (COCO-MIG's colour check) and a VLM judge (LayoutSAM-eval's spatial,
colour, texture and shape questions). The protocols below are those models' interfaces;
the analytic classes implement them for the shapes world (idruid.data.shapes) with plain
image analysis and no knowledge of the target layout, so rewards and benchmarks run on a
CPU with no weights:

- candidates are connected components of each COCO-MIG colour's pixels (after a 3x3
  closing, so striped and dotted shapes form one piece; touching shapes of different
  colours stay apart);
- a query such as "a striped red circle" keeps the components of its colour and scores
  each by colour purity x shape likelihood x texture likelihood x a small-size penalty.

Per-pixel work is numpy/scipy; Python loops run over images, queries and components only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage

from idruid.colors import COLOR_NAMES, color_membership
from idruid.metrics import box_iou, box_pixel_masks

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


# ----------------------------------------------------------------------------- image analysis

BACKGROUND_LEVEL = 128  # the shapes world's mid-grey
FOREGROUND_DISTANCE = 40  # max channel distance from the background grey that counts as an object
MIN_AREA = 6  # components smaller than this (pixels) are specks and get a proportional penalty
SHAPE_SIGMA_OVER = 0.05  # shape likelihood: tolerance for fills above a prototype ...
SHAPE_SIGMA_UNDER = 0.25  # ... and below it (a hidden corner lowers fills)
TEXTURE_SIGMA = 12.0  # spread of the texture likelihood, in luminance units (0..255)
MIN_TEXTURE_CONTRAST = 25.0  # luminance contrast below which a pattern reads as solid
_LUMA = np.array([0.299, 0.587, 0.114])
_CLOSING = np.ones((3, 3), dtype=bool)
# The most a clean render of each shape fills its bbox quadrants (see shape_features), 7-14 px boxes.
SHAPE_PROTOTYPES = np.array(
    [
        [0.81, 0.81, 0.81],  # circle
        [1.00, 1.00, 1.00],  # square
        [0.78, 0.21, 0.78],  # triangle
    ]
)


@dataclass(frozen=True)
class Component:
    """One candidate object: a connected piece of one colour."""

    color: str
    mask: np.ndarray  # (H, W) bool
    box: np.ndarray  # (4,) float32 normalised xyxy, on pixel edges
    area: int
    purity: float  # share of the pixels in the colour's HSV range
    shape_probs: np.ndarray  # (3,) over SHAPE_NAMES
    texture_probs: np.ndarray  # (3,) over TEXTURE_NAMES

    @property
    def shape(self) -> str:
        return SHAPE_NAMES[int(np.argmax(self.shape_probs))]

    @property
    def texture(self) -> str:
        return TEXTURE_NAMES[int(np.argmax(self.texture_probs))]


def foreground_mask(image: np.ndarray, membership: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: pixels in any colour range or clearly away from the background grey."""
    if membership is None:
        membership = color_membership(image)
    distance = np.abs(image.astype(np.int16) - BACKGROUND_LEVEL).max(axis=-1)
    return membership.any(axis=-1) | (distance > FOREGROUND_DISTANCE)


def _close(mask: np.ndarray) -> np.ndarray:
    """3x3 binary closing that treats outside the image as background (no border erosion)."""
    padded = np.pad(mask, 1)
    return ndimage.binary_closing(padded, structure=_CLOSING)[1:-1, 1:-1]


def _softmax_neg_sq(distances: np.ndarray, sigma: float) -> np.ndarray:
    logits = -0.5 * (distances / sigma) ** 2
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Fill ratios of the bbox quadrants: (best quadrant, best top quadrant, best bottom quadrant).

    Maxima over mirrored quadrants make the features robust to a smaller shape hiding a corner:
    occlusion can only lower a fill, so one intact quadrant still tells a square apart.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    top, bottom = crop[: max(1, height // 2)], crop[(height + 1) // 2 :] if height > 1 else crop
    left, right = slice(0, max(1, width // 2)), slice((width + 1) // 2 if width > 1 else 0, width)
    best_top = max(top[:, left].mean(), top[:, right].mean())
    best_bottom = max(bottom[:, left].mean(), bottom[:, right].mean())
    return np.array([max(best_top, best_bottom), best_top, best_bottom])


def shape_probabilities(mask: np.ndarray) -> np.ndarray:
    """(3,) likelihood over SHAPE_NAMES. Features above a prototype (more filled than the shape
    can be) cost much more than features below it (which occlusion explains)."""
    excess = shape_features(mask) - SHAPE_PROTOTYPES  # (3 shapes, 3 features)
    over = np.clip(excess, 0, None) / SHAPE_SIGMA_OVER
    under = np.clip(-excess, 0, None) / SHAPE_SIGMA_UNDER
    logits = -0.5 * (over**2 + under**2).sum(axis=1)
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


def color_masks(image: np.ndarray, membership: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 7) bool: each colour's pixels, with uncoloured foreground given to black or white.

    Black's and white's ranges leave no room for a visible texture shade, so foreground pixels
    in no range join black when darker than the background grey and white when lighter.
    """
    if membership is None:
        membership = color_membership(image)
    uncoloured = foreground_mask(image, membership) & ~membership.any(axis=-1)
    dark = image.astype(np.float64) @ _LUMA < BACKGROUND_LEVEL
    masks = membership.copy()
    masks[..., COLOR_NAMES.index("black")] |= uncoloured & dark
    masks[..., COLOR_NAMES.index("white")] |= uncoloured & ~dark
    return masks


def analyse_image(image: np.ndarray) -> list[Component]:
    """All candidate objects of one (H, W, 3) uint8 image, colour by colour."""
    membership = color_membership(image)  # (H, W, 7)
    masks = color_masks(image, membership)
    luma = image.astype(np.float64) @ _LUMA
    components = []
    for c, color in enumerate(COLOR_NAMES):
        if not membership[..., c].any():
            continue
        labels, count = ndimage.label(_close(masks[..., c]))
        for k in range(1, count + 1):
            mask = (labels == k) & masks[..., c]  # the piece's own pixels, not the closing's
            area = int(mask.sum())
            if area == 0:
                continue
            components.append(
                Component(
                    color=color,
                    mask=mask,
                    box=_pixel_box(mask),
                    area=area,
                    purity=float(membership[..., c][mask].mean()),
                    shape_probs=shape_probabilities(mask),
                    texture_probs=texture_probabilities(luma, mask),
                )
            )
    return components


# ----------------------------------------------------------------------------- detector


def match_score(component: Component, query: CaptionAttributes) -> float:
    """How well a component answers a query, in [0, 1]: colour purity (half the pixels in range
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


DETECTORS = {"analytic": AnalyticDetector}
SEGMENTERS = {"analytic": AnalyticSegmenter}
JUDGES = {"analytic": AnalyticJudge}
