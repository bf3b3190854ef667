"""`idruid score` and the benchmark scoring path: image files, COCO-MIG's resize, the
GroundingDINO + SAM path on tiny random models, and `idruid score` == `idruid eval`."""

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import build_tiny_grounding_dino

from idruid.boxes import box_iou
from idruid.checkpoint import EMBEDDED_CHECKPOINT, load_checkpoint
from idruid.cli import main
from idruid.data.coco_mig import write_coco_mig
from idruid.eval_benchmarks import (
    BENCHMARKS,
    ScorerSpecs,
    ScoringError,
    check_scorers,
    resolve,
    select_layouts,
)
from idruid.evaluate import evaluate, render_ground_truth, score_images, with_index_seeds
from idruid.layout import Instance, Layout
from idruid.metrics import leakage, nms, resize_linear, score_coco_mig
from idruid.sampling import SamplingSettings, generate
from idruid.scorers.grounding_dino import GroundingDinoDetector
from idruid.scorers.protocols import Detections
from idruid.scorers.sam import SamSegmenter
from idruid.scoring import (
    Scorers,
    find_images,
    image_index,
    load_image,
    load_images,
    load_scorers,
    merge_leakage,
    score_benchmark,
    score_folder,
)

# ----------------------------------------------------------------------------- fixtures

WORDS = ["a", "red", "blue", "green", "yellow", "dog", "cat", "cup", "bowl", "kite"]
COCO_LAYOUTS = [
    Layout(
        "a red dog and a blue cat",
        (Instance("a red dog", (0.1, 0.1, 0.5, 0.5)), Instance("a blue cat", (0.5, 0.5, 0.9, 0.95))),
    ),
    Layout(
        "two green cups",
        (Instance("a green cup", (0.0, 0.2, 0.4, 0.6)), Instance("a green cup", (0.6, 0.2, 1.0, 0.6))),
    ),
    Layout(
        "a yellow kite, a red bowl and a blue dog",
        (
            Instance("a yellow kite", (0.1, 0.0, 0.9, 0.3)),
            Instance("a red bowl", (0.1, 0.5, 0.4, 0.9)),
            Instance("a blue dog", (0.5, 0.4, 0.95, 0.9)),
        ),
    ),
    Layout(
        "a red cat and a red cup",
        (Instance("a red cat", (0.2, 0.2, 0.6, 0.7)), Instance("a red cup", (0.6, 0.6, 0.9, 0.9))),
    ),
]  # written as benchmark indices 0..3: levels 2, 2, 3, 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco_mig")
    write_coco_mig(COCO_LAYOUTS, path)
    return path


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return build_tiny_grounding_dino(tmp_path_factory.mktemp("grounding_dino"), WORDS)


def _save(folder: Path, images, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names, strict=True):
        Image.fromarray(image).save(folder / name)


def _scores_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "settings"}


# ----------------------------------------------------------------------------- COCO-MIG's resize


