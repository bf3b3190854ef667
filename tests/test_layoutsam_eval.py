"""`idruid eval` / `idruid score` on LayoutSAM-eval and the `--judge` flag: tiny parquet shards, the
embedded model as the generator and a tiny random Llava as the VLM judge.

The judge's verdicts are recomputed here one box at a time (one unpadded forward per question, or
one greedy loop for the default rule, the spatial gate applied by hand) and micro-averaged by
hand, so the test checks the wiring (short captions as subjects, detailed captions as
descriptions, image names, levels, the gate, the averages) against an independent path.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import build_tiny_llava

from idruid.checkpoint import EMBEDDED_CHECKPOINT
from idruid.cli import main
from idruid.data.coco_mig import write_coco_mig
from idruid.data.layoutsam import read_layoutsam
from idruid.data.shapes import benchmark_layouts
from idruid.eval_benchmarks import BENCHMARKS, ScoringError, select_layouts
from idruid.evaluate import render_ground_truth
from idruid.metrics import aggregate_mig, aggregate_sam, score_coco_mig
from idruid.scorers.analytic import AnalyticDetector, AnalyticSegmenter
from idruid.scorers.vlm_judge import (
    ATTRIBUTES,
    VlmJudge,
    attribute_question,
    box_crops,
    says_yes,
    spatial_question,
)
from idruid.scoring import Scorers, load_image, score_folder

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROWS = [  # (width, height, [(pixel box, short caption, detailed caption), ...]); levels 2, 3, 2, 3
    (
        640,
        480,
        [
            ([64, 48, 320, 240], "a cup", "a small red cup with a handle"),
            ([320, 200, 640, 480], "a plate", "a white round plate"),
        ],
    ),
    (
        512,
        512,
        [
            ([0, 0, 256, 300], "a dog", "a brown dog with long ears"),
            ([200, 100, 500, 400], "a ball", "a striped blue ball"),
            ([10, 380, 500, 510], "a mat", "a green woven mat"),
        ],
    ),
    (
        800,
        600,
        [
            ([100, 100, 400, 500], "a lamp", "a tall yellow lamp"),
            ([450, 50, 780, 580], "a chair", "a wooden chair with a curved back"),
        ],
    ),
    (
        1024,
        768,
        [
            ([0, 0, 1024, 300], "a sky", "a cloudy grey sky"),
            ([100, 300, 600, 760], "a house", "a red brick house"),
            ([650, 350, 1000, 700], "a tree", "a round green tree"),
        ],
    ),
]
DETAILED = [[d for _, _, d in boxes] for _, _, boxes in ROWS]
SHORT = [[s for _, s, _ in boxes] for _, _, boxes in ROWS]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Two shards (rows 0-2, then row 3), captions as strings as in the released eval set."""
    folder = tmp_path_factory.mktemp("layoutsam_eval")
    rows = [
        {
            "global_caption": f"scene {k}",
            "bbox_list": str([box for box, _, _ in boxes]),
            "region_captions": str([s for _, s, _ in boxes]),
            "detail_region_captions": str([d for _, _, d in boxes]),
            "width": width,
            "height": height,
            "file_name": f"{k:03d}.jpg",
        }
        for k, (width, height, boxes) in enumerate(ROWS)
    ]
    pq.write_table(pa.Table.from_pylist(rows[:3]), folder / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), folder / "part-1.parquet")
    return folder


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    shapes = [c for layout in benchmark_layouts("shapes-sam")[:40] for c in layout.captions]
    captions = [c for row in DETAILED + SHORT for c in row] + shapes
    # seed 2: on the eval images below some boxes fail the spatial question, and of those that
    # pass, some attributes are answered "Yes" and some "No" (so every branch is exercised)
    return build_tiny_llava(tmp_path_factory.mktemp("vlm"), captions, seed=2)


