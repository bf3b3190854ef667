"""Tests for idruid.report: drawn layouts, grids, metrics JSON and the ISR plot."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from idruid.layout import Instance, Layout
from idruid.report import BOX_PALETTE, DARK, draw_layout, image_grid, plot_isr_by_level, write_metrics

GREY = (128, 128, 128)


def _image(height: int = 32, width: int = 32) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def _layout() -> Layout:
    return Layout(
        "a red apple and a blue cup",
        (Instance("a red apple", (0.0, 0.0, 0.5, 0.5)), Instance("a blue cup", (0.5, 0.5, 1.0, 1.0))),
    )


def test_draw_layout_size_and_box_colours():
    drawn = draw_layout(_image(32, 24), _layout(), scale=4, labels=False)
    assert isinstance(drawn, Image.Image) and drawn.size == (96, 128)
    pixels = np.asarray(drawn)
    # the second box's outline runs along its left edge (x = 48), with dark pixels either side
    assert tuple(pixels[100, 48]) == BOX_PALETTE[1]
    assert tuple(pixels[100, 47]) == DARK and tuple(pixels[100, 49]) == DARK
    assert tuple(pixels[30, 30]) == GREY  # the inside is untouched (nearest upscale)


def test_draw_layout_labels_add_pixels():
    plain = np.asarray(draw_layout(_image(), _layout(), labels=False))
    labelled = np.asarray(draw_layout(_image(), _layout(), labels=True))
    assert (plain != labelled).any()


def test_draw_layout_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        draw_layout(np.zeros((8, 8, 3)), _layout())


def test_image_grid_tiles():
    images = [_image() for _ in range(10)]
    grid = image_grid(images, [_layout()] * 10, ncols=4, scale=2)
    tile = 64
    assert grid.size == (4 * tile + 3 * 2, 3 * tile + 2 * 2)
    # one tile per image: the second box's left edge (tile x = 32) shows in 10 of 12 slots
    pixels = np.asarray(grid)
    edges = [pixels[(k // 4) * (tile + 2) + 50, (k % 4) * (tile + 2) + 32] for k in range(12)]
    assert sum(tuple(c) == BOX_PALETTE[1] for c in edges) == 10


def test_image_grid_titles_and_no_layouts():
    grid = image_grid([_image(), _image()], None, ncols=8, scale=1, titles=["a", "b"])
    assert grid.size == (2 * 32 + 2, 32 + 12)
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        image_grid([_image(), _image()], titles=["a"])


def test_write_metrics_round_trip(tmp_path):
    path = write_metrics(tmp_path / "run", "coco_mig", {"b": np.float32(0.5), "a": {"n": np.int64(3)}})
    assert path == tmp_path / "run" / "coco_mig.json"
    text = path.read_text()
    assert json.loads(text) == {"a": {"n": 3}, "b": 0.5}
    assert text.index('"a"') < text.index('"b"')


def test_plot_isr_by_level_writes_png(tmp_path):
    metrics = {
        "base": {"L2": {"isr": 0.5}, "L3": {"isr": 0.4}, "all": {"isr": 0.45}, "avg": {"isr": 0.45}},
        "ours": {"L2": {"isr": 0.7}, "L3": {"isr": 0.6}, "all": {"isr": 0.65}, "avg": {"isr": 0.65}},
    }
    path = plot_isr_by_level(metrics, tmp_path / "plots" / "isr.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100