def _naive_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2's INTER_LINEAR by the book, one output pixel at a time, before rounding: sample at
    (dst + 0.5) * in / out - 0.5, a source index outside the image taking the edge pixel."""
    src_h, src_w = image.shape[:2]
    out = np.zeros((height, width, image.shape[2]))
    for i in range(height):
        y = (i + 0.5) * src_h / height - 0.5
        y0 = int(np.floor(y))
        fy = y - y0
        for j in range(width):
            x = (j + 0.5) * src_w / width - 0.5
            x0 = int(np.floor(x))
            fx = x - x0

            def at(r, c):
                return image[min(max(r, 0), src_h - 1), min(max(c, 0), src_w - 1)].astype(np.float64)

            value = (
                at(y0, x0) * (1 - fy) * (1 - fx)
                + at(y0, x0 + 1) * (1 - fy) * fx
                + at(y0 + 1, x0) * fy * (1 - fx)
                + at(y0 + 1, x0 + 1) * fy * fx
            )
            out[i, j] = value
    return out


def test_resize_linear_by_hand():
    row = np.array([[[0], [100]]], dtype=np.uint8)  # 1 x 2
    assert resize_linear(row, 1, 4)[0, :, 0].tolist() == [0, 25, 75, 100]  # samples at -.25 .25 .75 1.25
    block = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10
    halved = resize_linear(block, 2, 2)[..., 0]  # an exact 2x shrink averages 2x2 blocks (no antialiasing)
    assert halved.tolist() == [[25, 45], [105, 125]]
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    assert np.array_equal(resize_linear(image, 7, 5), image)


@pytest.mark.parametrize("shape", [(6, 9), (13, 4), (3, 3)])
def test_resize_linear_matches_a_naive_loop(shape):
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for height, width in ((16, 12), (5, 7), (2, 2)):
        exact = _naive_resize(image, height, width)
        # cv2 rounds fixed-point weights and sums, so a value may be one off the exact nearest
        # integer (the COCO-MIG parity fixture checks cv2's own values); the rule is bilinear's
        assert np.abs(resize_linear(image, height, width) - exact).max() < 1.0


# ----------------------------------------------------------------------------- image files


def test_image_index_reads_the_number_after_the_last_underscore():
    assert image_index("a_12.png") == 12
    assert image_index("my_model_007.jpg") == 7
    assert image_index("dir/coco-mig_799.PNG") == 799
    assert image_index("12.png") is None and image_index("a_b.png") is None


def test_find_images_orders_by_layout_and_ignores_others(tmp_path):
    layouts = select_layouts(BENCHMARKS["shapes-mig"], per_level=1)  # indices 0, 160, 320, 480, 640
    pixel = np.zeros((2, 2, 3), dtype=np.uint8)
    _save(tmp_path, [pixel] * 6, ["x_640.png", "x_0.png", "y_160.jpg", "x_320.png", "x_480.png", "x_7.png"])
    (tmp_path / "notes.txt").write_text("not an image")
    found = find_images(tmp_path, layouts)
    assert [p.name for p in found] == ["x_0.png", "y_160.jpg", "x_320.png", "x_480.png", "x_640.png"]


def test_find_images_errors(tmp_path):
    layouts = select_layouts(BENCHMARKS["shapes-mig"], per_level=2)  # 10 layouts
    with pytest.raises(ScoringError, match="no such folder"):
        find_images(tmp_path / "absent", layouts)
    pixel = np.zeros((2, 2, 3), dtype=np.uint8)
    _save(tmp_path, [pixel] * 3, ["x_0.png", "x_1.png", "x_160.png"])
    with pytest.raises(
        ScoringError,
        match=r"no image for 7 of 10 layouts, benchmark indices 161, 320, 321, "
        r"480, 481 and 2 more",
    ):
        find_images(tmp_path, layouts)
    _save(tmp_path, [pixel], ["y_1.png"])
    with pytest.raises(ScoringError, match="two images for one benchmark index: x_1.png and y_1.png"):
        find_images(tmp_path, layouts)
    _save(tmp_path, [pixel], ["cover.png"])
    with pytest.raises(ScoringError, match=r"cannot read a benchmark index from cover.png"):
        find_images(tmp_path, layouts)


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "x_0.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ScoringError, match=f"{bad}: unreadable image"):
        load_image(bad)


def test_shapes_images_must_share_a_size_coco_mig_images_are_resized(tmp_path):
    _save(
        tmp_path, [np.zeros((32, 32, 3), np.uint8), np.zeros((48, 32, 3), np.uint8)], ["a_0.png", "a_1.png"]
    )
    paths = [tmp_path / "a_0.png", tmp_path / "a_1.png"]
    with pytest.raises(ScoringError, match=r"a_1.png: image is 32x48, a_0.png is 32x32"):
        load_images(paths, BENCHMARKS["shapes-mig"].resize())
    assert load_images(paths, BENCHMARKS["coco-mig"].resize()).shape == (2, 512, 512, 3)


# ----------------------------------------------------------------------------- CLI errors


def _run(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err.strip()


def test_cli_errors_are_one_line(tmp_path, capsys, bench_dir):
    images = tmp_path / "images"  # the first layout of each level, one of them unreadable
    _save(
        images,
        [np.zeros((32, 32, 3), dtype=np.uint8)] * 4,
        ["a_0.png", "a_320.png", "a_480.png", "a_640.png"],
    )
    (images / "a_160.png").write_bytes(b"garbage")
    base = ["score", "--images", str(images), "--out", str(tmp_path / "out")]
    cases = [
        (
            [*base, "--benchmark", "shapes-mig"],
            "no image for 795 of 800 layouts, benchmark indices 1, 2, 3, 4, 5 and 790 more",
        ),
        ([*base, "--benchmark", "shapes-mig", "--per-level", "1"], "a_160.png: unreadable image"),
        ([*base, "--benchmark", "coco-mig"], "coco-mig needs --bench-dir"),
        ([*base, "--benchmark", "coco-mig", "--bench-dir", str(bench_dir)], "give --detector"),
        (
            [*base, "--benchmark", "coco-mig", "--bench-dir", str(tmp_path / "nope")],
            "COCO-MIG folder not found",
        ),
        ([*base, "--benchmark", "shapes-sam", "--detector", "nope"], "--detector nope: unknown detector"),
    ]
    for args, message in cases:
        code, err = _run(args, capsys)
        assert code == 2 and err.startswith("idruid: error:") and message in err and "\n" not in err, err
    evaluate_coco = [
        "eval",
        "--benchmark",
        "coco-mig",
        "--bench-dir",
        str(bench_dir),
        "--out",
        str(tmp_path / "eval"),
    ]
    for args, message in [
        (evaluate_coco, "give --detector"),
        (
            [*evaluate_coco, "--detector", "nope", "--segmenter", "analytic"],
            "--detector nope: unknown detector",
        ),
        ([*evaluate_coco, "--detector", "analytic", "--segmenter", str(tmp_path)], "lacks config.json"),
    ]:  # refused before the model is loaded or anything generated
        code, err = _run(args, capsys)
        assert code == 2 and message in err and "\n" not in err, err
    assert not (tmp_path / "eval").exists()
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--benchmark", "layoutsam"])
    assert exit_info.value.code == 2 and "invalid choice: 'layoutsam'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- shapes: score == eval


@pytest.fixture(scope="module")
def shapes_eval(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "shapes-mig"
    args = ["eval", "--benchmark", "shapes-mig", "--per-level", "2", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    return out


def test_eval_names_images_by_benchmark_index(shapes_eval):
    names = sorted(p.name for p in (shapes_eval / "images").iterdir())
    indices = [layout.meta["index"] for layout in select_layouts(BENCHMARKS["shapes-mig"], per_level=2)]
    assert names == sorted(f"shapes-mig_{i}.png" for i in indices)
    assert (shapes_eval / "grid.png").is_file() and (shapes_eval / "table.md").is_file()


def test_score_of_the_eval_folder_equals_eval(shapes_eval, tmp_path):
    out = tmp_path / "score"
    args = ["score", "--benchmark", "shapes-mig", "--per-level", "2", "--images", str(shapes_eval / "images")]
    assert main([*args, "--out", str(out)]) == 0
    evaluated = json.loads((shapes_eval / "metrics.json").read_text())
    scored = json.loads((out / "metrics.json").read_text())
    assert _scores_only(scored) == _scores_only(evaluated)
    assert scored["mig"]["all"]["instances"] == sum(lv * 2 for lv in (2, 3, 4, 5, 6))
    assert (out / "table.md").read_text() == (shapes_eval / "table.md").read_text()


def test_eval_equals_scoring_the_generated_images_in_memory(shapes_eval):
    """Saving as PNG and reading back loses nothing: the in-memory scores are the same."""
    layouts = with_index_seeds(select_layouts(BENCHMARKS["shapes-mig"], per_level=2), seed=0)
    sampling = json.loads((EMBEDDED_CHECKPOINT / "idruid.json").read_text())["sampling"]
    images = generate(
        load_checkpoint(),
        layouts,
        SamplingSettings.from_dict(sampling).override(steps=2),
        seed=0,
        batch_size=100,
        progress=False,
    )
    evaluated = json.loads((shapes_eval / "metrics.json").read_text())
    assert json.loads(json.dumps(score_images(images, layouts))) == _scores_only(evaluated)


class FakeProcesses:
    """accelerate.PartialState's interface for process ``rank`` of ``count``, run one after another
    in this process: contiguous shares, the first ones one longer, as split_between_processes gives."""

    def __init__(self, rank: int, count: int):
        self.process_index, self.num_processes = rank, count
        self.is_main_process = rank == 0

    @contextmanager
    def split_between_processes(self, items):
        size, extra = divmod(len(items), self.num_processes)
        start = self.process_index * size + min(self.process_index, extra)
        yield items[start : start + size + (self.process_index < extra)]

    def wait_for_everyone(self):
        pass


def test_split_across_processes_gives_the_single_process_result(shapes_eval, tmp_path):
    model = load_checkpoint()
    sampling = json.loads((EMBEDDED_CHECKPOINT / "idruid.json").read_text())["sampling"]
    settings = SamplingSettings.from_dict(sampling).override(steps=2)
    run = resolve("shapes-mig", per_level=2)
    kwargs = {"settings": settings, "progress": False}
    out = tmp_path / "split"
    assert evaluate(model, run, out, state=FakeProcesses(1, 3), **kwargs) is None
    assert evaluate(model, run, out, state=FakeProcesses(2, 3), **kwargs) is None
    assert len(list((out / "images").iterdir())) == 6  # ranks 1 and 2: 3 layouts each of 10
    assert not (out / "metrics.json").exists()  # only the main process scores
    metrics = evaluate(model, run, out, state=FakeProcesses(0, 3), **kwargs)
    assert metrics["settings"]["processes"] == 3
    single = json.loads((shapes_eval / "metrics.json").read_text())
    for name in sorted(p.name for p in (shapes_eval / "images").iterdir()):
        assert np.array_equal(load_image(out / "images" / name), load_image(shapes_eval / "images" / name))
    assert _scores_only(metrics) | {"settings": None} == _scores_only(single) | {"settings": None}


# ----------------------------------------------------------------------------- COCO-MIG on tiny models


class AskedNames:
    """Wraps a detector and records the caption lists it is asked for."""

    def __init__(self, detector):
        self.detector, self.asked = detector, []

    def detect(self, images, captions):
        self.asked.append([list(c) for c in captions])
        return self.detector.detect(images, captions)


def _coloured_images(layouts, size: tuple[int, int], seed: int) -> np.ndarray:
    """Random images whose first instance box is painted in its caption's colour."""
    colours = {"red": (220, 20, 20), "blue": (20, 40, 220), "green": (20, 200, 40), "yellow": (230, 220, 20)}
    height, width = size
    images = np.random.default_rng(seed).integers(0, 256, (len(layouts), height, width, 3), dtype=np.uint8)
    for image, layout in zip(images, layouts, strict=True):
        x0, y0, x1, y1 = layout.instances[0].box
        image[int(y0 * height) : int(y1 * height), int(x0 * width) : int(x1 * width)] = colours[
            layout.instances[0].caption.split()[1]
        ]
    return images


