import ast
import json

import numpy as np
import pytest
import yaml

from idruid.cli import main
from idruid.convert import FORMATS, ConvertOptions, convert, read_layouts, write_layouts
from idruid.layout import Instance, Layout, LayoutError, load_layouts, save_layouts

LAYOUTS = [
    Layout(
        "a photo of a cat and two dogs",
        (
            Instance("a cat", (0.1, 0.2, 0.45, 0.9)),
            Instance("a dog", (0.5, 0.123456789, 0.987654321, 0.6)),
            Instance("a dog", (0.0, 0.0, 1.0, 1.0)),
        ),
        seed=3,
    ),
    Layout("a red car on a road", (Instance("a red car", (0.25, 0.3, 0.75, 0.7)),)),
]


def _target(tmp_path, fmt, name="out"):
    return tmp_path / (name if fmt == "coco-mig" else f"{name}.jsonl")


def _assert_same(got, want, seeds=True):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.prompt == w.prompt and g.captions == w.captions
        assert g.seed == (w.seed if seeds else None)
        for box_g, box_w in zip(g.boxes, w.boxes, strict=True):
            assert box_g == pytest.approx(box_w, abs=1e-12)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_idruid_to_format_and_back(tmp_path, fmt):
    source = tmp_path / "in.jsonl"
    save_layouts(LAYOUTS, source)
    middle, back = _target(tmp_path, fmt, "middle"), tmp_path / "back.jsonl"
    assert convert(source, middle, "idruid", fmt).layouts == 2
    convert(middle, back, fmt, "idruid")
    _assert_same(load_layouts(back), LAYOUTS, seeds=fmt != "coco-mig")


def test_layoutsam_short_captions_round_trip(tmp_path):
    options = ConvertOptions(captions="short", width=1000, height=700)
    write_layouts(LAYOUTS, tmp_path / "rows.jsonl", "layoutsam", options)
    row = json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[1])
    assert set(row) == {"global_caption", "bbox_list", "region_captions", "width", "height"}
    assert ast.literal_eval(row["bbox_list"]) == [[250, 210, 750, 490]]  # 0.25 * 1000, 0.3 * 700, ...
    _assert_same(read_layouts(tmp_path / "rows.jsonl", "layoutsam", options), LAYOUTS)


# ----------------------------------------------------------------------------- format -> idruid -> format

GLIGEN = {"prompt": "p", "phrases": ["a", "b"], "locations": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 1.0, 1.0]]}
MIGC = {"prompt_list": ["p", "a", "b"], "bboxes": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 1.0, 1.0]]}
INSTANCEDIFFUSION = {
    "caption": "a cup on a table",
    "width": 640,
    "height": 480,
    "annos": [
        {"bbox": [64, 48, 256, 192], "mask": [], "category_name": "", "caption": "a cup"},
        {"bbox": [0, 240, 640, 240], "mask": [], "category_name": "", "caption": "a table"},
    ],
}
LAYOUTSAM = {
    "global_caption": "a cup on a table",
    "bbox_list": "[[64, 48, 320, 240], [0, 240, 640, 480]]",
    "detail_region_captions": ["a small red cup", "a wooden table"],
    "width": 640,
    "height": 480,
}
# the boxes of INSTANCEDIFFUSION and LAYOUTSAM, normalised by hand
CUP_TABLE_BOXES = [(0.1, 0.1, 0.5, 0.5), (0.0, 0.5, 1.0, 1.0)]


@pytest.mark.parametrize(
    "fmt, record",
    [("gligen", GLIGEN), ("migc", MIGC), ("instancediffusion", INSTANCEDIFFUSION), ("layoutsam", LAYOUTSAM)],
)
def test_format_to_idruid_and_back(tmp_path, fmt, record):
    source = tmp_path / "in.json"
    source.write_text(json.dumps(record))
    convert(source, tmp_path / "mid.jsonl", fmt, "idruid")
    (layout,) = load_layouts(tmp_path / "mid.jsonl")
    if fmt in ("instancediffusion", "layoutsam"):
        np.testing.assert_allclose(layout.boxes, CUP_TABLE_BOXES, atol=1e-12)
    # idruid JSON has no image size, so the pixel formats get it back from the flags
    convert(tmp_path / "mid.jsonl", tmp_path / "back.jsonl", "idruid", fmt, ConvertOptions(640, 480))
    assert json.loads((tmp_path / "back.jsonl").read_text()) == record


