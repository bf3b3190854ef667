"""A few facts of the COCO-MIG parity fixture, kept under tests/ so a clone checks them without it.

data/coco_mig_parity_cases.json holds, from the fixture made with MIG_Bench's unmodified
eval_mig.py: one instance per detection fate (a score of exactly 0.25, a box scored by [CLS] or
[SEP] or '.', a box leaving the image, NMS traps...) with its query's raw GroundingDINO outputs
and the official max IoU; a sample of its HSV edge colours with OpenCV's verdicts; its resize
checksums; and every instance's official outcome with the official metrics.
test_coco_mig_parity.py checks the whole fixture where it is present.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from mig_fixture import fixture_detector

from idruid.colors import COLOR_NAMES, color_membership
from idruid.layout import Instance, Layout
from idruid.metrics import InstanceScore, aggregate_mig, resize_linear, score_coco_mig

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = json.loads((Path(__file__).parent / "data" / "coco_mig_parity_cases.json").read_text())
SIDE = 512


class _EmptyMasks:
    def segment(self, images, boxes):
        return [np.zeros((len(b), *images.shape[1:3]), bool) for b in boxes]


@pytest.mark.parametrize("case", CASES["detection_cases"], ids=lambda case: case["fate"])
def test_detection_rule_gives_the_official_max_iou(case):
    """The stored raw outputs through idruid's GroundingDINO wrapper and COCO-MIG scoring: the
    official slots are kept and the max IoU is eval_mig.py's float32 value, bit for bit."""
    detector, network = fixture_detector()
    network.record = {"queries": [case["query"]]}
    layout = Layout("a case", (Instance(case["phrase"], tuple(case["box"])),))
    blank = np.full((1, SIDE, SIDE, 3), 128, np.uint8)
    (found,) = detector.detect(blank, [[case["query"]["name"]]])[0]
    official = case["query"]["official"]
    np.testing.assert_array_equal(np.sort(found.scores), np.sort(np.float32(official["scores"])))
    ((score,),) = score_coco_mig(blank, [layout], detector, _EmptyMasks(), separate_queries=True)
    if case["official"]["max_iou"] is None:
        assert not score.detected
    else:
        assert score.iou == case["official"]["max_iou"]
    assert score.position_ok == case["official"]["position_pass"]


def test_colour_verdicts_equal_opencv_on_sampled_edge_colours():
    rows = CASES["hsv_colours"]
    rgb = np.array([[row["r"], row["g"], row["b"]] for row in rows], dtype=np.uint8)
    official = np.array([[row[name] for name in COLOR_NAMES] for row in rows], dtype=bool)
    assert {row["set"] for row in rows} == {"rounding", "edge"}
    np.testing.assert_array_equal(color_membership(rgb), official)


@pytest.mark.parametrize("case", CASES["resize_cases"], ids=lambda c: f"{c['width']}x{c['height']}")
def test_resize_equals_opencv(case):
    y, x = np.mgrid[0 : case["height"], 0 : case["width"]].astype(np.int64)
    channels = [(7 * x + 3 * y) % 256, (x * y // 64) % 256, 27 + 200 * ((x // 16 + y // 16) % 2)]
    image = np.stack(channels, axis=-1).astype(np.uint8)
    assert hashlib.sha256(image.tobytes()).hexdigest() == case["input_sha256"]
    out = np.ascontiguousarray(resize_linear(image, SIDE, SIDE))
    assert hashlib.sha256(out.tobytes()).hexdigest() == case["output_sha256"]


def test_official_outcomes_aggregate_to_the_official_numbers():
    """Every instance's official outcome, aggregated by idruid: per level and over all instances
    equal to eval_mig.py's numbers, and the mean of levels to I-DRUID Table 1's convention."""
    columns = CASES["instances"]["columns"]
    by_image: dict[int, list] = {}
    levels: dict[int, int] = {}
    for values in CASES["instances"]["rows"]:
        row = dict(zip(columns, values, strict=True))
        position, colour = bool(row["position_pass"]), bool(row["colour_pass"])
        # an InstanceScore whose mIoU term is the official one: the IoU where it counts
        detected = position or row["miou_term"] > 0
        by_image.setdefault(row["index"], []).append(
            InstanceScore(row["miou_term"], position, colour, detected)
        )
        levels[row["index"]] = row["level"]
    indices = list(by_image)
    metrics = aggregate_mig([by_image[k] for k in indices], [levels[k] for k in indices])
    official = CASES["official_metrics"]
    for k, level in enumerate(("L2", "L3", "L4", "L5", "L6")):
        assert metrics[level]["isr"] == pytest.approx(official["inst_level_sucess_ratio"][k], abs=1e-9)
        assert metrics[level]["miou"] == pytest.approx(official["miou_level"][k], abs=1e-9)
        assert metrics[level]["success_ratio"] == pytest.approx(official["success_level_ratio"][k], abs=1e-9)
    assert metrics["all"]["isr"] == pytest.approx(official["inst_sucess_ratio"], abs=1e-9)
    assert metrics["all"]["miou"] == pytest.approx(official["miou"], abs=1e-9)
    assert metrics["all"]["success_ratio"] == pytest.approx(official["sucess_ratio"], abs=1e-9)
    means = CASES["mean_of_the_five_level_values"]
    assert metrics["avg"]["isr"] == pytest.approx(means["inst_level_sucess_ratio"], abs=1e-9)
    assert metrics["avg"]["miou"] == pytest.approx(means["miou_level"], abs=1e-9)
