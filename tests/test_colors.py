"""COCO-MIG colour maths: OpenCV's 8-bit HSV against its integer algorithm and colorsys, the
published ranges, the float32 20% check."""

import colorsys

import numpy as np
import pytest

from idruid.colors import (
    COLOR_NAMES,
    color_fraction,
    color_membership,
    color_passes,
    fraction_passes,
    hsv_opencv,
    in_range_fraction,
)


def opencv_integer_hsv(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit RGB->HSV written out from its fixed-point tables (H and S through 12-bit
    reciprocals, rounded by +2048 >> 12), an independent copy of the rule cv2.cvtColor applies."""
    rgb = np.asarray(rgb, dtype=np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    steps = np.arange(256)
    sdiv = np.where(steps > 0, np.round(255 * 4096 / np.maximum(steps, 1)), 0).astype(np.int64)
    hdiv = np.where(steps > 0, np.round(180 * 4096 / (6 * np.maximum(steps, 1))), 0).astype(np.int64)
    v = rgb.max(axis=-1)
    d = v - rgb.min(axis=-1)
    s = (d * sdiv[v] + 2048) >> 12
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * d, r - g + 4 * d))
    h = (h * hdiv[d] + 2048) >> 12
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def test_hsv_is_opencvs_integer_algorithm():
    rgb = np.random.default_rng(0).integers(0, 256, size=(200_000, 3), dtype=np.uint8)
    greys_and_primaries = np.array([[0, 0, 0], [255, 255, 255], [7, 7, 7], [255, 0, 0], [0, 1, 0]], np.uint8)
    rgb = np.concatenate([rgb, greys_and_primaries])
    np.testing.assert_array_equal(hsv_opencv(rgb), opencv_integer_hsv(rgb))


def test_hsv_is_close_to_colorsys():
    rgb = np.random.default_rng(1).integers(0, 256, size=(2000, 3), dtype=np.uint8)
    hsv = hsv_opencv(rgb).astype(np.float64)
    exact = np.array([colorsys.rgb_to_hsv(*(px / 255.0)) for px in rgb]) * [180.0, 255.0, 255.0]
    hue_gap = np.abs(hsv[:, 0] - exact[:, 0])
    assert np.minimum(hue_gap, 180 - hue_gap).max() <= 1.0 and np.abs(hsv[:, 1:] - exact[:, 1:]).max() <= 1.0


def test_hsv_keeps_leading_shape():
    assert hsv_opencv(np.zeros((4, 5, 3), dtype=np.uint8)).shape == (4, 5, 3)
    assert color_membership(np.zeros((2, 4, 5, 3), dtype=np.uint8)).shape == (2, 4, 5, 7)
    assert color_membership(np.zeros((0, 3), dtype=np.uint8)).shape == (0, 7)


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((255, 0, 0), {"red"}),
        ((0, 0, 255), {"blue"}),
        ((0, 255, 0), {"green"}),
        ((255, 255, 0), {"yellow"}),
        ((0, 0, 0), {"black"}),
        ((255, 255, 255), {"white"}),
        ((150, 90, 30), {"brown"}),
        ((128, 128, 128), set()),
        ((200, 30, 0), {"red"}),  # H = 4: (30 * 614 + 2048) >> 12; exactly 4.5. Not yet brown
        # H = 90 in OpenCV's tables: (343 * 1069 + 2048) >> 12; the exact 89.48 would round to 89 (green)
        ((0, 115, 113), {"blue"}),
    ],
)
def test_membership_of_reference_colours(rgb, expected):
    member = color_membership(np.array(rgb, np.uint8))
    assert {name for name, inside in zip(COLOR_NAMES, member, strict=True) if inside} == expected


def test_red_and_brown_overlap_kept_as_published():
    # H = 8 (OpenCV units), S and V high: inside both red (0-9) and brown (6-25).
    rgb = np.array([200, int(round(200 * 16 / 60)), 0], np.uint8)
    assert hsv_opencv(rgb)[0] == 8
    member = dict(zip(COLOR_NAMES, color_membership(rgb), strict=True))
    assert member["red"] and member["brown"]


def test_dark_vivid_red_is_not_red():
    # V < 70 fails the red range even though the hue is red
    assert not color_membership(np.array([60, 0, 0], np.uint8))[COLOR_NAMES.index("red")]


def test_color_fraction_counts_only_masked_pixels():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2] = (255, 0, 0)  # top half red, bottom half black
    mask = np.zeros((4, 4), bool)
    mask[1:3] = True  # one red row, one black row
    assert color_fraction(image, mask, "red") == pytest.approx(0.5)
    assert color_fraction(image, mask, "black") == pytest.approx(0.5)
    assert color_fraction(image, np.zeros((4, 4), bool), "red") == 0.0
    assert color_passes(image, mask, "red") and not color_passes(image, mask, "blue")
    assert not color_passes(image, np.zeros((4, 4), bool), "red")  # an empty mask fails


def test_the_fraction_is_float32_and_exactly_20_percent_passes():
    assert in_range_fraction(1, 5) == np.float32(0.2) and in_range_fraction(1, 5).dtype == np.float32
    assert fraction_passes(in_range_fraction(10_000, 50_000))  # exactly 20%
    assert not fraction_passes(in_range_fraction(9_999, 50_000))  # one pixel short
    assert in_range_fraction(0, 0) == 0.0


def test_unknown_colour_is_an_error():
    with pytest.raises(ValueError, match="unknown colour"):
        color_fraction(np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), bool), "purple")
