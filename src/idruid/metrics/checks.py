"""Per-instance checks of the paper's section 4.1 metrics: pure functions from generated images
and their layouts to one verdict per instance (levels.py aggregates them, tables.py prints them).

- Greedy NMS (torchvision's rule); box pixels are idruid.boxes.
- COCO-MIG (Table 1): the position and colour checks of MIG_Bench's ``eval_mig.py`` instance by
  instance: cv2's resize, GroundingDINO's unclipped boxes kept above 0.25, the max IoU over
  the boxes NMS keeps in eval_mig.py's float32 arithmetic, OpenCV's 8-bit HSV (idruid.colors) on
  the best SAM mask of the target box, and its caption parsing.
- Attribute leakage: whether an instance box is painted mostly in a colour that another
  instance of the same layout asked for (section 1, 4.3).
- LayoutSAM-eval (Table 2): the judge's spatial / colour / texture / shape verdicts.

Boxes are normalised ``[x0, y0, x1, y1]``; images uint8 (B, H, W, 3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from idruid.boxes import pairwise_iou, pixel_masks, to_pixels
from idruid.colors import (
    COLOR_NAMES,
    COLOR_PASS_FRACTION,
    bare_word,
    caption_color,
    color_membership,
    fraction_passes,
    in_range_fraction,
)
from idruid.layout import Layout

if TYPE_CHECKING:
    from idruid.scorers.protocols import Detector, Judge, RegionJudgement, Segmenter

_ARTICLES = {"a", "an", "the"}


# ----------------------------------------------------------------------------- boxes


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression, as torchvision.ops.nms.

    Visits boxes by decreasing score (ties keep input order) and drops every later box whose
    IoU with a kept box is strictly greater than ``iou_threshold``. Returns the kept indices
    (int64), best score first.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms: {len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    overlaps = pairwise_iou(boxes[order], boxes[order]) > iou_threshold  # (k, k)
    suppressed = np.zeros(len(order), dtype=bool)
    kept = []
    for rank in range(len(order)):
        if suppressed[rank]:
            continue
        kept.append(order[rank])
        suppressed |= overlaps[rank]
    return np.asarray(kept, dtype=np.int64)


# ----------------------------------------------------------------------------- captions


def _words(caption: str) -> list[str]:
    return caption.strip().split()


def object_name(caption: str) -> str:
    """What COCO-MIG asks the detector for: the words after the colour word.

    "a blue fork" -> "fork". Without a colour word (or with nothing after it): the caption
    minus a leading article and the colour word ("a fork" -> "fork").
    """
    words = _words(caption)
    bare = [bare_word(w) for w in words]
    for k, word in enumerate(bare):
        if word in COLOR_NAMES and k + 1 < len(words):
            return " ".join(words[k + 1 :])
    kept = [w for w, b in zip(words, bare, strict=True) if b not in COLOR_NAMES]
    if kept and bare_word(kept[0]) in _ARTICLES:
        kept = kept[1:]
    return " ".join(kept)


# ----------------------------------------------------------------------------- COCO-MIG


@dataclass(frozen=True)
class InstanceScore:
    """One instance's COCO-MIG checks."""

    iou: float  # max IoU between the target box and the kept detections (0 when none)
    position_ok: bool  # iou >= 0.5
    color_ok: bool  # >= 20% of the segmented target box in the caption colour's range
    detected: bool  # at least one detection survived the score threshold

    @property
    def success(self) -> bool:
        """COCO-MIG instance success: position and colour both pass."""
        return self.position_ok and self.color_ok

    @property
    def miou_value(self) -> float:
        """The instance's mIoU term: IoU if both pass, the (< 0.5) IoU if position fails, else 0."""
        if not self.detected:
            return 0.0
        if not self.position_ok:
            return self.iou
        return self.iou if self.color_ok else 0.0


