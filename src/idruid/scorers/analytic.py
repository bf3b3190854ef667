"""The analytic detector, segmenter and judge: the shapes world's stand-ins for GroundingDINO,
SAM and the VLM judge (idruid.scorers.protocols).

They implement the protocols for the shapes world (idruid.data.shapes) with plain image
analysis and no knowledge of the target layout, so rewards and benchmarks run on a CPU with
no weights:

- each pixel takes the colour of the nearest swatch of the world's palette (a colour, its
  texture shade, or the background grey), and a pixel that no neighbour shares takes its
  neighbours' colour: like a learned detector, this reads a noisy or slightly off-colour
  render as its colours, where COCO-MIG's narrow HSV ranges (kept for its colour check,
  idruid.colors) drop pixels and split shapes;
- candidates are connected components of each colour's pixels (after a 3x3 closing, so
  striped and dotted shapes form one piece; touching shapes of different colours stay apart);
- a query such as "a striped red circle" keeps the components of its colour and scores
  each by colour purity x shape likelihood x texture likelihood x a small-size penalty; the
  shape likelihood compares the component's silhouette with each shape drawn in its bounding
  box (IoU, skipping pixels that another object may cover).

Per-pixel work is numpy/scipy; Python loops run over images, queries and components only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from idruid.boxes import box_iou, mask_box, pixel_masks
from idruid.colors import COLOR_NAMES
from idruid.data.shapes import BACKGROUND, COLORS, SHADES

from .captions import SHAPE_NAMES, TEXTURE_NAMES, CaptionAttributes, parse_caption
from .protocols import Detections, RegionJudgement

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
                    box=mask_box(mask),
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
                foreground & pixel_masks(image_boxes, height, width)
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
        self,
        images: np.ndarray,
        boxes: Sequence[np.ndarray],
        captions: Sequence[Sequence[str]],
        subjects: Sequence[Sequence[str]] | None = None,
    ) -> list[list[RegionJudgement]]:
        """One verdict per box from the captions' attributes (the subjects are not needed: the
        shapes world's captions name their object)."""
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
