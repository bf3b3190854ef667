"""Tests for idruid.metrics with hand-made boxes, painted images and fake detectors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from idruid.boxes import pixel_masks
from idruid.colors import COLOR_NAMES, color_membership
from idruid.layout import Instance, Layout
from idruid.metrics import (
    InstanceScore,
    aggregate_mig,
    aggregate_sam,
    caption_color,
    leak_flags,
    leakage,
    nms,
    object_name,
    score_coco_mig,
    score_layoutsam,
)
from idruid.reports.tables import format_table_leakage, format_table_mig, format_table_sam

SIZE = 32
GREY = (128, 128, 128)
RGB = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 200, 0), "yellow": (255, 255, 0)}


def _layout(*instances: tuple[str, tuple[float, float, float, float]]) -> Layout:
    return Layout("a test", tuple(Instance(c, b) for c, b in instances))


def _grey(n: int = 1) -> np.ndarray:
    return np.full((n, SIZE, SIZE, 3), GREY, dtype=np.uint8)


def _px(n: int) -> float:
    """n pixels as a normalised coordinate of a SIZE-pixel image."""
    return n / SIZE


# ----------------------------------------------------------------------------- fakes


@dataclass
class FakeDetections:
    boxes: np.ndarray
    scores: np.ndarray


def _dets(*pairs: tuple[tuple[float, float, float, float], float]) -> FakeDetections:
    boxes = np.asarray([b for b, _ in pairs], dtype=np.float32).reshape(-1, 4)
    return FakeDetections(boxes, np.asarray([s for _, s in pairs], dtype=np.float32))


@dataclass
class FakeDetector:
    """Answers instance k of image b with ``answers[b][k]``; records the names it was asked."""

    answers: list[list[FakeDetections]]
    asked: list = field(default_factory=list)

    def detect(self, images, captions):
        self.asked.append([list(c) for c in captions])
        assert len(images) == len(captions)
        return self.answers


class BoxSegmenter:
    """A perfect segmenter for filled boxes: the pixels whose centres are inside the box."""

    def segment(self, images, boxes):
        return [pixel_masks(b, images.shape[1], images.shape[2]) for b in boxes]


@dataclass(frozen=True)
class FakeJudgement:
    spatial: bool
    color: bool
    texture: bool
    shape: bool


# ----------------------------------------------------------------------------- boxes


def test_nms_greedy_like_torchvision():
    boxes = np.array(
        [
            [0.0, 0.0, 0.5, 0.5],  # 0: score 0.5, overlaps 1 by 0.9
            [0.0, 0.0, 0.5, 0.45],  # 1: best score
            [0.6, 0.6, 1.0, 1.0],  # 2: alone
            [0.0, 0.0, 0.3, 0.45],  # 3: IoU 0.54 with box 0, 0.6 with box 1
        ]
    )
    scores = np.array([0.5, 0.9, 0.7, 0.3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.8), [1, 2, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 2])
    # identical boxes with equal scores: the first one stays
    np.testing.assert_array_equal(nms(np.stack([boxes[0], boxes[0]]), np.array([0.4, 0.4]), 0.8), [0])
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)


# ----------------------------------------------------------------------------- captions


@pytest.mark.parametrize(
    ("caption", "name", "color"),
    [
        ("a blue fork", "fork", "blue"),
        ("a red circle", "circle", "red"),
        ("a brown teddy bear", "teddy bear", "brown"),
        ("an apple", "apple", None),
        ("The Dog", "Dog", None),
        ("two White cups.", "cups.", "white"),
    ],
)
def test_object_name_and_caption_color(caption, name, color):
    assert object_name(caption) == name
    assert caption_color(caption) == color


# ----------------------------------------------------------------------------- InstanceScore


def test_instance_score_miou_rule():
    both = InstanceScore(iou=0.8, position_ok=True, color_ok=True, detected=True)
    assert both.success and both.miou_value == 0.8
    misplaced = InstanceScore(iou=0.3, position_ok=False, color_ok=True, detected=True)
    assert not misplaced.success and misplaced.miou_value == 0.3
    wrong_color = InstanceScore(iou=0.8, position_ok=True, color_ok=False, detected=True)
    assert not wrong_color.success and wrong_color.miou_value == 0.0
    missing = InstanceScore(iou=0.0, position_ok=False, color_ok=True, detected=False)
    assert not missing.success and missing.miou_value == 0.0


# ----------------------------------------------------------------------------- score_coco_mig


def test_colour_pixels_are_what_the_tests_assume():
    pixels = np.asarray([GREY, *RGB.values()], dtype=np.uint8)
    membership = color_membership(pixels)
    assert not membership[0].any()
    for k, name in enumerate(RGB, start=1):
        assert [COLOR_NAMES[c] for c in np.flatnonzero(membership[k])] == [name]


def test_score_coco_mig_detection_threshold_nms_and_iou():
    target = (0.0, 0.0, 0.5, 0.5)
    layout = _layout(
        ("a red circle", target),  # detection above the threshold
        ("a red square", target),  # only below the threshold
        ("a red star", target),  # NMS keeps the best-scoring, worse-placed box
        ("a red apple", (0.0, 0.0, 1.0, 1.0)),  # IoU 0.49
        ("a red pear", (0.0, 0.0, 1.0, 1.0)),  # IoU 0.51
        ("a red fork", target),  # nothing detected
    )
    images = _grey()
    images[0] = RGB["red"]
    detector = FakeDetector(
        [
            [
                _dets((target, 0.3)),
                _dets((target, 0.2)),
                _dets((target, 0.5), ((0.0, 0.0, 0.5, 0.45), 0.9)),
                _dets(((0.0, 0.0, 1.0, 0.49), 0.9)),
                _dets(((0.0, 0.0, 1.0, 0.51), 0.9), ((0.0, 0.0, 0.1, 0.1), 0.95)),
                _dets(),
            ]
        ]
    )
    (row,) = score_coco_mig(images, [layout], detector, BoxSegmenter())
    assert detector.asked == [[["circle", "square", "star", "apple", "pear", "fork"]]]
    assert [s.detected for s in row] == [True, False, True, True, True, False]
    assert [s.position_ok for s in row] == [True, False, True, False, True, False]
    np.testing.assert_allclose([s.iou for s in row], [1.0, 0.0, 0.9, 0.49, 0.51, 0.0], atol=1e-6)
    assert all(s.color_ok for s in row)
    # without NMS merging, the lower-scored exact box would win
    (loose,) = score_coco_mig(images, [layout], detector, BoxSegmenter(), nms_threshold=0.95)
    assert loose[2].iou == pytest.approx(1.0)


def test_score_coco_mig_colour_fraction_threshold():
    box = (0.0, 0.0, _px(10), _px(10))  # 100 pixels
    layout = _layout(("a blue cup", box), ("a blue bowl", box), ("a vase", box))
    images = _grey(2)
    flat0 = images[0, :10, :10].reshape(100, 3)
    flat0[:19] = RGB["blue"]  # 19% blue
    images[0, :10, :10] = flat0.reshape(10, 10, 3)
    flat1 = images[1, :10, :10].reshape(100, 3)
    flat1[:21] = RGB["blue"]  # 21% blue
    images[1, :10, :10] = flat1.reshape(10, 10, 3)
    exact = [_dets((box, 0.9))] * 3
    rows = score_coco_mig(images, [layout, layout], FakeDetector([exact, exact]), BoxSegmenter())
    assert [s.color_ok for s in rows[0]] == [False, False, True]  # no colour word passes
    assert [s.color_ok for s in rows[1]] == [True, True, True]
    assert [s.success for s in rows[0]] == [False, False, True]
    assert rows[0][0].miou_value == 0.0 and rows[1][0].miou_value == pytest.approx(1.0)


def test_score_coco_mig_resizes_before_scoring():
    box = (0.0, 0.0, 0.5, 0.5)
    images = _grey()
    images[0, :16, :16] = RGB["green"]
    seen = []

    class ShapeSegmenter(BoxSegmenter):
        def segment(self, images, boxes):
            seen.append(images.shape)
            return super().segment(images, boxes)

    (row,) = score_coco_mig(
        images,
        [_layout(("a green kite", box))],
        FakeDetector([[_dets((box, 0.9))]]),
        ShapeSegmenter(),
        resize_to=64,
    )
    assert seen == [(1, 64, 64, 3)] and row[0].success


def test_score_coco_mig_rejects_mismatched_batches():
    with pytest.raises(ValueError, match="2 images but 1 layouts"):
        score_coco_mig(_grey(2), [_layout(("a cat", (0, 0, 1, 1)))], FakeDetector([]), BoxSegmenter())


# ----------------------------------------------------------------------------- aggregate_mig


def _score(kind: str, iou: float = 0.0) -> InstanceScore:
    return {
        "ok": InstanceScore(iou, True, True, True),
        "misplaced": InstanceScore(iou, False, True, True),
        "wrong_color": InstanceScore(iou, True, False, True),
        "missing": InstanceScore(0.0, False, True, False),
    }[kind]


def test_aggregate_mig_hand_worked():
    scores = [
        [_score("ok", 0.8), _score("misplaced", 0.3)],  # L2
        [_score("ok", 0.6), _score("ok", 0.7)],  # L2
        [_score("ok", 0.9), _score("wrong_color", 0.8), _score("missing")],  # L3
    ]
    out = aggregate_mig(scores, [2, 2, 3])
    assert set(out) == {"L2", "L3", "all", "avg", "averages"}
    assert out["averages"] == {
        "avg": "mean of levels (I-DRUID Table 1)",
        "all": "all instances (eval_mig.py)",
    }
    assert out["L2"] == pytest.approx(
        {"isr": 0.75, "miou": 0.6, "success_ratio": 0.5, "instances": 4, "images": 2}
    )
    assert out["L3"] == pytest.approx(
        {"isr": 1 / 3, "miou": 0.3, "success_ratio": 0.0, "instances": 3, "images": 1}
    )
    assert out["all"] == pytest.approx(
        {"isr": 4 / 7, "miou": 3.3 / 7, "success_ratio": 1 / 3, "instances": 7, "images": 3}
    )
    assert out["avg"] == pytest.approx({"isr": (0.75 + 1 / 3) / 2, "miou": 0.45, "success_ratio": 0.25})


def test_aggregate_mig_needs_one_level_per_image():
    with pytest.raises(ValueError, match="levels"):
        aggregate_mig([[_score("ok", 1.0)]], [2, 3])


# ----------------------------------------------------------------------------- leakage

LEFT = (0.0, 0.0, 0.5, 0.5)
RIGHT = (0.5, 0.0, 1.0, 0.5)
BOTTOM = (0.0, 0.5, 1.0, 1.0)


def _paint(image: np.ndarray, box, color) -> None:
    mask = pixel_masks(np.asarray([box]), SIZE, SIZE)[0]
    image[mask] = color


def test_leakage_hand_painted():
    layout = _layout(("a red apple", LEFT), ("a blue cup", RIGHT))
    images = _grey(4)
    _paint(images[0], LEFT, RGB["blue"])  # apple shows the cup's colour: leaks
    _paint(images[0], RIGHT, RGB["blue"])  # cup in its own colour: fine
    _paint(images[1], LEFT, RGB["red"])  # both right
    _paint(images[1], RIGHT, RGB["red"])  # cup shows the apple's colour: leaks
    _paint(images[2], LEFT, RGB["yellow"])  # a colour nobody asked for: not leakage
    out = leakage(images[:3], [layout] * 3)
    assert (out["leaked"], out["instances"]) == (2, 6)
    flags = leak_flags(images[:3], [layout] * 3)  # which instance leaked, image by image
    assert [row.tolist() for row in flags] == [[True, False], [False, True], [False, False]]
    assert out["rate"] == pytest.approx(1 / 3)
    assert out["L2"]["rate"] == pytest.approx(1 / 3)


def test_leakage_dominance_and_levels():
    two = _layout(("a red apple", LEFT), ("a blue cup", RIGHT))
    three = _layout(("a red apple", LEFT), ("a blue cup", RIGHT), ("a table", BOTTOM))
    images = _grey(2)
    for image in images:
        image[:16, :16] = RGB["red"]
        image[:16, :10] = RGB["blue"]  # 10 of 16 columns: 62.5% blue in the apple box
    for dominance, leaked in ((0.5, 1), (0.7, 0)):
        out = leakage(images, [two, three], dominance=dominance)
        assert (out["leaked"], out["instances"]) == (2 * leaked, 4)  # "a table" names no colour
        assert out["L2"] == pytest.approx({"rate": leaked / 2, "leaked": leaked, "instances": 2})
        assert out["L3"] == pytest.approx({"rate": leaked / 2, "leaked": leaked, "instances": 2})
        assert out["avg"] == pytest.approx(leaked / 2)


def test_leakage_tie_with_own_colour_and_grey_boxes_do_not_leak():
    layout = _layout(("a red apple", LEFT), ("a blue cup", RIGHT))
    images = _grey()
    images[0, :16, :8] = RGB["red"]
    images[0, :16, 8:16] = RGB["blue"]  # exactly half and half
    out = leakage(images, [layout])
    assert out["leaked"] == 0 and out["instances"] == 2


def test_leakage_counts_another_colour_only_outside_its_own_boxes():
    # a blue cup on a red table: the table's red around the cup is the table, not leakage
    table, cup, plate = (0.0, 0.0, 1.0, 0.75), (0.25, 0.25, 0.5, 0.5), (0.0, 0.75, 0.5, 1.0)
    layout = _layout(("a red table", table), ("a blue cup", cup), ("a yellow plate", plate))
    images = _grey(3)
    for image in images:
        _paint(image, table, RGB["red"])
        _paint(image, plate, RGB["yellow"])
    images[0, 8:12, 8:12] = RGB["blue"]  # the cup's centre only: red fills most of its box
    _paint(images[1], cup, RGB["red"])  # no cup at all: red, where the table's box is, no leak
    _paint(images[2], plate, RGB["red"])  # red outside the table's box, in the plate's: leaks
    assert [leakage(image[None], [layout])["leaked"] for image in images] == [0, 0, 1]


# ----------------------------------------------------------------------------- LayoutSAM


def test_score_layoutsam_passes_boxes_captions_and_subjects():
    layout = _layout(("a red apple", LEFT), ("a blue cup", RIGHT))
    with_short = Layout("a test", layout.instances, meta={"short_captions": ["apple", "cup"]})
    asked = []

    class FakeJudge:
        def judge(self, images, boxes, captions, subjects):
            assert images.shape == (1, SIZE, SIZE, 3)
            np.testing.assert_allclose(boxes[0], [LEFT, RIGHT])
            assert captions == [["a red apple", "a blue cup"]]
            asked.append(subjects)
            return [[FakeJudgement(True, True, False, True), FakeJudgement(False, True, True, True)]]

    (row,) = score_layoutsam(_grey(), [layout], FakeJudge())
    assert [j.spatial for j in row] == [True, False]
    score_layoutsam(_grey(), [with_short], FakeJudge())
    # the subject is the short caption where the layout has one, else the caption
    assert asked == [[["a red apple", "a blue cup"]], [["apple", "cup"]]]


def test_aggregate_sam_micro_averages():
    t, f = True, False
    judgements = [
        [FakeJudgement(t, t, t, t), FakeJudgement(f, t, f, t)],  # L2
        [FakeJudgement(t, f, f, t), FakeJudgement(t, f, f, f), FakeJudgement(t, t, f, f)],  # L3
        [FakeJudgement(f, f, f, f), FakeJudgement(f, f, f, f), FakeJudgement(f, f, f, f)],  # L3
    ]
    out = aggregate_sam(judgements, [2, 3, 3])
    assert out["L2"] == pytest.approx(
        {"spatial": 0.5, "color": 1.0, "texture": 0.5, "shape": 1.0, "instances": 2, "images": 1}
    )
    assert out["L3"] == pytest.approx(
        {"spatial": 0.5, "color": 1 / 6, "texture": 0.0, "shape": 1 / 6, "instances": 6, "images": 2}
    )
    assert out["all"]["spatial"] == pytest.approx(4 / 8)  # micro: boxes, not images or levels
    assert out["all"]["color"] == pytest.approx(3 / 8)
    assert out["avg"] == pytest.approx({"spatial": 0.5, "color": 7 / 12, "texture": 0.25, "shape": 7 / 12})


# ------------------------------------------------------------ tables (reports.tables)


def test_format_table_mig_percentages():
    scores = [
        [_score("ok", 0.8), _score("misplaced", 0.3)],
        [_score("ok", 0.9), _score("missing"), _score("ok", 1)],
    ]
    table = format_table_mig({"ours": aggregate_mig(scores, [2, 3]), "base": aggregate_mig(scores[:1], [2])})
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| Method | ISR L2 | ISR L3 | ISR Avg | ISR All | mIoU L2 | mIoU L3 | mIoU Avg | mIoU All |"
    )
    # Avg: the mean of the level values; All: 3 of 5 instances succeed, terms 0.8 + 0.3 + 0.9 + 0 + 1
    assert lines[2] == "| ours | 50.00 | 66.67 | 58.33 | 60.00 | 55.00 | 63.33 | 59.17 | 60.00 |"
    assert lines[3] == "| base | 50.00 | - | 50.00 | 50.00 | 55.00 | - | 55.00 | 55.00 |"
    assert lines[-1] == "Avg: mean of levels (I-DRUID Table 1); All: all instances (eval_mig.py)."


def test_format_table_sam_and_leakage():
    t, f = True, False
    sam = aggregate_sam(
        [[FakeJudgement(t, t, f, t), FakeJudgement(t, f, f, t), FakeJudgement(f, t, t, t)]], [3]
    )
    table = format_table_sam({"ours": sam})
    assert "| Method | Spatial | Color | Texture | Shape |" in table
    assert "| ours | 66.67 | 66.67 | 33.33 | 100.00 |" in table
    leak = {
        "rate": 0.125,
        "leaked": 1,
        "instances": 8,
        "L2": {"rate": 0.25},
        "L3": {"rate": 0.0},
        "avg": 0.125,
    }
    table = format_table_leakage({"ours": leak})
    assert "| Method | Leak L2 | Leak L3 | Leak Avg | Leak All |" in table
    assert "| ours | 25.00 | 0.00 | 12.50 | 12.50 |" in table
