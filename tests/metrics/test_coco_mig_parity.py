"""COCO-MIG scoring against MIG_Bench's eval_mig.py, instance by instance, on the parity fixture.

The fixture (mig_fixture.FIXTURE) holds 130 images, the raw outputs of a fake GroundingDINO per
object-name query, the fake SAM's masks per instance, and what the unmodified eval_mig.py made of
them: every instance's max IoU, position, colour and mIoU term, and the per-level and overall
numbers. Here the same images and raw outputs go through idruid's GroundingDINO wrapper,
``score_coco_mig`` at the default protocol and ``aggregate_mig``; every outcome must be the
official one. The OpenCV rules (8-bit HSV, bilinear resize) are checked on the fixture's edge
colours and resize checksums. The module skips where the fixture is absent (a user's clone);
test_coco_mig_parity_cases.py checks a few of its instances from tests/ alone.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
from mig_fixture import (
    FIXTURE,
    PRESENT,
    FixtureSam,
    fixture_detector,
    fixture_layout,
    load_rgb,
    read_jsonl,
    rle_mask,
)

from idruid.colors import COLOR_NAMES, color_membership
from idruid.metrics import aggregate_mig, resize_linear, score_coco_mig
from idruid.reports.tables import format_table_mig

pytestmark = [
    pytest.mark.skipif(not PRESENT, reason=f"COCO-MIG parity fixture not present ({FIXTURE})"),
    pytest.mark.usefixtures("one_thread"),
]

SIDE = 512
LEVELS = ("L2", "L3", "L4", "L5", "L6")


def official_image(record: dict) -> np.ndarray:
    """What eval_mig.py scores, computed here with OpenCV as it does: cv2.imread (BGR), resized
    to 512x512 by cv2.resize when the height is not 512; returned as RGB."""
    import cv2

    image = cv2.imread(str(FIXTURE / record["image"]))
    if image.shape[0] != SIDE:
        image = cv2.resize(image, dsize=(SIDE, SIDE))
    assert hashlib.sha256(image.tobytes()).hexdigest() == record["official_image_sha256"]
    return np.ascontiguousarray(image[..., ::-1])


@dataclass
class Parity:
    """idruid's outcomes on the whole fixture beside the official ones."""

    records: list[dict]
    scores: list[list] = field(default_factory=list)  # InstanceScore per image and instance
    query_kept: dict = field(default_factory=dict)  # (index, name) -> kept scores equal the official
    query_boxes: dict = field(default_factory=dict)  # (index, name) -> kept boxes equal the official
    seen_by_network: list[bool] = field(default_factory=list)  # saw the official 512 image, per image
    seen_by_sam: list[bool] = field(default_factory=list)

    def differences(self) -> list[tuple[dict, dict, object, str]]:
        """(record, instance, idruid's score, cause) for every instance whose outcome differs."""
        out = []
        for record, row in zip(self.records, self.scores, strict=True):
            for inst, ours in zip(record["instances"], row, strict=True):
                if instance_differs(inst["official"], ours):
                    out.append((record, inst, ours, self.cause(record, inst, ours)))
        return out

    def cause(self, record: dict, inst: dict, ours) -> str:
        """The first step that went another way: the detector's kept slots, their boxes, or the
        colour verdict, which idruid's colour rule gives right on cv2's image (resize) or not (HSV)."""
        key = (record["index"], inst["name"])
        if not self.query_kept[key]:
            return "detection score"
        if not self.query_boxes[key]:
            return "box clipping"
        if not inst["official"]["position_pass"] or ours.color_ok == inst["official"]["colour_pass"]:
            return "other"
        sam = inst["sam"]
        mask = rle_mask(sam["masks_rle"][inst["official"]["sam_best"]], sam["mask_height"], sam["mask_width"])
        in_range = color_membership(official_image(record))[..., COLOR_NAMES.index(inst["colour"])][mask]
        on_cv2_image = np.float32(in_range.sum()) / np.float32(mask.sum()) >= np.float32(0.2)
        return "resize" if on_cv2_image == inst["official"]["colour_pass"] else "HSV"