def _as_batch(images) -> np.ndarray:
    batch = np.stack([np.asarray(im) for im in images]) if not isinstance(images, np.ndarray) else images
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got {batch.dtype} {batch.shape}")
    return batch


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) uint8 -> (height, width, C) uint8: ``cv2.resize`` with INTER_LINEAR, the resize
    of COCO-MIG's scorer (two-tap bilinear, pixel centres aligned, no antialiasing, fixed-point
    weights: an exactly rounded bilinear resize differs by 1 in 8-22% of the values). An image
    already of that size is returned unchanged, as cv2 does."""
    image = np.asarray(image)
    if image.shape[:2] == (height, width):
        return image.copy()
    resized = cv2.resize(image, dsize=(width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, *image.shape[2:])  # cv2 drops a single channel's axis


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """COCO-MIG's resize of a uint8 batch (B, H, W, 3) to (B, size, size, 3). eval_mig.py resizes
    only images whose height is not 512 and then fails on a 512-high image of another width
    (its mask tensors are 512x512); here every image that is not size x size is resized."""
    return np.stack([resize_linear(im, size, size) for im in images])


def _layout_boxes(layout: Layout) -> np.ndarray:
    return np.asarray(layout.boxes, dtype=np.float64).reshape(-1, 4)


def _check_lengths(images: np.ndarray, layouts: Sequence[Layout]) -> None:
    if len(images) != len(layouts):
        raise ValueError(f"{len(images)} images but {len(layouts)} layouts")


def score_coco_mig(
    images,
    layouts: Sequence[Layout],
    detector: Detector,
    segmenter: Segmenter,
    box_threshold: float = 0.25,
    nms_threshold: float = 0.8,
    iou_threshold: float = 0.5,
    color_threshold: float = COLOR_PASS_FRACTION,
    resize_to: int | None = None,
    separate_queries: bool = False,
) -> list[list[InstanceScore]]:
    """COCO-MIG's per-instance checks for a batch: one InstanceScore per layout instance, as
    MIG_Bench's eval_mig.py makes them.

    images: uint8 (B, H, W, 3) (or a sequence of (H, W, 3)). The detector is asked for each
    instance's ``object_name``; detections scoring above ``box_threshold`` (strictly, as
    GroundingDINO keeps them) go through NMS, and the instance's IoU is the best IoU of its
    target box with any of them (``mig_ious``: float32, in pixels, boxes not clipped); position
    passes at >= ``iou_threshold``. The segmenter segments the target box, and colour passes when
    the mask is not empty and >= ``color_threshold`` of its pixels are in the caption colour's
    OpenCV HSV range (the fraction in float32); captions naming no colour pass. ``resize_to``
    resizes first (the official scorer uses 512, with cv2's bilinear resize: see _resize; None
    keeps the size). ``separate_queries`` asks the detector about one object name at a time, as
    the official scorer does: GroundingDINO's answer for a phrase depends on the other phrases of
    its prompt, so asking for all of an image's names at once would change its boxes (the
    analytic detector answers each caption on its own either way).
    """
    batch = _as_batch(images)
    _check_lengths(batch, layouts)
    if resize_to is not None:
        batch = _resize(batch, resize_to)
    height, width = batch.shape[1:3]
    names = [[object_name(c) for c in layout.captions] for layout in layouts]
    targets = [_layout_boxes(layout) for layout in layouts]
    ask = _detect_separately if separate_queries else _detect_together
    detections = ask(detector, batch, names)
    masks = segmenter.segment(batch, targets)
    scores = []
    for image, layout, found, mask in zip(batch, layouts, detections, masks, strict=True):
        target_px = to_pixels(layout.boxes, height, width)  # float64, as eval_mig.py's box * 512
        if len(found) != len(target_px) or len(mask) != len(target_px):
            raise ValueError(
                f"detector/segmenter answered for {len(found)}/{len(mask)} of {len(target_px)} instances"
            )
        membership = color_membership(image)  # (H, W, 7), once per image
        row = []
        for caption, box, dets, inst_mask in zip(layout.captions, target_px, found, mask, strict=True):
            kept = _kept_pixel_boxes(dets.boxes, dets.scores, height, width, box_threshold, nms_threshold)
            best = float(mig_ious(box, kept).max()) if len(kept) else None
            color = caption_color(caption)
            color_ok = color is None or _color_passes(membership, inst_mask, color, color_threshold)
            row.append(
                InstanceScore(
                    iou=0.0 if best is None else best,
                    position_ok=best is not None and best >= iou_threshold,
                    color_ok=bool(color_ok),
                    detected=best is not None,
                )
            )
        scores.append(row)
    return scores


def _detect_together(detector: Detector, images: np.ndarray, names: list[list[str]]) -> list[list]:
    return detector.detect(images, names)


def _detect_separately(detector: Detector, images: np.ndarray, names: list[list[str]]) -> list[list]:
    """detections[b][i] for names[b][i], each distinct name of an image asked in a prompt of its
    own; all (image, name) pairs go to the detector in one call, so it can batch them."""
    pairs = [(b, name) for b, image_names in enumerate(names) for name in dict.fromkeys(image_names)]
    if not pairs:
        return [[] for _ in names]
    answers = detector.detect(images[[b for b, _ in pairs]], [[name] for _, name in pairs])
    found = {pair: answer[0] for pair, answer in zip(pairs, answers, strict=True)}
    return [[found[(b, name)] for name in image_names] for b, image_names in enumerate(names)]


def _kept_pixel_boxes(
    boxes: np.ndarray, scores: np.ndarray, height: int, width: int, box_threshold: float, nms_threshold: float
) -> np.ndarray:
    """(k, 4) float32 pixel boxes of the detections scoring above the threshold that survive NMS.
    Normalised float32 boxes times the image size in float32: at 512 (a power of two) these are
    bit for bit GroundingDINO's own pixel boxes, (cx, cy, w, h) * 512 then converted."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([width, height] * 2, np.float32)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    confident = scores > np.float32(box_threshold)
    boxes, scores = boxes[confident], scores[confident]
    return boxes[nms(boxes, scores, nms_threshold)] if len(boxes) else boxes