def _naive_position(detector, image: np.ndarray, caption: str, box) -> float | None:
    """COCO-MIG's position check for one instance by itself: the object name alone in the
    prompt, score >= 0.25, NMS at 0.8, max IoU with the target (None when nothing is kept)."""
    (found,) = detector.detect(image[None], [[" ".join(caption.split()[2:])]])[0]
    keep = found.scores >= 0.25
    boxes, scores = found.boxes[keep], found.scores[keep]
    if not len(boxes):
        return None
    kept = boxes[nms(boxes, scores, 0.8)]
    return max(float(box_iou(np.asarray(box), b)) for b in kept)


def test_grounding_dino_and_sam_path_end_to_end(dino_dir, sam_dir, bench_dir, tmp_path):
    layouts = select_layouts(BENCHMARKS["coco-mig"], bench_dir=bench_dir)
    assert [layout.meta["index"] for layout in layouts] == [0, 1, 2, 3]
    images = _coloured_images(layouts, (80, 96), seed=3)
    _save(tmp_path, images, [f"sys_{layout.meta['index']}.png" for layout in layouts])
    detector = GroundingDinoDetector.from_pretrained(dino_dir, box_threshold=0.0, text_threshold=0.0)
    asked = AskedNames(detector)
    scorers = Scorers(asked, SamSegmenter.from_pretrained(sam_dir), judge=None)
    metrics, folder_images = score_folder(BENCHMARKS["coco-mig"], tmp_path, layouts, scorers, batch_size=3)
    scored = np.stack(list(folder_images))  # read again from the files

    assert scored.shape == (4, 512, 512, 3)  # scored at 512x512, as COCO-MIG's scorer does
    assert set(metrics) == {"mig", "leakage"}  # no LayoutSAM judge for COCO-MIG
    assert set(metrics["mig"]) == {"L2", "L3", "all", "avg", "averages"}
    assert metrics["mig"]["all"]["instances"] == 9 and metrics["mig"]["L3"]["images"] == 1
    # one object name per prompt, each distinct name of an image once, in chunks of 3 images
    assert [len(call) for call in asked.asked] == [6, 2]  # names 2 + 1 (cup twice) + 3, then 2
    assert all(len(names) == 1 for call in asked.asked for names in call)

    rows = score_coco_mig(scored, layouts, detector, scorers.segmenter, resize_to=512, separate_queries=True)
    flat = [(layout.level, score) for layout, row in zip(layouts, rows, strict=True) for score in row]
    for key, level in (("all", None), ("L2", 2), ("L3", 3)):
        mine = [s for lv, s in flat if level is None or lv == level]
        assert metrics["mig"][key]["isr"] == pytest.approx(np.mean([s.success for s in mine]))
        assert metrics["mig"][key]["miou"] == pytest.approx(np.mean([s.miou_value for s in mine]))
    for value in (metrics["mig"]["avg"]["isr"], metrics["mig"]["avg"]["miou"], metrics["leakage"]["rate"]):
        assert 0.0 <= value <= 1.0
    assert metrics["mig"]["all"]["miou"] > 0  # detections were kept and overlap the targets

    for image, layout, row in zip(scored, layouts, rows, strict=True):
        for inst, score in zip(layout.instances, row, strict=True):
            best = _naive_position(detector, image, inst.caption, inst.box)
            assert score.detected == (best is not None)
            assert score.iou == pytest.approx(0.0 if best is None else best, abs=1e-6)