@pytest.fixture(scope="module")
def vlm(vlm_dir) -> VlmJudge:
    """The judge by the logit rule (``--judge-rule logits``), whose answers can be checked for
    their distance from a tie."""
    return VlmJudge.from_pretrained(vlm_dir, rule="logits")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, bench, vlm_dir):
    """``idruid eval`` judged by the logit rule; the default rule is checked on its images below."""
    out = tmp_path_factory.mktemp("eval") / "layoutsam"
    args = ["eval", "--benchmark", "layoutsam-eval", "--bench-dir", str(bench), "--judge", str(vlm_dir)]
    args += ["--judge-rule", "logits"]
    assert main([*args, "--steps", "2", "--score-batch-size", "3", "--out", str(out)]) == 0
    return out


def _scores_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "settings"}


def _run(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def _margin(judge: VlmJudge, crop: np.ndarray, question: str) -> float:
    """logit("Yes") - logit("No") of one unpadded prompt, all logits kept."""
    inputs = judge.processor(
        images=[Image.fromarray(crop)], text=[judge.prompt(question)], return_tensors="pt"
    )
    with torch.no_grad():
        logits = judge.model(**inputs).logits[0, -1]
    vocab = judge.processor.tokenizer.get_vocab()
    return float(logits[vocab["Yes"]] - logits[vocab["No"]])


def _greedy(judge: VlmJudge, crop: np.ndarray, question: str, max_new_tokens: int = 32) -> str:
    """One unpadded prompt decoded greedily by hand (a full forward per token, no cache)."""
    inputs = judge.processor(
        images=[Image.fromarray(crop)], text=[judge.prompt(question)], return_tensors="pt"
    )
    ids, stop, new = inputs["input_ids"], judge.model.generation_config.eos_token_id, []
    stop = set(stop if isinstance(stop, list) else [] if stop is None else [stop])
    for _ in range(max_new_tokens):
        with torch.no_grad():
            token = int(
                judge.model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0, -1].argmax()
            )
        new.append(token)
        if token in stop:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return judge.processor.tokenizer.decode(new, skip_special_tokens=True)


def _verdicts_by_hand(
    judge: VlmJudge, images, layouts, rule: str = "logits"
) -> tuple[list[list[tuple]], float]:
    """Each box's (spatial, colour, texture, shape), the subject its short caption where the
    layout has one, attributes asked only when spatial passes; and, by the logit rule, the
    smallest |margin| met (how far every answer was from a tie)."""
    rows, closest = [], np.inf

    def yes(crop, question) -> bool:
        nonlocal closest
        if rule == "generate":
            return says_yes(_greedy(judge, crop, question))
        margin = _margin(judge, crop, question)
        closest = min(closest, abs(margin))
        return margin > 0

    for image, layout in zip(images, layouts, strict=True):
        row = []
        subjects = layout.meta.get("short_captions", layout.captions)
        for crop, caption, subject in zip(
            box_crops(image, np.array(layout.boxes)), layout.captions, subjects, strict=True
        ):
            spatial = yes(crop, spatial_question(subject))
            attributes = [spatial and yes(crop, attribute_question(a, subject, caption)) for a in ATTRIBUTES]
            row.append((spatial, *attributes))
        rows.append(row)
    return rows, closest


def _rates(rows: list[list[tuple]]) -> dict:
    flat = [v for row in rows for v in row]
    return {name: sum(v[k] for v in flat) / len(flat) for k, name in enumerate(("spatial", *ATTRIBUTES))}


# ----------------------------------------------------------------------------- layouts


def test_layouts_are_the_rows_with_detailed_captions(bench):
    layouts = select_layouts(BENCHMARKS["layoutsam-eval"], bench_dir=bench)
    assert [layout.meta["index"] for layout in layouts] == [0, 1, 2, 3]  # rows over the shards, in order
    assert [layout.captions for layout in layouts] == DETAILED
    assert [layout.meta["short_captions"] for layout in layouts] == SHORT  # the judge's subjects
    assert [layout.level for layout in layouts] == [2, 3, 2, 3]
    assert layouts[3].boxes[1] == pytest.approx((100 / 1024, 300 / 768, 600 / 1024, 760 / 768))
    picked = select_layouts(BENCHMARKS["layoutsam-eval"], per_level=1, bench_dir=bench)
    assert [layout.meta["index"] for layout in picked] == [0, 1]  # the first L2 and the first L3
    first = select_layouts(BENCHMARKS["layoutsam-eval"], bench_dir=bench, limit=3)
    assert [lay.meta["index"] for lay in first] == [0, 1, 2]
    limited = select_layouts(BENCHMARKS["layoutsam-eval"], per_level=2, bench_dir=bench, limit=3)
    assert [layout.meta["index"] for layout in limited] == [0, 1, 2]
    with pytest.raises(ScoringError, match="--limit must be at least 1"):
        select_layouts(BENCHMARKS["layoutsam-eval"], bench_dir=bench, limit=0)