def mig_ious(target: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one float64 pixel target box (4,) with float32 pixel boxes (k, 4) -> (k,) float32,
    in eval_mig.py's arithmetic under numpy 1.26 (its reference environment): the target's corners
    are cast to float32 before min/max, its area is computed in float64 and then cast, the union
    is (area_pred + area_target) - inter, all in float32, with no +1. The boxes are not clipped to
    the image. A zero union gives 0 (eval_mig.py would divide by zero)."""
    target = np.asarray(target, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    corners, zero = target.astype(np.float32), np.float32(0)
    width = np.maximum(np.minimum(boxes[:, 2], corners[2]) - np.maximum(boxes[:, 0], corners[0]), zero)
    height = np.maximum(np.minimum(boxes[:, 3], corners[3]) - np.maximum(boxes[:, 1], corners[1]), zero)
    inter = width * height
    area_pred = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_target = np.float32((target[2] - target[0]) * (target[3] - target[1]))
    union = (area_pred + area_target) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union != 0)


def mask_color_fraction(membership: np.ndarray, mask: np.ndarray, color: str) -> np.float32:
    """The share of a mask's pixels in ``color``'s range, from a precomputed membership (H, W, 7):
    what COCO-MIG's colour check compares with 20% (float32, 0 for an empty mask)."""
    mask = np.asarray(mask, dtype=bool)
    in_range = int(membership[..., COLOR_NAMES.index(color)][mask].sum())
    return in_range_fraction(in_range, int(mask.sum()))


def _color_passes(membership: np.ndarray, mask: np.ndarray, color: str, threshold: float) -> bool:
    """eval_mig.py's colour test from a precomputed membership (H, W, 7): fails on an empty mask,
    else passes when the float32 in-range fraction reaches the threshold."""
    if not np.asarray(mask).any():
        return False
    return fraction_passes(mask_color_fraction(membership, mask, color), threshold)


# ----------------------------------------------------------------------------- leakage


def _leak_flags(
    membership: np.ndarray, boxes: np.ndarray, own: np.ndarray, others: np.ndarray, dominance: float
) -> np.ndarray:
    """Bool (n,): whether each instance's box is dominated by another instance's colour.

    membership (H, W, 7) bool; boxes (n, 4); own (n,) colour index (-1 for none); others (n, 7)
    bool, the colours named by the other instances of the layout. A colour named by other
    instances counts only at pixels outside their boxes: where two boxes overlap (an object on a
    table), the colour of the one drawn there is not leakage into the other.
    """
    height, width = membership.shape[:2]
    pixels = pixel_masks(boxes, height, width)  # (n, H, W)
    named = np.zeros((len(own), membership.shape[-1]), dtype=bool)  # (n, 7): instance i names colour c
    named[own >= 0, own[own >= 0]] = True
    colour_boxes = np.einsum("nc,nhw->chw", named.astype(np.int64), pixels.astype(np.int64)) > 0  # (7, H, W)
    foreign = membership & ~colour_boxes.transpose(1, 2, 0)  # (H, W, 7): outside the colour's own boxes
    counts = np.einsum("nhw,hwc->nc", pixels.astype(np.int64), foreign.astype(np.int64))  # (n, 7)
    own_counts = np.einsum("nhw,hwc->nc", pixels.astype(np.int64), membership.astype(np.int64))
    counts = np.where(named, own_counts, counts)  # an instance's own colour counts everywhere
    coloured = (pixels & membership.any(axis=-1)).sum(axis=(1, 2))  # (n,)
    top = counts.max(axis=1)  # (n,)
    rows = np.arange(len(own))
    own_count = np.where(own >= 0, counts[rows, np.maximum(own, 0)], -1)
    is_top = counts == top[:, None]  # (n, 7)
    foreign_top = (is_top & others).any(axis=1)
    dominant = top >= dominance * np.maximum(coloured, 1)
    return (coloured > 0) & (own_count < top) & foreign_top & dominant


def leak_flags(images, layouts: Sequence[Layout], dominance: float = 0.5) -> list[np.ndarray]:
    """Per image, bool (n,): whether each instance leaks (its caption names a colour and its box
    is dominated by another instance's); the rule is idruid.metrics.levels.leakage's."""
    batch = _as_batch(images)
    _check_lengths(batch, layouts)
    flags = []
    for image, layout in zip(batch, layouts, strict=True):
        named = [caption_color(c) for c in layout.captions]
        own = np.asarray([COLOR_NAMES.index(c) if c else -1 for c in named], dtype=np.int64)
        has_color = own >= 0
        if not has_color.any():
            flags.append(np.zeros(len(own), dtype=bool))
            continue
        one_hot = np.zeros((len(own), len(COLOR_NAMES)), dtype=bool)
        one_hot[has_color, own[has_color]] = True
        others = one_hot.sum(axis=0)[None, :] - one_hot > 0  # (n, 7): named by another instance
        leaked = _leak_flags(color_membership(image), _layout_boxes(layout), own, others, dominance)
        flags.append(leaked & has_color)
    return flags


def leak_counts(images, layouts: Sequence[Layout], dominance: float = 0.5) -> list[tuple[int, int]]:
    """Per image: (instances that leak, instances whose caption names a colour)."""
    flags = leak_flags(images, layouts, dominance)
    return [
        (int(leaked.sum()), sum(caption_color(c) is not None for c in layout.captions))
        for leaked, layout in zip(flags, layouts, strict=True)
    ]


# ----------------------------------------------------------------------------- LayoutSAM-eval


def score_layoutsam(images, layouts: Sequence[Layout], judge: Judge) -> list[list[RegionJudgement]]:
    """LayoutSAM-eval: the judge's spatial / colour / texture / shape verdict for every box. The
    subject of a box is its short caption where the layout carries one (``meta["short_captions"]``,
    LayoutSAM's region_captions), else its caption."""
    batch = _as_batch(images)
    _check_lengths(batch, layouts)
    judgements = judge.judge(
        batch,
        [_layout_boxes(lay) for lay in layouts],
        [lay.captions for lay in layouts],
        [lay.meta.get("short_captions", lay.captions) for lay in layouts],
    )
    for layout, row in zip(layouts, judgements, strict=True):
        if len(row) != len(layout.instances):
            raise ValueError(f"judge answered for {len(row)} of {len(layout.instances)} boxes")
    return judgements
