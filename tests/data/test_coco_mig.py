"""The COCO-MIG reader and writer: on the real benchmark files, on an excerpt of them kept under
tests/fixtures/coco_mig/ (its first EXCERPT layouts, so that a clone checks the real format
too), and on small files written here.

facts.json there holds what the whole benchmark is (``benchmark_facts``: the files' SHA-256, the
counts per level, the box statistics of idruid.data.box_stats); where the real files are present,
the excerpt and the facts are checked to be what they give.
"""

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from idruid.data.box_stats import box_stats
from idruid.data.coco_mig import (
    ANNOTATION_FILE,
    PROMPTS_FILE,
    coco_mig_annotation,
    read_coco_mig,
    read_coco_mig_annotation,
    write_coco_mig,
    write_coco_mig_annotation,
)
from idruid.layout import Instance, Layout, LayoutError

# the real files: $IDRUID_COCO_MIG_DIR, else shared/data/coco-mig beside the checkout
BESIDE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco-mig"
BENCH = Path(os.environ.get("IDRUID_COCO_MIG_DIR", BESIDE_CHECKOUT))
needs_bench = pytest.mark.skipif(not (BENCH / ANNOTATION_FILE).is_file(), reason="COCO-MIG files not present")
# what a clone has of them
EXCERPT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "coco_mig"
FACTS = json.loads((EXCERPT_DIR / "facts.json").read_text())
EXCERPT = 8  # layouts 0-7


def excerpt_files(folder: Path, count: int = EXCERPT) -> dict[str, str]:
    """The real files cut to their first ``count`` layouts: those lines of the prompt list as they
    are, and their entries of the annotation file as PyYAML's safe_dump writes it (it writes the
    whole official file byte for byte, so each entry is the file's own text)."""
    lines = (folder / PROMPTS_FILE).read_text().splitlines(keepends=True)[:count]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    annotation = yaml.load((folder / ANNOTATION_FILE).read_text(), Loader=loader)
    kept = {line.strip() for line in lines}
    return {
        PROMPTS_FILE: "".join(lines),
        ANNOTATION_FILE: yaml.safe_dump({k: v for k, v in annotation.items() if k in kept}),
    }


def benchmark_facts(folder: Path) -> dict:
    """What the whole benchmark is: its files' SHA-256, layouts and instances per level, and the
    box statistics (idruid.data.box_stats, overall and the median size per level), to 6 decimals."""

    def rounded(value):
        return [rounded(v) for v in value] if isinstance(value, list) else round(value, 6)

    layouts = read_coco_mig(folder)
    levels = sorted({layout.level for layout in layouts})
    return {
        "sha256": {
            name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in (PROMPTS_FILE, ANNOTATION_FILE)
        },
        "layouts_per_level": {str(level): sum(x.level == level for x in layouts) for level in levels},
        "box_stats": {k: rounded(v) for k, v in box_stats(layouts).items()},
        "size_median_by_level": {
            str(level): rounded(box_stats([x for x in layouts if x.level == level])["size"][2])
            for level in levels
        },
    }


@pytest.fixture(scope="module", params=["excerpt", "full"])
def bench(request) -> tuple[Path, list[Layout]]:
    """(folder, layouts) of the excerpt under tests/ and of the real files (skipped without them)."""
    if request.param == "full" and not (BENCH / ANNOTATION_FILE).is_file():
        pytest.skip("COCO-MIG files not present")
    folder = EXCERPT_DIR if request.param == "excerpt" else BENCH
    return folder, read_coco_mig(folder)


@needs_bench
def test_the_excerpt_and_the_facts_are_the_real_files():
    assert excerpt_files(BENCH) == {
        name: (EXCERPT_DIR / name).read_text() for name in (PROMPTS_FILE, ANNOTATION_FILE)
    }
    assert benchmark_facts(BENCH) == FACTS