# ----------------------------------------------------------------------------- eval and score


def test_eval_scores_the_saved_images_by_the_judge_protocol(evaluated, bench, vlm_dir, vlm):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert set(metrics) == {"sam", "settings"}  # no COCO-MIG section without a detector
    assert metrics["settings"]["judge"] == str(vlm_dir) and metrics["settings"]["judge_rule"] == "logits"
    assert metrics["settings"]["detector"] is None and metrics["settings"]["layouts"] == 4
    names = sorted(p.name for p in (evaluated / "images").iterdir())
    assert names == [f"layoutsam-eval_{k}.png" for k in range(4)]
    resolution = json.loads((EMBEDDED_CHECKPOINT / "idruid.json").read_text())["model"]["resolution"]
    images = np.stack([load_image(evaluated / "images" / name) for name in names])
    assert images.shape == (4, resolution, resolution, 3)  # the checkpoint's size, not the rows' 640x480...

    layouts = read_layoutsam(bench).layouts
    rows, closest = _verdicts_by_hand(vlm, images, layouts)
    assert closest > 1e-3  # no answer near a tie, so batching cannot flip one
    spatial = [v[0] for row in rows for v in row]
    assert any(spatial) and not all(spatial)  # both branches of the gate ran
    asked = [answer for row in rows for v in row if v[0] for answer in v[1:]]
    assert any(asked) and not all(asked)  # attribute answers of both kinds
    sam = metrics["sam"]
    assert sam["all"] == pytest.approx({**_rates(rows), "instances": 10, "images": 4})
    level2, level3 = _rates([rows[0], rows[2]]), _rates([rows[1], rows[3]])
    assert sam["L2"] == pytest.approx({**level2, "instances": 4, "images": 2})
    assert sam["L3"] == pytest.approx({**level3, "instances": 6, "images": 2})
    assert sam["avg"] == pytest.approx({k: (level2[k] + level3[k]) / 2 for k in level2})
    # and the same as aggregate_sam over the judge's own verdicts on the saved images
    judged = vlm.judge(*_judge_inputs(images, layouts))
    assert json.loads(json.dumps(aggregate_sam(judged, [2, 3, 2, 3]))) == sam
    assert "Per-attribute" in (evaluated / "table.md").read_text() and (evaluated / "grid.png").is_file()


def _judge_inputs(images, layouts) -> tuple:
    """A judge's arguments for layouts read from LayoutSAM: boxes, detailed captions, short ones."""
    boxes = [np.array(lay.boxes) for lay in layouts]
    return images, boxes, [lay.captions for lay in layouts], [lay.meta["short_captions"] for lay in layouts]


def test_the_default_rule_is_the_scripts(evaluated, bench, vlm_dir, vlm, tmp_path):
    """``idruid score`` without --judge-rule reads written answers (greedy generation holding
    "Yes" or "yes"), the short captions naming each box's subject."""
    out = tmp_path / "score"
    args = ["score", "--benchmark", "layoutsam-eval", "--bench-dir", str(bench), "--judge", str(vlm_dir)]
    assert main([*args, "--images", str(evaluated / "images"), "--out", str(out)]) == 0
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["settings"]["judge_rule"] == "generate"
    names = [f"layoutsam-eval_{k}.png" for k in range(4)]
    images = np.stack([load_image(evaluated / "images" / name) for name in names])
    rows, _ = _verdicts_by_hand(vlm, images, read_layoutsam(bench).layouts, rule="generate")
    assert scored["sam"]["all"] == pytest.approx({**_rates(rows), "instances": 10, "images": 4})