def test_coco_mig_to_idruid_and_back(tmp_path):
    annotation = {
        "a photo of a red cat and a red cat and a blue dog": {
            "a red cat": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 1.0]],
            "a blue dog": [[0.0, 0.0, 1.0, 1.0]],
            "coco_id": "0",
        }
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(annotation, sort_keys=False))
    convert(tmp_path / "a.yaml", tmp_path / "mid.jsonl", "coco-mig", "idruid")
    assert load_layouts(tmp_path / "mid.jsonl")[0].captions == ["a red cat", "a red cat", "a blue dog"]
    convert(tmp_path / "mid.jsonl", tmp_path / "back.yaml", "idruid", "coco-mig")
    assert yaml.safe_load((tmp_path / "back.yaml").read_text()) == annotation
    convert(tmp_path / "mid.jsonl", tmp_path / "bench", "idruid", "coco-mig")
    assert (tmp_path / "bench" / "mig_bench.txt").read_text() == f"{next(iter(annotation))}\n"


def test_pixel_sizes_come_from_the_file_unless_flags_override(tmp_path):
    (tmp_path / "id.json").write_text(json.dumps(INSTANCEDIFFUSION))
    convert(tmp_path / "id.json", tmp_path / "rows.jsonl", "instancediffusion", "layoutsam")
    row = json.loads((tmp_path / "rows.jsonl").read_text())
    assert (row["width"], row["height"]) == (640, 480)
    assert ast.literal_eval(row["bbox_list"]) == [[64, 48, 320, 240], [0, 240, 640, 480]]  # x + w, y + h
    convert(
        tmp_path / "id.json",
        tmp_path / "rows.jsonl",
        "instancediffusion",
        "layoutsam",
        ConvertOptions(64, 48),
    )
    row = json.loads((tmp_path / "rows.jsonl").read_text())
    np.testing.assert_allclose(
        ast.literal_eval(row["bbox_list"]), [[6.4, 4.8, 32, 24], [0, 24, 64, 48]], atol=1e-12
    )


def test_default_size_is_512(tmp_path):
    (tmp_path / "g.json").write_text(
        json.dumps({**GLIGEN, "locations": [[0.25, 0.5, 0.75, 1.0], [0, 0, 1, 1]]})
    )
    convert(tmp_path / "g.json", tmp_path / "id.jsonl", "gligen", "instancediffusion")
    out = json.loads((tmp_path / "id.jsonl").read_text())
    assert (out["width"], out["height"]) == (512, 512)
    assert [a["bbox"] for a in out["annos"]] == [[128, 256, 256, 256], [0, 0, 512, 512]]


def test_list_input_and_truncation_to_ten_instances(tmp_path):
    many = {"prompt": "q", "phrases": [f"p{k}" for k in range(12)], "locations": [[0, 0, 1, 1]] * 12}
    (tmp_path / "g.json").write_text(json.dumps([GLIGEN, many]))
    result = convert(tmp_path / "g.json", tmp_path / "out.jsonl", "gligen", "migc")
    assert (result.layouts, result.truncated) == (2, 1)
    second = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[1])
    assert second["prompt_list"] == ["q", *(f"p{k}" for k in range(10))] and len(second["bboxes"]) == 10


def test_clip_option_cuts_boxes_that_leave_the_image(tmp_path):
    record = {**INSTANCEDIFFUSION, "annos": [{"bbox": [0, 228, 763, 125], "caption": "a counter"}]}
    (tmp_path / "id.json").write_text(json.dumps(record))
    with pytest.raises(
        LayoutError, match=r"annos\[0\]\.bbox: box \[0, 228, 763, 125\] lies outside the 640x480"
    ):
        read_layouts(tmp_path / "id.json", "instancediffusion")
    (layout,) = read_layouts(tmp_path / "id.json", "instancediffusion", ConvertOptions(clip=True))
    assert layout.boxes[0] == pytest.approx((0.0, 228 / 480, 1.0, 353 / 480))


def test_layoutsam_parquet_input(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist([LAYOUTSAM]), tmp_path / "shard.parquet")
    convert(tmp_path / "shard.parquet", tmp_path / "g.jsonl", "layoutsam", "gligen")
    out = json.loads((tmp_path / "g.jsonl").read_text())
    assert out["phrases"] == LAYOUTSAM["detail_region_captions"]
    np.testing.assert_allclose(out["locations"], CUP_TABLE_BOXES, atol=1e-12)


# ----------------------------------------------------------------------------- bad input


def _lines(*records) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