def test_separate_queries_map_answers_back_to_instances():
    class NameBoxes:
        """Answers a name with a box that encodes the image and the name."""

        def __init__(self):
            self.asked = []

        def detect(self, images, captions):
            self.asked.append([list(c) for c in captions])
            return [
                [
                    Detections(
                        np.array([[0, 0, (len(q) % 5 + 1) / 10, float(im[0, 0, 0]) / 255]], np.float32),
                        np.array([0.9], np.float32),
                    )
                    for q in queries
                ]
                for im, queries in zip(images, captions, strict=True)
            ]

    class Empty:
        def segment(self, images, boxes):
            return [np.zeros((len(b), *images.shape[1:3]), dtype=bool) for b in boxes]

    layouts = [COCO_LAYOUTS[1], COCO_LAYOUTS[2]]
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    images[0], images[1] = 128, 255
    detector = NameBoxes()
    separate = score_coco_mig(images, layouts, detector, Empty(), separate_queries=True)
    assert detector.asked[-1] == [["cup"], ["kite"], ["bowl"], ["dog"]]
    together = score_coco_mig(images, layouts, NameBoxes(), Empty())  # the detector answers per name
    assert [[s.iou for s in row] for row in separate] == [[s.iou for s in row] for row in together]
    assert len({s.iou for row in separate for s in row}) > 2