def test_counts_levels_and_boxes(bench):
    folder, layouts = bench
    count = FACTS["box_stats"]["layouts"] if folder == BENCH else EXCERPT
    assert len(layouts) == count and [layout.meta["index"] for layout in layouts] == list(range(count))
    if folder == BENCH:
        assert Counter(str(layout.meta["level"]) for layout in layouts) == FACTS["layouts_per_level"]
    assert all(layout.meta["level"] == len(layout.instances) for layout in layouts)
    boxes = np.array([box for layout in layouts for box in layout.boxes])  # (n, 4)
    assert boxes.shape == (sum(layout.level for layout in layouts), 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def test_the_facts_describe_the_benchmark():
    """160 prompts at each of L2-L6, 3,200 boxes: the benchmark the paper and README score."""
    assert FACTS["layouts_per_level"] == {str(level): 160 for level in range(2, 7)}
    assert FACTS["box_stats"]["layouts"] == 800 and FACTS["box_stats"]["boxes"] == 3200


def test_real_instances_are_the_prompt_phrases(bench):
    """Independent of the YAML: "a photo of A and B and B" names exactly the instance captions."""
    for layout in bench[1]:
        assert layout.prompt.startswith("a photo of ")
        phrases = layout.prompt.removeprefix("a photo of ").split(" and ")
        assert Counter(phrases) == Counter(layout.captions), layout.prompt


def test_real_prompts_follow_the_prompt_list_and_the_yaml_alone_agrees(bench):
    folder, layouts = bench
    lines = (folder / PROMPTS_FILE).read_text().splitlines()
    assert [layout.prompt for layout in layouts] == [line.strip() for line in lines if line.strip()]
    assert read_coco_mig_annotation(folder / ANNOTATION_FILE) == layouts


def test_hand_checked_examples(bench):
    # values read by eye from mig_bench_anno.yaml
    first = bench[1][0]
    assert first.prompt == "a photo of a blue fork and a green carrot and a red carrot and a red carrot"
    assert first.meta == {"index": 0, "level": 4}
    assert first.captions == ["a blue fork", "a green carrot", "a red carrot", "a red carrot"]
    assert first.boxes[0] == (0.72472, 0.008986666666666667, 1.0, 0.5595466666666667)
    assert first.boxes[3] == (0.07587999999999999, 0.36234666666666665, 0.20118, 0.49410666666666664)
    # one phrase, two boxes: two instances
    planes = bench[1][6]
    assert planes.prompt == "a photo of a black airplane and a black airplane"
    assert planes.captions == ["a black airplane"] * 2 and planes.level == 2
    assert planes.boxes[1] == (0.412890625, 0.38329411764705884, 0.682984375, 0.5439058823529412)


def test_writer_reproduces_the_official_structure(bench, tmp_path):
    folder, layouts = bench
    write_coco_mig(layouts, tmp_path / "out")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    official = yaml.load((folder / ANNOTATION_FILE).read_text(), Loader=loader)
    assert yaml.load((tmp_path / "out" / ANNOTATION_FILE).read_text(), Loader=loader) == official
    assert (tmp_path / "out" / PROMPTS_FILE).read_text().split("\n")[: len(layouts)] == [
        line.strip() for line in (folder / PROMPTS_FILE).read_text().splitlines()
    ]
    again = read_coco_mig(tmp_path / "out")
    assert again == layouts
    assert [layout.meta for layout in again] == [layout.meta for layout in layouts]


# ----------------------------------------------------------------------------- small files


def _write(folder: Path, prompts: str, annotation: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROMPTS_FILE).write_text(prompts)
    (folder / ANNOTATION_FILE).write_text(annotation)
    return folder


GOOD_YAML = """\
a photo of a red cat and a red cat:
  a red cat:
  - [0.1, 0.2, 0.3, 0.4]
  - [0.5, 0.5, 0.9, 1.0]
  coco_id: '1'
a photo of a blue dog:
  a blue dog:
  - [0.0, 0.0, 1.0, 1.0]
  coco_id: '0'
"""
GOOD_TXT = "a photo of a red cat and a red cat\na photo of a blue dog\n"


def test_small_files_ordered_by_index(tmp_path):
    layouts = read_coco_mig(_write(tmp_path, GOOD_TXT, GOOD_YAML))
    assert [layout.prompt for layout in layouts] == [
        "a photo of a blue dog",
        "a photo of a red cat and a red cat",
    ]
    assert layouts[1].boxes == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 1.0)]
    assert [layout.meta for layout in layouts] == [{"index": 0, "level": 1}, {"index": 1, "level": 2}]