def instance_differs(official: dict, ours) -> bool:
    if official["max_iou"] is None:
        iou_differs = ours.detected
    else:
        iou_differs = not ours.detected or abs(ours.iou - official["max_iou"]) > 1e-6
    return (
        iou_differs
        or ours.position_ok != official["position_pass"]
        or (official["position_pass"] and ours.color_ok != official["colour_pass"])  # else it did not run
        or abs(ours.miou_value - official["miou_term"]) > 1e-6
        or ours.success != official["success"]
    )


def _check_queries(parity: Parity, detector, network, record: dict, image: np.ndarray) -> None:
    """Each query on its own: does idruid keep the official slots, with their scores and boxes?"""
    for query in record["queries"]:
        (found,) = detector.detect(image[None], [[query["name"]]])[0]
        official = query["official"]
        order = np.argsort(-np.asarray(official["scores"], dtype=np.float32), kind="stable")
        want_scores = np.asarray(official["scores"], dtype=np.float32)[order]
        want_boxes = np.asarray(official["xyxy_px"], dtype=np.float32).reshape(-1, 4)[order]
        key = (record["index"], query["name"])
        parity.query_kept[key] = np.array_equal(np.sort(found.scores), np.sort(want_scores))
        parity.query_boxes[key] = parity.query_kept[key] and np.allclose(
            np.asarray(found.boxes, np.float32) * np.float32(SIDE), want_boxes, rtol=0, atol=1e-3
        )


@pytest.fixture(scope="module")
def parity() -> Parity:
    records = read_jsonl(FIXTURE / "fixture.jsonl")
    result = Parity(records)
    detector, network = fixture_detector()
    segmenter = FixtureSam()
    for record in records:
        network.record = segmenter.record = record
        expected = official_image(record)
        raw = load_rgb(FIXTURE / record["image"])
        network.seen.clear(), segmenter.seen.clear()
        (row,) = score_coco_mig(
            raw[None], [fixture_layout(record)], detector, segmenter, resize_to=SIDE, separate_queries=True
        )
        result.scores.append(row)
        result.seen_by_network.append(all(np.array_equal(im, expected) for im in network.seen))
        result.seen_by_sam.append(all(np.array_equal(im, expected) for im in segmenter.seen))
        _check_queries(result, detector, network, record, expected)
    return result


def test_every_instance_has_the_official_outcome(parity):
    differing = parity.differences()
    causes = Counter(cause for *_, cause in differing)
    flips = sum(ours.success != inst["official"]["success"] for _, inst, ours, _ in differing)
    total = sum(len(r["instances"]) for r in parity.records)
    assert not differing, (
        f"{len(differing)} of {total} instances differ from eval_mig.py ({flips} pass/fail): "
        + ", ".join(f"{cause} {n}" for cause, n in causes.most_common())
        + "; by fate: "
        + ", ".join(f"{fate} {n}" for fate, n in Counter(i["fate"] for _, i, _, _ in differing).most_common())
    )


def test_max_iou_and_miou_terms_are_the_official_float32_values(parity):
    gaps = [
        abs(ours.iou - inst["official"]["max_iou"])
        for record, row in zip(parity.records, parity.scores, strict=True)
        for inst, ours in zip(record["instances"], row, strict=True)
        if inst["official"]["max_iou"] is not None
    ]
    assert len(gaps) > 400 and max(gaps) == 0.0, f"largest max-IoU gap {max(gaps):.3g}"


def test_detector_keeps_the_official_slots_scores_and_unclipped_boxes(parity):
    kept = Counter(parity.query_kept.values())
    boxes = Counter(parity.query_boxes.values())
    assert kept[False] == 0, f"{kept[False]} of {len(parity.query_kept)} queries keep other slots"
    assert boxes[False] == 0, f"{boxes[False]} of {len(parity.query_boxes)} queries keep other boxes"


def test_scorers_see_the_image_eval_mig_scores(parity):
    """The 512x512 image of every record, resized or not, is cv2's to the byte."""
    assert all(parity.seen_by_network), f"{parity.seen_by_network.count(False)} images differ from cv2's"
    assert all(parity.seen_by_sam)


