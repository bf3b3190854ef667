"""COCO-MIG's colour check: OpenCV's 8-bit HSV and the seven colours' ranges.

It is MIG_Bench's colour check (eval_mig.py): an instance's colour passes when at least 20%
of its mask pixels fall in that colour's HSV range. The HSV is OpenCV's own 8-bit conversion
(``cv2.cvtColor``, H 0..179, S and V 0..255), which computes H and S with fixed-point tables:
rounding the exact H and S instead changes a verdict for 8,152 of the 2^24 colours. Membership
is ``cv2.inRange`` on the published ranges, inclusive at both ends; the ranges overlap (red and
brown share H 6-9, yellow and brown H 25), so membership is per colour, not exclusive. The
metrics, the leakage rate and the shapes world share this one rule.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

COLOR_NAMES = ("red", "blue", "green", "yellow", "black", "white", "brown")

COLOR_PASS_FRACTION = 0.2  # COCO-MIG: at least 20% of mask pixels in the colour's range

# eval_mig.py's colour table: (lower, upper) HSV bounds per range; red is the union of two.
COLOR_RANGES: dict[str, tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]] = {
    "red": (((0, 50, 70), (9, 255, 255)), ((159, 50, 70), (180, 255, 255))),
    "blue": (((90, 50, 70), (128, 255, 255)),),
    "green": (((36, 50, 70), (89, 255, 255)),),
    "yellow": (((25, 50, 70), (35, 255, 255)),),
    "black": (((0, 0, 0), (180, 255, 30)),),
    "white": (((0, 0, 221), (180, 43, 255)),),
    "brown": (((6, 43, 35), (25, 255, 255)),),
}


def _as_image(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 as the (1, N, 3) image OpenCV converts (it takes 2-D images only)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise ValueError(f"colours must be uint8 (..., 3), got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb.reshape(1, -1, 3))


def hsv_opencv(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> uint8 HSV (..., 3), exactly as ``cv2.cvtColor(bgr, COLOR_BGR2HSV)``
    gives it for the same pixels read as BGR (eval_mig.py converts cv2.imread's BGR image)."""
    image = _as_image(rgb)
    if image.size == 0:
        return np.zeros(np.shape(rgb), dtype=np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_RGB2HSV).reshape(np.shape(rgb))


def color_membership(rgb: np.ndarray) -> np.ndarray:
    """Bool (..., 7): whether each uint8 RGB pixel lies in each COLOR_NAMES colour's range."""
    rgb = np.asarray(rgb)
    hsv = hsv_opencv(rgb).reshape(1, -1, 3)
    if hsv.size == 0:
        return np.zeros((*rgb.shape[:-1], len(COLOR_NAMES)), dtype=bool)
    members = []
    for name in COLOR_NAMES:
        inside = np.zeros(hsv.shape[:2], dtype=bool)
        for lower, upper in COLOR_RANGES[name]:
            inside |= cv2.inRange(hsv, np.array(lower, np.uint8), np.array(upper, np.uint8)) > 0
        members.append(inside)
    return np.stack(members, axis=-1).reshape(*rgb.shape[:-1], len(COLOR_NAMES))


def color_index(color: str) -> int:
    """Position of a colour in COLOR_NAMES; a clear error for unknown names."""
    if color not in COLOR_NAMES:
        raise ValueError(f"unknown colour {color!r} (COCO-MIG colours: {', '.join(COLOR_NAMES)})")
    return COLOR_NAMES.index(color)


def in_range_fraction(in_range: int, pixels: int) -> np.float32:
    """in_range / pixels as eval_mig.py computes it (a float32 torch division); 0 for no pixels."""
    if pixels == 0:
        return np.float32(0.0)
    return np.float32(in_range) / np.float32(pixels)


def fraction_passes(fraction: float, threshold: float = COLOR_PASS_FRACTION) -> bool:
    """eval_mig.py's test, in float32: colour fails when the fraction is below 0.2 (exactly 20%
    passes)."""
    return bool(np.float32(fraction) >= np.float32(threshold))


def color_fraction(rgb: np.ndarray, mask: np.ndarray, color: str) -> np.float32:
    """Share of the mask's pixels that fall in ``color``'s range; 0.0 for an empty mask.

    rgb (H, W, 3) uint8, mask (H, W) bool.
    """
    mask = np.asarray(mask, dtype=bool)
    in_range = color_membership(np.asarray(rgb)[mask])[:, color_index(color)]
    return in_range_fraction(int(in_range.sum()), int(mask.sum()))


def color_passes(rgb: np.ndarray, mask: np.ndarray, color: str) -> bool:
    """COCO-MIG's colour test: at least 20% of a non-empty mask's pixels in the colour's range."""
    return bool(np.asarray(mask).any()) and fraction_passes(color_fraction(rgb, mask, color))


def bare_word(word: str) -> str:
    """A caption word without case and punctuation ("Red," -> "red"), as captions are matched."""
    return re.sub(r"[^\w-]", "", word.lower())


def caption_color(caption: str) -> str | None:
    """The first COCO-MIG colour word of a caption ("a blue fork" -> "blue"), or None."""
    for word in caption.split():
        if bare_word(word) in COLOR_NAMES:
            return bare_word(word)
    return None
