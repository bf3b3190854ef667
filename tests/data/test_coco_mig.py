import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

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


@pytest.fixture(scope="module")
def bench():
    return read_coco_mig(BENCH)


@needs_bench
def test_real_benchmark_counts_levels_and_boxes(bench):
    assert len(bench) == 800
    assert [layout.meta["index"] for layout in bench] == list(range(800))
    assert Counter(layout.meta["level"] for layout in bench) == {2: 160, 3: 160, 4: 160, 5: 160, 6: 160}
    assert all(layout.meta["level"] == len(layout.instances) for layout in bench)
    boxes = np.array([box for layout in bench for box in layout.boxes])  # (n, 4)
    assert boxes.shape == (sum(layout.level for layout in bench), 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


@needs_bench
def test_real_instances_are_the_prompt_phrases(bench):
    """Independent of the YAML: "a photo of A and B and B" names exactly the instance captions."""
    for layout in bench:
        assert layout.prompt.startswith("a photo of ")
        phrases = layout.prompt.removeprefix("a photo of ").split(" and ")
        assert Counter(phrases) == Counter(layout.captions), layout.prompt


@needs_bench
def test_real_prompts_follow_the_prompt_list_and_the_yaml_alone_agrees(bench):
    lines = (BENCH / PROMPTS_FILE).read_text().splitlines()
    assert [layout.prompt for layout in bench] == [line.strip() for line in lines if line.strip()]
    assert read_coco_mig_annotation(BENCH / ANNOTATION_FILE) == bench


@needs_bench
def test_hand_checked_examples(bench):
    # values read by eye from mig_bench_anno.yaml
    first = bench[0]
    assert first.prompt == "a photo of a blue fork and a green carrot and a red carrot and a red carrot"
    assert first.meta == {"index": 0, "level": 4}
    assert first.captions == ["a blue fork", "a green carrot", "a red carrot", "a red carrot"]
    assert first.boxes[0] == (0.72472, 0.008986666666666667, 1.0, 0.5595466666666667)
    assert first.boxes[3] == (0.07587999999999999, 0.36234666666666665, 0.20118, 0.49410666666666664)
    # one phrase, two boxes: two instances
    planes = bench[6]
    assert planes.prompt == "a photo of a black airplane and a black airplane"
    assert planes.captions == ["a black airplane"] * 2 and planes.level == 2
    assert planes.boxes[1] == (0.412890625, 0.38329411764705884, 0.682984375, 0.5439058823529412)


@needs_bench
def test_writer_reproduces_the_official_structure(bench, tmp_path):
    write_coco_mig(bench, tmp_path / "out")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    official = yaml.load((BENCH / ANNOTATION_FILE).read_text(), Loader=loader)
    assert yaml.load((tmp_path / "out" / ANNOTATION_FILE).read_text(), Loader=loader) == official
    assert (tmp_path / "out" / PROMPTS_FILE).read_text().split("\n")[:800] == [
        line.strip() for line in (BENCH / PROMPTS_FILE).read_text().splitlines()
    ]
    again = read_coco_mig(tmp_path / "out")
    assert again == bench
    assert [layout.meta for layout in again] == [layout.meta for layout in bench]


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