def _official_metrics() -> dict:
    return json.loads((FIXTURE / "official_metrics.json").read_text())


def test_levels_and_both_averages_equal_the_official_numbers(parity):
    levels = [record["level"] for record in parity.records]
    metrics = aggregate_mig(parity.scores, levels)
    official = _official_metrics()
    written = official["eval_mig_metric_json"]
    for k, level in enumerate(LEVELS):
        assert metrics[level]["isr"] == pytest.approx(written["inst_level_sucess_ratio"][k], abs=1e-9)
        assert metrics[level]["miou"] == pytest.approx(written["miou_level"][k], abs=1e-9)
        assert metrics[level]["success_ratio"] == pytest.approx(written["success_level_ratio"][k], abs=1e-9)
    # eval_mig.py's printed numbers are all-instance (all-image) averages ...
    assert metrics["all"]["isr"] == pytest.approx(written["inst_sucess_ratio"], abs=1e-9)
    assert metrics["all"]["miou"] == pytest.approx(written["miou"], abs=1e-9)
    assert metrics["all"]["success_ratio"] == pytest.approx(written["sucess_ratio"], abs=1e-9)
    # ... and I-DRUID's Table 1 "Avg" is the mean of the five level values
    means = official["mean_of_the_five_level_values"]
    assert metrics["avg"]["isr"] == pytest.approx(means["inst_level_sucess_ratio"], abs=1e-9)
    assert metrics["avg"]["miou"] == pytest.approx(means["miou_level"], abs=1e-9)
    assert metrics["averages"] == {
        "avg": "mean of levels (I-DRUID Table 1)",
        "all": "all instances (eval_mig.py)",
    }


def test_the_table_prints_both_averages_labelled(parity):
    """Table 1 as idruid prints it: the level mean beside I-DRUID's "Avg", the all-instance value
    beside eval_mig.py's printed one, each column saying which it is."""
    metrics = aggregate_mig(parity.scores, [record["level"] for record in parity.records])
    table = format_table_mig({"fixture": metrics})
    header, _, row = table.splitlines()[:3]
    cells = dict(zip(*([c.strip() for c in line.split("|")] for line in (header, row)), strict=True))
    written, means = (
        _official_metrics()["eval_mig_metric_json"],
        _official_metrics()["mean_of_the_five_level_values"],
    )
    assert cells["ISR All"] == f"{100 * written['inst_sucess_ratio']:.2f}"
    assert cells["mIoU All"] == f"{100 * written['miou']:.2f}"
    assert cells["ISR Avg"] == f"{100 * means['inst_level_sucess_ratio']:.2f}"
    assert "Avg: mean of levels (I-DRUID Table 1)" in table and "All: all instances (eval_mig.py)" in table


def test_the_druid_protocol_shares_the_steps_on_512_images(parity):
    """The authors' protocol scores images at their own size; on the fixture's 512x512 images
    (no resize either way) it shares every other step, so it gives the official outcomes too."""
    detector, network = fixture_detector()
    segmenter = FixtureSam()
    compared = 0
    for record in parity.records:
        if (record["width"], record["height"]) != (SIDE, SIDE):
            continue
        network.record = segmenter.record = record
        (row,) = score_coco_mig(
            load_rgb(FIXTURE / record["image"])[None],
            [fixture_layout(record)],
            detector,
            segmenter,
            resize_to=None,
            separate_queries=True,
        )
        for inst, ours in zip(record["instances"], row, strict=True):
            assert not instance_differs(inst["official"], ours), (record["index"], inst["k"], inst["fate"])
            compared += 1
    assert compared > 150


# ----------------------------------------------------------------------------- OpenCV's rules


def test_colour_verdicts_equal_opencv_on_the_edge_colours():
    """hsv_edges.csv: 3,871 colours at the range bounds and where exact rounding of H and S would
    change a verdict, with eval_mig.py's verdict for each colour name."""
    rows = list(csv.DictReader((FIXTURE / "hsv_edges.csv").open()))
    rgb = np.array([[int(r["r"]), int(r["g"]), int(r["b"])] for r in rows], dtype=np.uint8)
    official = np.array([[int(r[name]) for name in COLOR_NAMES] for r in rows], dtype=bool)
    ours = color_membership(rgb)
    wrong = (ours != official).any(axis=1)
    by_set = Counter(r["set"] for r, w in zip(rows, wrong, strict=True) if w)
    assert not wrong.any(), f"{int(wrong.sum())} of {len(rows)} colours get another verdict ({dict(by_set)})"


