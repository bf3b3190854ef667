import pytest

from idruid.data.layoutsam import (
    iter_layoutsam,
    layout_from_row,
    layoutsam_row,
    read_layoutsam,
)
from idruid.layout import Instance, Layout, LayoutError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _row(boxes, short, detailed, width=640, height=480, **extra):
    return {
        "global_caption": "a kitchen",
        "bbox_list": str(boxes),
        "region_captions": short,
        "detail_region_captions": detailed,
        "width": width,
        "height": height,
        **extra,
    }


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


ROW = _row(
    [[64, 48, 320, 240], [0, 0, 640, 480]],
    ["a cup", "a table"],
    ["a small red cup with a handle", "a long wooden table"],
)


def test_normalisation_by_hand_and_caption_choice(tmp_path):
    path = _write(tmp_path / "a.parquet", [ROW])
    (detailed,) = read_layoutsam(path).layouts
    # 64 / 640 = 0.1, 48 / 480 = 0.1, 320 / 640 = 0.5, 240 / 480 = 0.5
    assert detailed.boxes[0] == pytest.approx((0.1, 0.1, 0.5, 0.5), abs=1e-12)
    assert detailed.boxes[1] == (0.0, 0.0, 1.0, 1.0)
    assert detailed.prompt == "a kitchen"
    assert detailed.captions == ["a small red cup with a handle", "a long wooden table"]
    # the short captions ride along: LayoutSAM-eval's judge names each box's subject by them
    assert detailed.meta == {
        "width": 640,
        "height": 480,
        "instances_total": 2,
        "index": 0,
        "short_captions": ["a cup", "a table"],
    }
    (short,) = read_layoutsam(path, captions="short").layouts
    assert short.captions == ["a cup", "a table"] and short.boxes == detailed.boxes
    assert "short_captions" not in short.meta


def test_captions_stored_as_strings_like_the_eval_set(tmp_path):
    row = {**ROW, "region_captions": str(ROW["region_captions"]), "detail_region_captions": '["x", "y"]'}
    (layout,) = read_layoutsam(_write(tmp_path / "a.parquet", [row])).layouts
    assert layout.captions == ["x", "y"]
    (layout,) = read_layoutsam(tmp_path / "a.parquet", captions="short").layouts
    assert layout.captions == ["a cup", "a table"]


def test_short_captions_of_another_count_are_an_error(tmp_path):
    row = {**ROW, "region_captions": ["a cup"]}
    with pytest.raises(LayoutError, match=r"row 0: region_captions: must be a list of 2 strings"):
        read_layoutsam(_write(tmp_path / "a.parquet", [row]))
    without = {k: v for k, v in ROW.items() if k != "region_captions"}
    (layout,) = read_layoutsam(_write(tmp_path / "b.parquet", [without])).layouts
    assert "short_captions" not in layout.meta  # the judge then names subjects by the captions


def test_float_noise_is_clipped_but_a_box_outside_is_an_error(tmp_path):
    noisy = _row([[-1e-5, 0, 640.0001, 480]], ["a"], ["a"])  # 1.6e-8 and 1.6e-7 past the edges
    (layout,) = read_layoutsam(_write(tmp_path / "a.parquet", [noisy])).layouts
    assert layout.boxes == [(0.0, 0.0, 1.0, 1.0)]
    outside = _row([[0, 0, 650, 480]], ["a"], ["a"])
    with pytest.raises(
        LayoutError, match=r"b.parquet: row 1: bbox_list\[0\]: box .* outside the 640x480 image"
    ):
        read_layoutsam(_write(tmp_path / "b.parquet", [ROW, outside]))
    (clipped,) = read_layoutsam(_write(tmp_path / "c.parquet", [outside]), clip=True).layouts
    assert clipped.boxes == [(0.0, 0.0, 1.0, 1.0)]


def test_ten_instance_cap_keeps_the_first_and_counts_rows(tmp_path):
    boxes = [[k, k, k + 10, k + 10] for k in range(12)]
    many = _row(boxes, [f"s{k}" for k in range(12)], [f"d{k}" for k in range(12)])
    data = read_layoutsam(_write(tmp_path / "a.parquet", [ROW, many, many]))
    assert data.truncated == 2 and len(data.layouts) == 3
    kept = data.layouts[1]
    assert kept.level == 10 and kept.captions == [f"d{k}" for k in range(10)]
    assert kept.meta["short_captions"] == [f"s{k}" for k in range(10)]
    assert kept.boxes[9] == pytest.approx((9 / 640, 9 / 480, 19 / 640, 19 / 480))
    assert kept.meta["instances_total"] == 12
    assert read_layoutsam(tmp_path / "a.parquet", max_instances=1).truncated == 3