def test_coco_mig_score_equals_eval_on_tiny_models(dino_dir, sam_dir, bench_dir, tmp_path):
    scorers = ["--bench-dir", str(bench_dir), "--detector", str(dino_dir), "--segmenter", str(sam_dir)]
    evaluated_dir = tmp_path / "eval"
    args = ["eval", "--benchmark", "coco-mig", "--steps", "1", "--per-level", "1", *scorers]
    assert main([*args, "--out", str(evaluated_dir)]) == 0
    names = sorted(p.name for p in (evaluated_dir / "images").iterdir())
    assert names == ["coco-mig_0.png", "coco-mig_2.png"]  # the first layout of L2 and of L3
    scored_dir = tmp_path / "score"
    images = str(evaluated_dir / "images")
    args = ["score", "--benchmark", "coco-mig", "--images", images, "--per-level", "1", *scorers]
    assert main([*args, "--out", str(scored_dir)]) == 0
    evaluated = json.loads((evaluated_dir / "metrics.json").read_text())
    scored = json.loads((scored_dir / "metrics.json").read_text())
    assert _scores_only(scored) == _scores_only(evaluated) and "sam" not in scored
    assert scored["mig"]["all"]["instances"] == 5
    assert "Per-attribute" not in (scored_dir / "table.md").read_text()