def _resize_input(width: int, height: int) -> np.ndarray:
    """resize_cases.json's input pattern (x = column, y = row), as its README defines it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    channels = [(7 * x + 3 * y) % 256, (x * y // 64) % 256, 27 + 200 * ((x // 16 + y // 16) % 2)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def test_resize_equals_opencv_on_the_resize_cases():
    cases = json.loads((FIXTURE / "resize_cases.json").read_text())["cases"]
    wrong = []
    for case in cases:
        image = _resize_input(case["width"], case["height"])
        assert hashlib.sha256(image.tobytes()).hexdigest() == case["input_sha256"]
        out = resize_linear(image, SIDE, SIDE)
        if hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest() != case["output_sha256"]:
            wrong.append(f"{case['width']}x{case['height']}")
    assert not wrong, f"resize differs from cv2 from {', '.join(wrong)}"


# ----------------------------------------------------------------------------- where eval_mig.py crashes


def _crash_case(name: str) -> dict:
    (record,) = [r for r in read_jsonl(FIXTURE / "crash_cases.jsonl") if r["case"] == name]
    return record


def test_a_box_whose_only_token_above_the_threshold_is_the_dot_is_kept():
    """eval_mig.py raises IndexError on it (GroundingDINO's phrase is empty); idruid keeps the box,
    which its score (0.40 > 0.25) says to keep, and scores the image."""
    record = _crash_case("dot_only_token")
    detector, network = fixture_detector()
    network.record = record
    image = load_rgb(FIXTURE / record["image"])
    query = next(q for q in record["queries"] if q["name"] == "dining table")
    (found,) = detector.detect(image[None], [["dining table"]])[0]
    cx, cy, w, h = np.asarray(query["pred_boxes"], dtype=np.float32)[3]
    slot_box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float32)
    assert any(np.allclose(box, slot_box, atol=1e-7) for box in found.boxes)
    segmenter = FixtureSam(record)
    (row,) = score_coco_mig(
        image[None], [fixture_layout(record)], detector, segmenter, resize_to=SIDE, separate_queries=True
    )
    assert len(row) == len(record["instances"])


class _EmptyMasks:
    def __init__(self) -> None:
        self.seen = []

    def segment(self, images, boxes):
        self.seen.append(images[0])
        return [np.zeros((len(b), *images.shape[1:3]), bool) for b in boxes]


def test_a_512_high_image_of_another_width_is_resized_to_512x512():
    """eval_mig.py resizes only when the height is not 512, then fails on a 768x512 image's
    512x768 mask; idruid resizes every image that is not 512x512, as cv2.resize would."""
    import cv2

    record = _crash_case("wide_512_high")
    detector, network = fixture_detector()
    network.record = record
    segmenter = _EmptyMasks()
    image = load_rgb(FIXTURE / record["image"])
    assert image.shape[:2] == (512, 768)
    score_coco_mig(
        image[None], [fixture_layout(record)], detector, segmenter, resize_to=SIDE, separate_queries=True
    )
    expected = cv2.resize(image, dsize=(SIDE, SIDE))
    assert np.array_equal(network.seen[0], expected) and np.array_equal(segmenter.seen[0], expected)


def test_a_level_without_images_is_left_out(parity):
    """eval_mig.py divides by zero when a level has no image; idruid reports the levels it has,
    and the mean of levels is over those."""
    two = [k for k, record in enumerate(parity.records) if record["level"] == 2]
    metrics = aggregate_mig([parity.scores[k] for k in two], [2] * len(two))
    assert [k for k in metrics if k.startswith("L")] == ["L2"]
    assert metrics["avg"]["isr"] == metrics["L2"]["isr"] == metrics["all"]["isr"]
