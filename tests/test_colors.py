"""COCO-MIG colour maths: OpenCV HSV against colorsys, the published ranges, the 20% check."""

import colorsys

import numpy as np
import pytest

from idruid.colors import COLOR_NAMES, color_fraction, color_membership, color_passes, rgb_to_hsv_cv


def test_hsv_matches_colorsys_on_random_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, size=(2000, 3), dtype=np.uint8)
    hsv = rgb_to_hsv_cv(rgb)
    expected = np.array([colorsys.rgb_to_hsv(*(px / 255.0)) for px in rgb])
    assert np.allclose(hsv[:, 0], expected[:, 0] * 180.0, atol=1e-6)
    assert np.allclose(hsv[:, 1], expected[:, 1] * 255.0, atol=1e-6)
    assert np.allclose(hsv[:, 2], expected[:, 2] * 255.0, atol=1e-6)


def test_hsv_keeps_leading_shape():
    assert rgb_to_hsv_cv(np.zeros((4, 5, 3), dtype=np.uint8)).shape == (4, 5, 3)


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
        ((200, 30, 0), {"red"}),  # H = 4.5 rounds to 4 (half to even, as OpenCV): not yet brown
    ],
)
def test_membership_of_reference_colours(rgb, expected):
    member = color_membership(np.array(rgb, np.uint8))
    assert {name for name, inside in zip(COLOR_NAMES, member, strict=True) if inside} == expected


def test_red_and_brown_overlap_kept_as_published():
    # H = 8 (OpenCV units), S and V high: inside both red (0-9) and brown (6-25).
    rgb = np.array([200, int(round(200 * 16 / 60)), 0], np.uint8)
    assert round(float(rgb_to_hsv_cv(rgb)[0])) == 8
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


def test_unknown_colour_is_an_error():
    with pytest.raises(ValueError, match="unknown colour"):
        color_fraction(np.zeros((2, 2, 3), np.uint8), np.ones((2, 2), bool), "purple")