def test_load_scorers_for_coco_mig(dino_dir, sam_dir):
    scorers = load_scorers(check_scorers(BENCHMARKS["coco-mig"], str(dino_dir), str(sam_dir)))
    assert isinstance(scorers.detector, GroundingDinoDetector) and isinstance(scorers.segmenter, SamSegmenter)
    assert scorers.judge is None and load_scorers(check_scorers(BENCHMARKS["shapes-sam"])).judge is not None


# ----------------------------------------------------------------------------- scoring in chunks


def _mismatched_renders(per_level: int) -> tuple[np.ndarray, list[Layout]]:
    """Clean renders each scored against the next layout: colours land in other instances'
    boxes, so leakage is not zero."""
    layouts = select_layouts(BENCHMARKS["shapes-mig"], per_level=per_level)
    return np.roll(render_ground_truth(layouts), 1, axis=0), layouts


def test_merge_leakage_equals_leakage_of_all_images():
    images, layouts = _mismatched_renders(per_level=3)  # 15 layouts, levels 2..6 in index order
    whole = leakage(images, layouts)
    assert whole["leaked"] > 0 and whole["rate"] < 1
    for size in (1, 4, 7, 15):  # chunks that hold one level, several, or all of them
        parts = [leakage(images[s : s + size], layouts[s : s + size]) for s in range(0, 15, size)]
        assert merge_leakage(parts) == whole


def test_scores_do_not_depend_on_the_chunk_size(tmp_path):
    images, layouts = _mismatched_renders(per_level=2)
    scorers = load_scorers(check_scorers(BENCHMARKS["shapes-sam"]))
    whole = score_benchmark(BENCHMARKS["shapes-sam"], images, layouts, scorers, batch_size=len(layouts))
    assert set(whole) == {"mig", "leakage", "sam"} and whole["leakage"]["leaked"] > 0
    for size in (1, 3):
        assert score_benchmark(BENCHMARKS["shapes-sam"], images, layouts, scorers, batch_size=size) == whole
    _save(tmp_path, images, [f"x_{layout.meta['index']}.png" for layout in layouts])
    metrics, read = score_folder(BENCHMARKS["shapes-sam"], tmp_path, layouts, scorers, batch_size=4)
    assert metrics == whole
    assert len(read) == 10 and all(np.array_equal(read[k], images[k]) for k in (0, 9))
    with pytest.raises(ValueError, match="neither a detector nor a judge"):
        score_benchmark(BENCHMARKS["shapes-sam"], images, layouts, Scorers(None, None, None))


def test_a_size_change_in_a_later_chunk_is_named(tmp_path):
    layouts = select_layouts(BENCHMARKS["shapes-mig"], per_level=1)  # indices 0, 160, 320, 480, 640
    sizes = [(32, 32)] * 4 + [(32, 40)]
    _save(tmp_path, [np.zeros((*hw, 3), np.uint8) for hw in sizes], [f"a_{160 * k}.png" for k in range(5)])
    with pytest.raises(ScoringError, match=r"a_640.png: image is 40x32, a_0.png is 32x32"):
        scorers = load_scorers(check_scorers(BENCHMARKS["shapes-mig"]))
        score_folder(BENCHMARKS["shapes-mig"], tmp_path, layouts, scorers, batch_size=2)


def test_scorer_specs_per_benchmark(dino_dir, sam_dir):
    assert check_scorers(BENCHMARKS["shapes-mig"]) == ScorerSpecs("analytic", "analytic", "analytic")
    assert check_scorers(BENCHMARKS["coco-mig"], str(dino_dir), str(sam_dir)) == ScorerSpecs(
        str(dino_dir), str(sam_dir), None
    )
    with pytest.raises(ScoringError, match="give --judge"):
        check_scorers(BENCHMARKS["layoutsam-eval"])
    with pytest.raises(FileNotFoundError, match="--judge nope: unknown judge and no such directory"):
        check_scorers(BENCHMARKS["shapes-sam"], judge="nope")