def test_shards_of_a_folder_in_order_with_image_fields(tmp_path):
    _write(tmp_path / "part-1.parquet", [{**ROW, "image_path": "img/b.jpg", "global_caption": "b"}])
    _write(tmp_path / "part-0.parquet", [{**ROW, "image_path": "img/a.jpg", "image": b"\x89PNG"}] * 2)
    layouts = list(iter_layoutsam(tmp_path, batch_size=1))
    assert [layout.meta["index"] for layout in layouts] == [0, 1, 2]
    assert [layout.meta["image_path"] for layout in layouts] == ["img/a.jpg", "img/a.jpg", "img/b.jpg"]
    assert read_layoutsam(tmp_path, limit=2).layouts == layouts[:2]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bbox_list": "[[64, 48, 320, 240], [0, 0, 640"}, "row 1: bbox_list: cannot parse"),
        ({"bbox_list": "[[64, 48, 320], [0, 0, 640, 480]]"}, "row 1: bbox_list: must be a list of"),
        ({"bbox_list": "[]"}, "row 1: bbox_list: must be a non-empty list"),
        (
            {"detail_region_captions": ["only one"]},
            "row 1: 2 boxes in bbox_list but 1 detail_region_captions",
        ),
        (
            {"bbox_list": "[[64, 48, 64, 240], [0, 0, 640, 480]]"},
            r"row 1: bbox_list\[0\]: box .* has no area",
        ),
        (
            {"bbox_list": "[[64, 48, 320, 240], [0, 300, 640, 200]]"},
            r"row 1: bbox_list\[1\]: box .* has no area",
        ),
        ({"detail_region_captions": ["a", " "]}, r"row 1: detail_region_captions\[1\]: must be a non-empty"),
        ({"width": 0}, "row 1: width: must be a positive number"),
        ({"global_caption": ""}, "row 1: global_caption: must be a non-empty string"),
    ],
)
def test_malformed_rows_name_the_row_and_field(tmp_path, change, message):
    path = _write(tmp_path / "a.parquet", [ROW, {**ROW, **change}])
    with pytest.raises(LayoutError, match=message):
        read_layoutsam(path)


def test_missing_column_file_and_unknown_caption_style(tmp_path):
    path = _write(tmp_path / "a.parquet", [{k: v for k, v in ROW.items() if k != "detail_region_captions"}])
    with pytest.raises(LayoutError, match="missing column\\(s\\) detail_region_captions"):
        read_layoutsam(path)
    assert read_layoutsam(path, captions="short").layouts[0].captions == ["a cup", "a table"]
    with pytest.raises(LayoutError, match="not found"):
        read_layoutsam(tmp_path / "none.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="empty: no \\*.parquet file"):
        read_layoutsam(tmp_path / "empty")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(LayoutError, match="bad.parquet: not a readable parquet file"):
        read_layoutsam(tmp_path / "bad.parquet")
    with pytest.raises(LayoutError, match="captions must be one of detailed, short"):
        read_layoutsam(path, captions="long")


def test_row_writer_round_trips_through_the_reader():
    layout = Layout(
        "a street",
        (Instance("a bus", (0.1, 0.25, 0.6, 0.75)), Instance("a dog", (0.123456789, 0.2, 0.3, 0.9))),
        seed=4,
    )
    row = layoutsam_row(layout, 800, 600, captions="short")
    assert row["bbox_list"].startswith("[[80, 150, 480, 450], [98.7654312")  # 0.123456789 * 800
    assert row["region_captions"] == ["a bus", "a dog"] and "detail_region_captions" not in row
    back = layout_from_row(row, "row", captions="short")
    assert back.prompt == layout.prompt and back.captions == layout.captions and back.seed == 4
    for got, want in zip(back.boxes, layout.boxes, strict=True):
        assert got == pytest.approx(want, abs=1e-12)
