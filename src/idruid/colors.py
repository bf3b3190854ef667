"""COCO-MIG's colour check: OpenCV-convention HSV and the seven colours' ranges.

It mirrors MIG_Bench's colour check (eval_mig.py): an instance's colour passes when at
least 20% of its mask pixels fall in that colour's HSV range, with OpenCV's 8-bit HSV
(H 0..180, S and V 0..255). The ranges are COCO-MIG's as published, overlaps included
(red and brown share H 6-9), so membership is per colour, not exclusive. Pure numpy,
no cv2, so the analytic detector, the shapes world and the metrics share one scorer.
"""

from __future__ import annotations

import numpy as np

COLOR_NAMES = ("red", "blue", "green", "yellow", "black", "white", "brown")

COLOR_PASS_FRACTION = 0.2  # COCO-MIG: at least 20% of mask pixels in the colour's range


def rgb_to_hsv_cv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float HSV (..., 3) as OpenCV's COLOR_RGB2HSV, before rounding.

    H in [0, 180), S and V in [0, 255]; grey pixels get H = 0 and S = 0.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    spread = v - rgb.min(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(v > 0, 255.0 * spread / v, 0.0)
        safe = np.where(spread > 0, spread, 1.0)
        h_deg = np.where(
            v == r,
            60.0 * (g - b) / safe,
            np.where(v == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe),
        )
    h_deg = np.where(spread > 0, np.mod(h_deg, 360.0), 0.0)
    return np.stack([h_deg / 2.0, s, v], axis=-1)


def _in(x: np.ndarray, low: float, high: float) -> np.ndarray:
    return (x >= low) & (x <= high)


def color_membership(rgb: np.ndarray) -> np.ndarray:
    """Bool (..., 7): whether each pixel lies in each COLOR_NAMES colour's COCO-MIG range.

    HSV is rounded to integers first, as cv2.cvtColor's uint8 output is before cv2.inRange.
    """
    hsv = np.rint(rgb_to_hsv_cv(rgb))
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    vivid = (s >= 50) & (v >= 70)
    ranges = {
        "red": (_in(h, 0, 9) | _in(h, 159, 180)) & vivid,
        "blue": _in(h, 90, 128) & vivid,
        "green": _in(h, 36, 89) & vivid,
        "yellow": _in(h, 25, 35) & vivid,
        "black": v <= 30,
        "white": (s <= 43) & (v >= 221),
        "brown": _in(h, 6, 25) & (s >= 43) & (v >= 35),
    }
    return np.stack([ranges[name] for name in COLOR_NAMES], axis=-1)


def color_index(color: str) -> int:
    """Position of a colour in COLOR_NAMES; a clear error for unknown names."""
    if color not in COLOR_NAMES:
        raise ValueError(f"unknown colour {color!r} (COCO-MIG colours: {', '.join(COLOR_NAMES)})")
    return COLOR_NAMES.index(color)


def color_fraction(rgb: np.ndarray, mask: np.ndarray, color: str) -> float:
    """Share of the mask's pixels that fall in ``color``'s range; 0.0 for an empty mask.

    rgb (H, W, 3) uint8, mask (H, W) bool.
    """
    mask = np.asarray(mask, dtype=bool)
    count = int(mask.sum())
    if count == 0:
        return 0.0
    in_range = color_membership(np.asarray(rgb)[mask])[:, color_index(color)]
    return float(in_range.sum()) / count


def color_passes(rgb: np.ndarray, mask: np.ndarray, color: str) -> bool:
    """COCO-MIG's colour test: at least 20% of the mask's pixels in the colour's range."""
    return color_fraction(rgb, mask, color) >= COLOR_PASS_FRACTION
