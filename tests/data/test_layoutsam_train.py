import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from idruid.data.layoutsam_train import LayoutSamPairedDataset, center_square
from idruid.data.shapes import ShapesPairedDataset
from idruid.layout import Instance, Layout, LayoutError
from idruid.stage1 import collate

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
Image = pytest.importorskip("PIL.Image")


def _png(path, width, height):
    """A PNG whose red channel is 20 * column and green channel 30 * row, so crops can be checked."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = 20 * np.arange(width)[None, :]
    pixels[..., 1] = 30 * np.arange(height)[:, None]
    pixels[..., 2] = 7
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _row(image_path, boxes, width, height, captions=None):
    captions = captions or [f"d{k}" for k in range(len(boxes))]
    return {
        "global_caption": "a scene",
        "bbox_list": str(boxes),
        "region_captions": [f"s{k}" for k in range(len(boxes))],
        "detail_region_captions": captions,
        "width": width,
        "height": height,
        "image_path": image_path,
    }


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_center_square_by_hand():
    assert center_square(9, 4) == (2, 0, 4)  # (9 - 4) // 2 = 2, floor of 2.5
    assert center_square(4, 7) == (0, 1, 4)  # (7 - 4) // 2 = 1
    assert center_square(5, 5) == (0, 0, 5)


def test_landscape_crop_boxes_and_pixels_by_hand(tmp_path):
    _png(tmp_path / "img" / "a.png", 9, 4)  # crop: columns 2..5, all 4 rows
    boxes = [
        [2, 0, 6, 4],  # exactly the crop -> (0, 0, 1, 1)
        [0, 1, 4, 3],  # (-2, 1, 2, 3) / 4 -> clipped (0, 0.25, 0.5, 0.75)
        [0, 0, 2, 4],  # left of the crop: no area left -> dropped
        [6, 0, 9, 2],  # right of the crop: no area left -> dropped
        [5, 2, 8, 3],  # (3, 2, 6, 3) / 4 -> clipped (0.75, 0.5, 1, 0.75)
    ]
    shard = _write(tmp_path / "a.parquet", [_row("a.png", boxes, 9, 4)])
    item = LayoutSamPairedDataset(shard, tmp_path / "img", resolution=4)[0]
    layout = item["layout"]
    assert layout.captions == ["d0", "d1", "d4"]
    assert layout.boxes == [(0.0, 0.0, 1.0, 1.0), (0.0, 0.25, 0.5, 0.75), (0.75, 0.5, 1.0, 0.75)]
    assert layout.prompt == "a scene"
    assert layout.meta["instances_total"] == 5 and layout.meta["instances_visible"] == 3
    assert layout.meta["crop"] == (2, 0, 4) and layout.meta["image_path"] == "a.png"
    # Same size after the crop, so the resize is the identity: red = 20 * (column + 2).
    red = (20 * np.arange(2, 6, dtype=np.float32)) / 127.5 - 1.0
    green = (30 * np.arange(4, dtype=np.float32)) / 127.5 - 1.0
    assert torch.allclose(item["image"][0], torch.from_numpy(red)[None, :].expand(4, 4), atol=1e-6)
    assert torch.allclose(item["image"][1], torch.from_numpy(green)[:, None].expand(4, 4), atol=1e-6)
    assert torch.allclose(item["image"][2], torch.full((4, 4), 7 / 127.5 - 1.0), atol=1e-6)


def test_portrait_crop_and_resize(tmp_path):
    _png(tmp_path / "b.png", 4, 7)  # crop: rows 1..4
    boxes = [[0, 0, 4, 2], [1, 5, 3, 7], [1, 3, 3, 6]]
    # (0, -1, 4, 1) / 4 -> (0, 0, 1, 0.25); (1, 4, 3, 6) / 4 -> y0 = 1: dropped;
    # (1, 2, 3, 5) / 4 -> (0.25, 0.5, 0.75, 1)
    shard = _write(tmp_path / "b.parquet", [_row("b.png", boxes, 4, 7)])
    item = LayoutSamPairedDataset(shard, tmp_path, resolution=2)[0]
    assert item["layout"].boxes == [(0.0, 0.0, 1.0, 0.25), (0.25, 0.5, 0.75, 1.0)]
    assert item["layout"].captions == ["d0", "d2"]
    assert item["image"].shape == (3, 2, 2)
    # Green grows with the row: the crop starts at row 1, so the top half is darker than 30 * 3.
    assert item["image"][1, 0].max() < item["image"][1, 1].min()


def test_row_boxes_in_a_larger_pixel_frame_follow_the_image(tmp_path):
    """Metadata at 18x8 with the file saved at 9x4: boxes are normalised first, so they still fit."""
    _png(tmp_path / "c.png", 9, 4)
    shard = _write(tmp_path / "c.parquet", [_row("c.png", [[4, 0, 12, 8]], 18, 8)])
    item = LayoutSamPairedDataset(shard, tmp_path, resolution=4)[0]
    assert item["layout"].boxes[0] == pytest.approx((0.0, 0.0, 1.0, 1.0), abs=1e-12)


def test_aspect_mismatch_is_an_error(tmp_path):
    _png(tmp_path / "c.png", 9, 4)
    shard = _write(tmp_path / "c.parquet", [_row("c.png", [[0, 0, 4, 4]], 4, 4)])
    with pytest.raises(LayoutError, match=r"c.parquet: row 0: image .*c.png is 9x4 but the row says 4x4"):
        LayoutSamPairedDataset(shard, tmp_path, resolution=4)[0]


def test_cap_keeps_the_first_ten_visible_instances(tmp_path):
    _png(tmp_path / "m.png", 12, 4)  # crop: columns 4..7
    boxes = [[0, 0, 2, 2], [1, 1, 3, 3]] + [[4, 0, 5 + k % 3, 1 + k % 3] for k in range(11)]
    shard = _write(tmp_path / "m.parquet", [_row("m.png", boxes, 12, 4)])
    layout = LayoutSamPairedDataset(shard, tmp_path, resolution=4)[0]["layout"]
    assert layout.level == 10
    assert layout.captions == [f"d{k}" for k in range(2, 12)]  # the two outside the crop don't count
    assert layout.meta["instances_total"] == 13 and layout.meta["instances_visible"] == 11
    # box 3 = [4, 0, 6, 2] -> (0, 0, 2, 2) / 4
    assert layout.boxes[1] == (0.0, 0.0, 0.5, 0.5)
    short = LayoutSamPairedDataset(shard, tmp_path, resolution=4, captions="short")[0]["layout"]
    assert short.captions == [f"s{k}" for k in range(2, 12)]


def _three_rows(tmp_path):
    _png(tmp_path / "img" / "ok.png", 6, 4)
    rows = [_row(name, [[1, 0, 5, 4]], 6, 4) for name in ("gone0.png", "ok.png", "sub/gone2.png")]
    return _write(tmp_path / "s.parquet", rows)


def test_missing_image_error_names_file_and_row(tmp_path):
    shard = _three_rows(tmp_path)
    dataset = LayoutSamPairedDataset(shard, tmp_path / "img", resolution=4)
    assert len(dataset) == 3 and dataset.skipped == 0
    message = r"s.parquet: row 2: image file .*img/sub/gone2.png not found"
    with pytest.raises(FileNotFoundError, match=message):
        dataset[2]
    assert dataset[1]["layout"].boxes == [(0.0, 0.0, 1.0, 1.0)]  # (1 - 1, 0, 5 - 1, 4) / 4


def test_skip_missing_drops_rows_up_front_and_counts_them(tmp_path):
    shard = _three_rows(tmp_path)
    other = _write(tmp_path / "t.parquet", [_row("ok.png", [[1, 0, 3, 2]], 6, 4)])
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 rows whose image file is missing"):
        dataset = LayoutSamPairedDataset([shard, other], tmp_path / "img", 4, skip_missing=True)
    assert dataset.skipped == 2 and len(dataset) == 2
    assert dataset[0]["layout"].meta["index"] == 1  # global row numbers over all shards
    assert dataset[1]["layout"].meta["index"] == 3
    assert dataset[1]["layout"].boxes == [(0.0, 0.0, 0.5, 0.5)]  # (0, 0, 2, 2) / 4


def test_null_image_path_and_missing_column_are_errors(tmp_path):
    rows = [_row("a.png", [[0, 0, 1, 1]], 4, 4), _row(None, [[0, 0, 1, 1]], 4, 4)]
    shard = _write(tmp_path / "n.parquet", rows)
    with pytest.raises(LayoutError, match=r"n.parquet: row 1: image_path: missing"):
        LayoutSamPairedDataset(shard, tmp_path, 4, skip_missing=True)
    with pytest.raises(LayoutError, match=r"n.parquet: row 1: image_path: missing"):
        LayoutSamPairedDataset(shard, tmp_path, 4)[1]
    row = _row("a.png", [[0, 0, 1, 1]], 4, 4)
    del row["image_path"]
    with pytest.raises(LayoutError, match=r"o.parquet: missing column\(s\) image_path"):
        LayoutSamPairedDataset(_write(tmp_path / "o.parquet", [row]), tmp_path, 4)


def _structure(item: dict) -> tuple:
    layout = item["layout"]
    return (
        sorted(item),
        type(item["image"]),
        item["image"].dtype,
        item["image"].dim(),
        item["image"].shape[0],
        type(layout),
        type(layout.prompt),
        type(layout.instances),
        {type(inst) for inst in layout.instances},
        {type(inst.box) for inst in layout.instances},
        {type(v) for inst in layout.instances for v in inst.box},
        {type(inst.caption) for inst in layout.instances},
    )


def test_item_structure_matches_shapes_and_loads_with_two_workers(tmp_path):
    for k in range(4):
        _png(tmp_path / f"{k}.png", 8 + k, 6)
    rows = [_row(f"{k}.png", [[1, 0, 6, 5], [2, 1, 4, 3]], 8 + k, 6) for k in range(4)]
    dataset = LayoutSamPairedDataset(_write(tmp_path / "w.parquet", rows), tmp_path, resolution=16)
    shapes = ShapesPairedDataset(size=2, resolution=16)[0]
    item = dataset[0]
    assert _structure(item) == _structure(shapes)
    assert item["image"].shape == shapes["image"].shape
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert isinstance(item["layout"], Layout) and isinstance(item["layout"].instances[0], Instance)

    copy = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(copy[3]["image"], dataset[3]["image"])
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(2, 3, 16, 16)] * 2
    seen = [layout.meta["index"] for b in batches for layout in b["layouts"]]
    assert seen == [0, 1, 2, 3]
    assert torch.equal(batches[1]["image"][1], dataset[3]["image"])
    assert batches[1]["layouts"][1] == dataset[3]["layout"]


def test_training_reads_layoutsam_when_the_config_says_so(tmp_path):
    """`idruid train ... data=layoutsam data_path=... image_root=...` trains on the shards; with a
    missing image the run stops naming it unless skip_missing=true, which counts it."""
    from idruid.config import ConfigError, load_config
    from idruid.train import train

    shard = _three_rows(tmp_path)  # rows 0 and 2 name missing images
    base = [f"data_path={shard}", f"image_root={tmp_path / 'img'}", "steps=1", "batch_size=1"]
    with pytest.raises(FileNotFoundError, match="gone0.png"):
        train(load_config("tiny", ["data=layoutsam", *base]), tmp_path / "strict", progress=False)
    with pytest.warns(UserWarning, match="skipped 2 of 3 rows"):
        train(
            load_config("tiny", ["data=layoutsam", "skip_missing=true", *base]),
            tmp_path / "run",
            progress=False,
        )
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    for bad, message in (("data=coco", "data 'coco'"), ("data=layoutsam", "needs data_path")):
        with pytest.raises(ConfigError, match=message):
            train(load_config("tiny", [bad]), tmp_path / "bad", progress=False)