@pytest.mark.parametrize(
    "prompts, annotation, message",
    [
        (
            GOOD_TXT + "a photo of a green cow\n",
            GOOD_YAML,
            "line 3: prompt 'a photo of a green cow' has no annotation",
        ),
        (
            GOOD_TXT,
            GOOD_YAML.replace("[0.1, 0.2, 0.3, 0.4]", "[0.3, 0.2, 0.1, 0.4]"),
            "(index 1).'a red cat'[0]: x1 must",
        ),
        (
            GOOD_TXT,
            GOOD_YAML.replace("[0.1, 0.2, 0.3, 0.4]", "[0.1, 0.2, 0.3]"),
            "'a red cat'[0]: must be a list of 4",
        ),
        (
            GOOD_TXT,
            GOOD_YAML.replace("[0.0, 0.0, 1.0, 1.0]", "[0.0, 0.0, 1.5, 1.0]"),
            "'a blue dog'[0]: x1=1.5 is outside",
        ),
        (
            GOOD_TXT,
            GOOD_YAML.replace("[0.0, 0.0, 1.0, 1.0]", "[0.0, 0.0, one, 1.0]"),
            "'a blue dog'[0][2]: must be a number",
        ),
        (GOOD_TXT, GOOD_YAML.replace("  coco_id: '0'\n", ""), "'a photo of a blue dog'.coco_id: missing"),
        (
            GOOD_TXT,
            GOOD_YAML.replace("coco_id: '0'", "coco_id: 'zero'"),
            "coco_id: must be a non-negative integer",
        ),
        (GOOD_TXT, GOOD_YAML.replace("coco_id: '0'", "coco_id: '1'"), "coco_id 1 is used by both"),
        (
            GOOD_TXT,
            GOOD_YAML.replace("  - [0.0, 0.0, 1.0, 1.0]\n", ""),
            "'a blue dog': must be a non-empty list of boxes",
        ),
        (GOOD_TXT + "a photo of a blue dog\n", GOOD_YAML, "line 3: prompt repeats line 2"),
        (
            GOOD_TXT,
            GOOD_YAML + "a photo of a blue dog:\n  coco_id: '2'\n",
            "key 'a photo of a blue dog' appears twice",
        ),
        (GOOD_TXT, GOOD_YAML + "  : [\n", "malformed YAML"),
        ("\n\n", GOOD_YAML, "no prompt"),
    ],
)
def test_malformed_inputs_name_the_problem(tmp_path, prompts, annotation, message):
    with pytest.raises(LayoutError) as err:
        read_coco_mig(_write(tmp_path, prompts, annotation))
    assert message in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(LayoutError, match="COCO-MIG folder not found"):
        read_coco_mig(tmp_path / "nowhere")
    (tmp_path / PROMPTS_FILE).write_text(GOOD_TXT)
    with pytest.raises(LayoutError, match=f"{ANNOTATION_FILE}: COCO-MIG annotation file not found"):
        read_coco_mig(tmp_path)
    (tmp_path / PROMPTS_FILE).unlink()
    (tmp_path / ANNOTATION_FILE).write_text(GOOD_YAML)
    with pytest.raises(LayoutError, match=f"{PROMPTS_FILE}: COCO-MIG prompt list not found"):
        read_coco_mig(tmp_path)


def test_writer_groups_equal_captions_and_keeps_first_appearance_order(tmp_path):
    box = (0.1, 0.1, 0.2, 0.2)
    layout = Layout(
        "p", (Instance("b", box), Instance("a", (0.3, 0.3, 0.4, 0.4)), Instance("b", (0.5, 0.5, 0.6, 0.6)))
    )
    annotation = coco_mig_annotation([layout])
    assert list(annotation["p"]) == ["b", "a", "coco_id"]
    assert annotation["p"]["b"] == [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.6, 0.6]]
    assert annotation["p"]["coco_id"] == "0"
    write_coco_mig_annotation([layout], tmp_path / "a.yaml")
    (back,) = read_coco_mig_annotation(tmp_path / "a.yaml")
    assert back.captions == ["b", "b", "a"]  # grouped by phrase
    assert Counter(zip(back.captions, back.boxes, strict=True)) == Counter(
        zip(layout.captions, layout.boxes, strict=True)
    )


def test_writer_uses_own_indices_only_when_all_distinct():
    a = Layout("p", (Instance("x", (0, 0, 1, 1)),), meta={"index": 7})
    b = Layout("q", (Instance("y", (0, 0, 1, 1)),), meta={"index": 3})
    assert [e["coco_id"] for e in coco_mig_annotation([a, b]).values()] == ["7", "3"]
    c = Layout("r", (Instance("z", (0, 0, 1, 1)),), meta={"index": 7})
    assert [e["coco_id"] for e in coco_mig_annotation([a, b, c]).values()] == ["0", "1", "2"]


def test_writer_errors(tmp_path):
    a = Layout("p", (Instance("x", (0, 0, 1, 1)),))
    with pytest.raises(LayoutError, match="layout 1: prompt 'p' appears twice"):
        coco_mig_annotation([a, a])
    with pytest.raises(LayoutError, match="reserved"):
        coco_mig_annotation([Layout("q", (Instance("coco_id", (0, 0, 1, 1)),))])
    with pytest.raises(LayoutError, match="line break"):
        write_coco_mig([Layout("two\nlines", a.instances)], tmp_path / "out")