def test_score_of_the_eval_folder_equals_eval(evaluated, bench, vlm_dir, tmp_path):
    out = tmp_path / "score"
    args = ["score", "--benchmark", "layoutsam-eval", "--bench-dir", str(bench), "--judge", str(vlm_dir)]
    args += ["--judge-rule", "logits"]
    assert main([*args, "--images", str(evaluated / "images"), "--out", str(out)]) == 0
    evaluated_metrics = json.loads((evaluated / "metrics.json").read_text())
    scored = json.loads((out / "metrics.json").read_text())
    assert _scores_only(scored) == _scores_only(evaluated_metrics)
    assert scored["settings"]["judge"] == evaluated_metrics["settings"]["judge"] == str(vlm_dir)
    assert (out / "table.md").read_text() == (evaluated / "table.md").read_text()


def test_score_with_a_limit_and_a_detector(evaluated, bench, vlm_dir, vlm, tmp_path):
    """--limit 2 scores rows 0 and 1 only; a detector and segmenter add the COCO-MIG section
    (asked one object name at a time, as for GroundingDINO; images at their own size)."""
    out = tmp_path / "score"
    args = ["score", "--benchmark", "layoutsam-eval", "--bench-dir", str(bench), "--judge", str(vlm_dir)]
    args += [
        "--images",
        str(evaluated / "images"),
        "--limit",
        "2",
        "--out",
        str(out),
        "--judge-rule",
        "logits",
    ]
    assert main([*args, "--detector", "analytic", "--segmenter", "analytic"]) == 0
    scored = json.loads((out / "metrics.json").read_text())
    assert set(scored) == {"mig", "leakage", "sam", "settings"}
    assert scored["sam"]["all"]["instances"] == 5 and scored["mig"]["all"]["instances"] == 5
    layouts = read_layoutsam(bench, limit=2).layouts
    images = np.stack([load_image(evaluated / "images" / f"layoutsam-eval_{k}.png") for k in range(2)])
    rows = score_coco_mig(images, layouts, AnalyticDetector(), AnalyticSegmenter(), separate_queries=True)
    assert scored["mig"] == json.loads(json.dumps(aggregate_mig(rows, [2, 3])))
    judged = vlm.judge(*_judge_inputs(images, layouts))
    assert scored["sam"] == json.loads(json.dumps(aggregate_sam(judged, [2, 3])))
    assert scored["sam"]["L2"]["instances"] == 2 and scored["sam"]["L3"]["instances"] == 3


class Recording:
    """Wraps a judge and records the captions and subjects it is asked about."""

    def __init__(self, judge):
        self.judge_, self.captions, self.subjects = judge, [], []

    def judge(self, images, boxes, captions, subjects=None):
        self.captions += [list(c) for c in captions]
        self.subjects += [list(s) for s in subjects]
        return self.judge_.judge(images, boxes, captions, subjects)


def test_the_judge_is_asked_about_the_short_and_detailed_captions(evaluated, bench, vlm):
    layouts = select_layouts(BENCHMARKS["layoutsam-eval"], bench_dir=bench)
    recording = Recording(vlm)
    metrics, images = score_folder(
        BENCHMARKS["layoutsam-eval"],
        evaluated / "images",
        layouts,
        Scorers(None, None, recording),
        batch_size=3,
    )
    assert recording.captions == DETAILED  # in two chunks of 3 and 1 images
    assert recording.subjects == SHORT
    assert len(images) == 4 and images[3].shape[2] == 3
    assert json.loads(json.dumps(metrics)) == _scores_only(
        json.loads((evaluated / "metrics.json").read_text())
    )


# ----------------------------------------------------------------------------- --judge on shapes-sam


