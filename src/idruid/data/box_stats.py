"""The box geometry of a set of layouts, in the numbers that tell a miniature from the real data:
sizes, aspect ratios, overlaps, nesting, same-colour neighbours and border contact.

Pure functions of layouts (normalised xyxy boxes), so the real COCO-MIG file and every split of
the shapes world are measured by the same code (README, "The world"; scripts/geometry_stats.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from idruid.layout import Layout

PERCENTILES = (5, 25, 50, 75, 95)
_BORDER = 1e-3  # a box edge this close to the image edge touches it


def _caption_color(caption: str) -> str | None:
    from idruid.metrics.checks import caption_color

    return caption_color(caption)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) intersection areas of boxes a (n, 4) and b (m, 4)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    side = np.maximum(hi - lo, 0.0)
    return side[..., 0] * side[..., 1]


def box_stats(layouts: Sequence[Layout]) -> dict:
    """Geometry statistics of all boxes of ``layouts``:

    - ``aspect``: height / width at PERCENTILES, and the share outside 0.75-1.33 (``aspect_out``);
    - ``size``: sqrt(area) at PERCENTILES, shares below 0.2 and above 0.45;
    - ``min_side``: the smaller side at PERCENTILES and its minimum;
    - ``pairs_intersecting``, ``pairs_iou_over_0.15``: shares of the box pairs of a layout;
    - ``covered_over_0.3``, ``covered_over_0.9``: shares of boxes that one other box of the
      layout covers by more than 30% / 90% of their area (0.9: nested);
    - ``same_color_pairs``: share of pairs whose captions name one colour, and
      ``same_color_intersecting``: the share of those whose boxes intersect;
    - ``touch_border``: share of boxes with an edge on the image border.
    """
    boxes, sizes, aspects, touch = [], [], [], []
    pairs = intersecting = over_015 = same = same_intersecting = 0
    covered = []
    for layout in layouts:
        b = np.asarray(layout.boxes, dtype=np.float64).reshape(-1, 4)
        width, height = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        boxes.append(np.stack([width, height], axis=1))
        sizes.append(np.sqrt(width * height))
        aspects.append(height / width)
        touch.append((b[:, :2] <= _BORDER).any(axis=1) | (b[:, 2:] >= 1 - _BORDER).any(axis=1))
        inter = _intersection(b, b)
        area = width * height
        union = area[:, None] + area[None, :] - inter
        iou = inter / union
        upper = np.triu(np.ones_like(inter, dtype=bool), k=1)
        pairs += int(upper.sum())
        intersecting += int((inter[upper] > 0).sum())
        over_015 += int((iou[upper] > 0.15).sum())
        colors = [_caption_color(c) for c in layout.captions]
        same_color = np.array([[a is not None and a == c for c in colors] for a in colors], dtype=bool)
        same += int((same_color & upper).sum())
        same_intersecting += int((same_color & upper & (inter > 0)).sum())
        np.fill_diagonal(inter, 0.0)
        share = inter / area[:, None]  # (n, n): of box i covered by box j
        covered.append(share.max(axis=1) if len(b) > 1 else np.zeros(len(b)))
    sides = np.concatenate(boxes)
    size, aspect, cover = np.concatenate(sizes), np.concatenate(aspects), np.concatenate(covered)
    min_side = sides.min(axis=1)
    return {
        "layouts": len(layouts),
        "boxes": len(size),
        "aspect": [float(v) for v in np.percentile(aspect, PERCENTILES)],
        "aspect_out": float(((aspect < 0.75) | (aspect > 1.33)).mean()),
        "size": [float(v) for v in np.percentile(size, PERCENTILES)],
        "size_below_0.2": float((size < 0.2).mean()),
        "size_above_0.45": float((size > 0.45).mean()),
        "min_side": [float(v) for v in np.percentile(min_side, PERCENTILES)],
        "smallest_side": float(min_side.min()),
        "pairs_intersecting": intersecting / max(pairs, 1),
        "pairs_iou_over_0.15": over_015 / max(pairs, 1),
        "covered_over_0.3": float((cover > 0.3).mean()),
        "covered_over_0.9": float((cover > 0.9).mean()),
        "same_color_pairs": same / max(pairs, 1),
        "same_color_intersecting": same_intersecting / max(same, 1),
        "touch_border": float(np.concatenate(touch).mean()),
    }