@pytest.mark.parametrize(
    "fmt, text, message",
    [
        (
            "gligen",
            _lines(GLIGEN, {**GLIGEN, "locations": [[0.1, 0.2, 0.3, 0.4], [0.9, 0.5, 0.5, 1.0]]}),
            r"line 2: locations\[1\]: x1 must be greater than x0",
        ),
        ("gligen", _lines(GLIGEN, {**GLIGEN, "phrases": ["a"]}), "line 2: 1 phrases but 2 locations"),
        (
            "gligen",
            _lines(GLIGEN, {**GLIGEN, "phrases": ["a", ""]}),
            r"line 2: phrases\[1\]: must be a non-empty",
        ),
        ("gligen", _lines(GLIGEN, {**GLIGEN, "seed": -1}), "line 2: seed: must be a non-negative integer"),
        ("gligen", _lines(GLIGEN, GLIGEN, "{oops"), "line 3: malformed JSON"),
        ("gligen", _lines(GLIGEN, [1, 2]), "line 2: must be a JSON object"),
        (
            "migc",
            _lines(MIGC, {**MIGC, "prompt_list": ["p", "a"]}),
            "line 2: prompt_list holds 2 entries for 2",
        ),
        (
            "migc",
            _lines({**MIGC, "bboxes": [[0.1, "x", 0.3, 0.4], [0, 0, 1, 1]]}, MIGC),
            r"line 1: bboxes\[0\]\[1\]",
        ),
        ("migc", _lines(MIGC, {"prompt_list": ["p"]}), "line 2: bboxes: missing"),
        (
            "instancediffusion",
            _lines(INSTANCEDIFFUSION, {**INSTANCEDIFFUSION, "width": 400}),
            r"line 2: annos\[1\]\.bbox: box \[0, 240, 640, 240\] lies outside the 400x480 image",
        ),
        (
            "instancediffusion",
            _lines(INSTANCEDIFFUSION, {**INSTANCEDIFFUSION, "annos": [{"bbox": [1, 2, 3], "caption": "c"}]}),
            r"line 2: annos\[0\]\.bbox: must be \[x, y, w, h\]",
        ),
        (
            "instancediffusion",
            _lines(
                INSTANCEDIFFUSION, {**INSTANCEDIFFUSION, "annos": [{"bbox": [1, 2, 0, 3], "caption": "c"}]}
            ),
            r"line 2: annos\[0\]\.bbox: box \[1, 2, 0, 3\] has no area",
        ),
        (
            "instancediffusion",
            _lines({k: v for k, v in INSTANCEDIFFUSION.items() if k != "height"}),
            "height: must",
        ),
        (
            "layoutsam",
            _lines(LAYOUTSAM, {**LAYOUTSAM, "bbox_list": "[[64, 48, 64, 240], [0, 240, 640, 480]]"}),
            r"line 2: bbox_list\[0\]: box \[64.0, 48.0, 64.0, 240.0\] has no area",
        ),
        (
            "layoutsam",
            _lines(LAYOUTSAM, {**LAYOUTSAM, "bbox_list": "[[1, 2"}),
            "line 2: bbox_list: cannot parse",
        ),
        (
            "layoutsam",
            _lines({**LAYOUTSAM, "detail_region_captions": ["x"]}),
            "2 boxes in bbox_list but 1 detail",
        ),
        ("idruid", _lines({"prompt": "p", "instances": []}), "instances: must hold at least 1 instance"),
    ],
)
def test_bad_records_name_the_line_and_field(tmp_path, fmt, text, message):
    (tmp_path / "in.jsonl").write_text(text)
    with pytest.raises(LayoutError, match=message):
        convert(tmp_path / "in.jsonl", tmp_path / "out.jsonl", fmt, "idruid")
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_files_and_formats(tmp_path):
    with pytest.raises(LayoutError, match="missing.json: file not found"):
        read_layouts(tmp_path / "missing.json", "gligen")
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(LayoutError, match="empty file"):
        read_layouts(tmp_path / "empty.json", "migc")
    (tmp_path / "g.json").write_text(json.dumps(GLIGEN))
    with pytest.raises(LayoutError, match="unknown layout format 'yolo'"):
        convert(tmp_path / "g.json", tmp_path / "out", "gligen", "yolo")
    with pytest.raises(LayoutError, match="no layout to write"):
        write_layouts([], tmp_path / "out.jsonl", "gligen")


# ----------------------------------------------------------------------------- command line


def test_cli_convert(tmp_path, capsys):
    (tmp_path / "g.jsonl").write_text(_lines(GLIGEN, MIGC))
    assert main(["convert", "--from", "gligen", "--to", "idruid", str(tmp_path / "g.jsonl"), "x.jsonl"]) == 2
    assert "idruid: error: " in capsys.readouterr().err  # line 2 is MIGC, not GLIGEN
    (tmp_path / "g.jsonl").write_text(_lines(GLIGEN))
    out = tmp_path / "id.json"
    argv = ["convert", "--from", "gligen", "--to", "instancediffusion", str(tmp_path / "g.jsonl"), str(out)]
    assert main([*argv, "--width", "100", "--height", "50"]) == 0
    assert "wrote 1 layout(s) as instancediffusion" in capsys.readouterr().out
    assert json.loads(out.read_text())["annos"][0]["bbox"] == [
        10,
        10,
        20,
        10,
    ]  # [0.1, 0.2, 0.3, 0.4] at 100x50
    assert main([*argv, "--width", "0"]) == 2
    assert "--width: must be a positive number" in capsys.readouterr().err