def test_shapes_sam_with_a_vlm_judge_asks_the_vlm(tmp_path, vlm_dir, vlm):
    layouts = select_layouts(BENCHMARKS["shapes-sam"], per_level=1)
    folder = tmp_path / "images"
    folder.mkdir()
    for layout, image in zip(layouts, render_ground_truth(layouts), strict=True):
        Image.fromarray(image).save(folder / f"truth_{layout.meta['index']}.png")
    base = ["score", "--benchmark", "shapes-sam", "--per-level", "1", "--images", str(folder)]
    assert main([*base, "--out", str(tmp_path / "analytic")]) == 0
    assert (
        main([*base, "--judge", str(vlm_dir), "--judge-rule", "logits", "--out", str(tmp_path / "vlm")]) == 0
    )
    analytic = json.loads((tmp_path / "analytic" / "metrics.json").read_text())
    asked = json.loads((tmp_path / "vlm" / "metrics.json").read_text())
    assert asked["settings"]["judge"] == str(vlm_dir) and analytic["settings"]["judge"] == "analytic"
    assert asked["mig"] == analytic["mig"] and asked["leakage"] == analytic["leakage"]  # same detector
    images = np.stack([load_image(folder / f"truth_{layout.meta['index']}.png") for layout in layouts])
    rows, closest = _verdicts_by_hand(vlm, images, layouts)
    assert closest > 1e-3
    assert asked["sam"]["all"] == pytest.approx({**_rates(rows), "instances": 20, "images": 5})
    assert asked["sam"]["all"] != analytic["sam"]["all"]  # the random VLM is not the analytic judge


# ----------------------------------------------------------------------------- errors


def test_errors_are_one_line_and_come_before_generating(tmp_path, bench, vlm_dir, capsys):
    out = tmp_path / "eval"
    layoutsam = ["eval", "--benchmark", "layoutsam-eval", "--bench-dir", str(bench), "--out", str(out)]
    shapes = ["eval", "--benchmark", "shapes-sam", "--per-level", "1", "--out", str(out)]
    missing = tmp_path / "no_vlm"
    coco_dir = tmp_path / "coco"
    write_coco_mig(select_layouts(BENCHMARKS["shapes-mig"], per_level=1), coco_dir)
    coco = ["eval", "--benchmark", "coco-mig", "--bench-dir", str(coco_dir), "--out", str(out)]
    cases = [
        (layoutsam, "layoutsam-eval is scored by a vision-language model: give --judge"),
        (
            [*layoutsam, "--judge", "analytic"],
            "--judge analytic: the analytic judge reads only the shapes world",
        ),
        ([*layoutsam, "--judge", str(missing)], f"--judge {missing}: unknown judge and no such directory"),
        ([*layoutsam, "--judge", str(tmp_path)], f"--judge {tmp_path}: not a VLM directory, it lacks config"),
        (
            [*layoutsam, "--judge", str(vlm_dir), "--detector", "analytic"],
            "needs both --detector and --segmenter",
        ),
        (
            ["eval", "--benchmark", "layoutsam-eval", "--judge", str(vlm_dir), "--out", str(out)],
            "layoutsam-eval needs --bench-dir",
        ),
        (
            ["eval", "--benchmark", "layoutsam-eval", "--bench-dir", str(tmp_path / "none.parquet")],
            "none.parquet: LayoutSAM parquet file or folder not found",
        ),
        ([*shapes, "--judge", str(missing)], f"--judge {missing}: unknown judge and no such directory"),
        (
            [*coco, "--detector", "analytic", "--segmenter", "analytic", "--judge", "analytic"],
            "give a local VLM directory for coco-mig",
        ),
    ]
    for args, message in cases:
        code, err = _run(args, capsys)
        assert code == 2 and err.startswith("idruid: error:") and message in err and "\n" not in err, err
        if str(missing) in message:
            assert "--judge" in err
    assert not out.exists()  # refused before the model was loaded or anything generated
    images = tmp_path / "images"
    images.mkdir()
    code, err = _run(
        ["score", "--benchmark", "layoutsam-eval", "--bench-dir", str(bench), "--images", str(images)], capsys
    )
    assert code == 2 and "give --judge" in err
    with pytest.raises(SystemExit) as exit_info:
        main([*layoutsam, "--judge", str(vlm_dir), "--per-level", "1", "--limit", "2"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
