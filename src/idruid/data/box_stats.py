"""The box geometry of a set of layouts, in the numbers that tell a miniature from the real data:
sizes, aspect ratios, overlaps, nesting, same-colour neighbours and border contact.

Pure functions of layouts (normalised xyxy boxes), so the real COCO-MIG file and every split of
the shapes world are measured by the same code (README, "The world"; scripts/geometry_stats.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from idruid.colors import caption_color
from idruid.layout import Layout

PERCENTILES = (5, 25, 50, 75, 95)
_BORDER = 1e-3  # a box edge this close to the image edge touches it


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) intersection areas of boxes a (n, 4) and b (m, 4)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    side = np.maximum(hi - lo, 0.0)
    return side[..., 0] * side[..., 1]


def _covered_share(boxes: np.ndarray, inter: np.ndarray, area: np.ndarray) -> np.ndarray:
    """(n,) the largest share of each box's area that one other box covers."""
    if len(boxes) < 2:
        return np.zeros(len(boxes))
    share = inter / area[:, None]  # (n, n): of box i covered by box j
    np.fill_diagonal(share, 0.0)
    return share.max(axis=1)


def box_classes(layouts: Sequence[Layout], resolution: int) -> dict[str, np.ndarray]:
    """Boolean masks over all boxes of ``layouts`` (in layout order) by what makes a box hard to
    draw: its short side in pixels at ``resolution`` (below 6, which is 4-5 in the shapes world's
    splits, 6-9, 10 and more), its elongation
    (long / short side below 1.5, 2 and more), and how much one other box covers it (nested:
    over 90%; overlapped: 10-90%; free: at most 10%). scripts/isr_breakdown.py scores each class."""
    short, elongation, cover = [], [], []
    for layout in layouts:
        b = np.asarray(layout.boxes, dtype=np.float64).reshape(-1, 4)
        width, height = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        short.append(np.minimum(width, height) * resolution)
        elongation.append(np.maximum(width, height) / np.minimum(width, height))
        cover.append(_covered_share(b, _intersection(b, b), width * height))
    pixels, stretch, covered = (np.concatenate(v) for v in (short, elongation, cover))
    pixels = np.round(pixels, 6)  # 4 / 32 * 32 is 4.0, not 3.9999999
    return {
        "short side 4-5 px": pixels < 6,
        "short side 6-9 px": (pixels >= 6) & (pixels < 10),
        "short side 10+ px": pixels >= 10,
        "elongation < 1.5": stretch < 1.5,
        "elongation >= 2": stretch >= 2,
        "nested (> 90% covered)": covered > 0.9,
        "overlapped (10-90%)": (covered > 0.1) & (covered <= 0.9),
        "free (<= 10%)": covered <= 0.1,
    }


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
        colors = [caption_color(c) for c in layout.captions]
        same_color = np.array([[a is not None and a == c for c in colors] for a in colors], dtype=bool)
        same += int((same_color & upper).sum())
        same_intersecting += int((same_color & upper & (inter > 0)).sum())
        covered.append(_covered_share(b, inter, area))
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
