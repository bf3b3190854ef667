"""The shapes world: palette, rendering, sampling constraints, captions, splits and benchmarks."""

import itertools

import numpy as np
import pytest
import torch

from idruid.colors import COLOR_NAMES, color_membership, color_passes
from idruid.data import shapes
from idruid.data.shapes import (
    BACKGROUND,
    COLORS,
    SHADES,
    SHAPES,
    TEXTURES,
    Scene,
    ShapesPairedDataset,
    ShapeSpec,
    benchmark_layouts,
    caption_words,
    detailed_caption,
    global_prompt,
    prompt_only_layouts,
    render,
    render_layout_scene,
    sample_scene,
    scene_to_layout,
    shape_mask,
    short_caption,
)
from idruid.layout import Layout

LUMA = np.array([0.299, 0.587, 0.114])


def _members(rgb) -> set[str]:
    inside = color_membership(np.array(rgb, np.uint8))
    return {name for name, flag in zip(COLOR_NAMES, inside, strict=True) if flag}


def test_palette_colours_classify_as_themselves_only():
    assert set(COLORS) == set(COLOR_NAMES) == set(SHADES)
    for name, rgb in COLORS.items():
        assert _members(rgb) == {name}
    assert _members(BACKGROUND) == set()


def test_shades_stay_in_range_where_possible_and_contrast():
    for name in COLOR_NAMES:
        # black's and white's ranges leave no room for contrast: their shades fall in no range
        assert _members(SHADES[name]) == (set() if name in ("black", "white") else {name})
        assert abs(float(np.dot(COLORS[name], LUMA) - np.dot(SHADES[name], LUMA))) >= 50


@pytest.mark.parametrize(("color", "texture"), list(itertools.product(COLOR_NAMES, TEXTURES)))
def test_every_colour_and_texture_passes_coco_mig_colour_check(color, texture):
    for shape in SHAPES:
        spec = ShapeSpec(color, shape, texture, (0.25, 0.25, 0.625, 0.6875))
        image = render(Scene((spec,)))
        assert color_passes(image, shape_mask(spec), color)


def test_textures_are_visible_and_anchored_to_the_pixel_grid():
    box = (0.0, 0.0, 1.0, 1.0)
    for color in COLOR_NAMES:
        striped = render(Scene((ShapeSpec(color, "square", "striped", box),)), 8) @ LUMA
        dotted = render(Scene((ShapeSpec(color, "square", "dotted", box),)), 8) @ LUMA
        solid = render(Scene((ShapeSpec(color, "square", "solid", box),)), 8) @ LUMA
        assert np.ptp(solid) == 0
        assert np.allclose(striped[0::2], striped[0, 0]) and np.allclose(striped[1::2], striped[1, 0])
        assert abs(striped[0, 0] - striped[1, 0]) >= 50
        assert (dotted != dotted[0, 1]).mean() == pytest.approx(0.25)


def test_shapes_fill_their_boxes():
    box = (0.25, 0.25, 0.75, 0.75)  # 16 x 16 px at 32 px
    fills = {s: shape_mask(ShapeSpec("red", s, "solid", box)).sum() / 256 for s in SHAPES}
    assert fills["square"] == 1.0
    assert fills["circle"] == pytest.approx(np.pi / 4, abs=0.05)
    assert fills["triangle"] == pytest.approx(0.5, abs=0.06)
    triangle = shape_mask(ShapeSpec("red", "triangle", "solid", box))
    assert triangle[8].sum() < triangle[23].sum() == 16  # narrow apex row, full base row


def test_render_draws_larger_first_and_uses_background():
    big = ShapeSpec("red", "square", "solid", (0.0, 0.0, 0.5, 0.5))
    small = ShapeSpec("blue", "square", "solid", (0.25, 0.25, 0.375, 0.375))
    for order in ((big, small), (small, big)):
        image = render(Scene(order))
        assert tuple(image[10, 10]) == COLORS["blue"]
        assert tuple(image[2, 2]) == COLORS["red"]
        assert tuple(image[30, 30]) == BACKGROUND
    assert render(Scene(order), 48).shape == (48, 48, 3)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


@pytest.mark.parametrize("num_shapes", [1, 2, 4, 6, 10])
def test_sampled_scenes_respect_the_world_constraints(num_shapes):
    for seed in range(10):
        scene = sample_scene(np.random.default_rng(seed), num_shapes)
        assert len(scene.shapes) == num_shapes
        for spec in scene.shapes:
            x0, y0, x1, y1 = spec.box
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            if num_shapes <= 6:
                assert 0.2 <= x1 - x0 <= 0.45 and 0.2 <= y1 - y0 <= 0.45
            assert 0.75 <= (y1 - y0) / (x1 - x0) <= 1.34
            assert all(v * 32 == round(v * 32) for v in spec.box)  # on the pixel grid
        for a, b in itertools.combinations(scene.shapes, 2):
            assert _iou(a.box, b.box) <= shapes.MAX_PAIR_IOU


def test_boxes_are_the_visible_extent_of_each_shape():
    for seed in range(30):
        scene = sample_scene(np.random.default_rng(seed), 6)
        image = render(scene)
        for spec in scene.shapes:
            own = np.all(image == COLORS[spec.color], axis=-1) | np.all(image == SHADES[spec.color], axis=-1)
            own &= shape_mask(spec)
            rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
            visible = (cols[0] / 32, rows[0] / 32, (cols[-1] + 1) / 32, (rows[-1] + 1) / 32)
            assert visible == pytest.approx(spec.box)


def test_same_seed_same_scene_and_captions_different_seed_differs():
    def make(seed):
        rng = np.random.default_rng(seed)
        scene = sample_scene(rng, 4)
        return render(scene), scene_to_layout(scene, "detailed", rng)

    (image_a, layout_a), (image_b, layout_b), (image_c, layout_c) = make(3), make(3), make(4)
    assert np.array_equal(image_a, image_b) and layout_a == layout_b
    assert not np.array_equal(image_a, image_c) and layout_a != layout_c


def test_captions_in_both_styles():
    spec = ShapeSpec("red", "circle", "striped", (0.1, 0.1, 0.4, 0.4))
    assert short_caption(spec) == "a red circle"
    rng = np.random.default_rng(0)
    detailed = {detailed_caption(spec, rng) for _ in range(200)}
    assert len(detailed) >= 15 and all("red" in c for c in detailed)
    scene = Scene((spec, ShapeSpec("blue", "square", "solid", (0.5, 0.5, 0.9, 0.9))))
    assert global_prompt(scene, "short", rng) == "a photo of a red circle and a blue square"
    assert "red" in global_prompt(scene, "detailed", rng)
    with pytest.raises(ValueError, match="caption style"):
        global_prompt(scene, "medium", rng)


def test_caption_vocabulary_covers_every_generated_word():
    words = caption_words()
    assert shapes.CAPTION_VOCABULARY == sorted(words)
    rng = np.random.default_rng(1)
    for _ in range(300):
        scene = sample_scene(rng, int(rng.integers(1, 7)))
        for style in ("short", "detailed"):
            layout = scene_to_layout(scene, style, rng)
            for text in [layout.prompt, *layout.captions]:
                cleaned = text
                for mark in shapes.CAPTION_PUNCTUATION:
                    cleaned = cleaned.replace(mark, " ")
                assert set(cleaned.split()) <= words, text


def test_scene_to_layout_keeps_boxes_and_scene():
    rng = np.random.default_rng(2)
    scene = sample_scene(rng, 3)
    layout = scene_to_layout(scene, "short", rng, seed=7)
    assert isinstance(layout, Layout) and layout.seed == 7 and layout.meta["scene"] == scene
    assert layout.boxes == [s.box for s in scene.shapes]
    assert layout.captions == [short_caption(s) for s in scene.shapes]


def test_paired_dataset_items():
    dataset = ShapesPairedDataset(size=50, seed=0)
    item = dataset[5]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert torch.equal(item["image"], dataset[5]["image"]) and item["layout"] == dataset[5]["layout"]
    assert not torch.equal(item["image"], dataset[6]["image"])
    assert not torch.equal(item["image"], ShapesPairedDataset(size=50, seed=1)[5]["image"])
    expected = torch.from_numpy(render(item["layout"].meta["scene"])).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(item["image"], expected)
    counts = {len(dataset[i]["layout"].instances) for i in range(50)}
    assert counts <= set(range(1, 7)) and len(counts) >= 4
    with pytest.raises(IndexError):
        dataset[50]


def test_prompt_only_layouts_are_short_and_deterministic():
    layouts = prompt_only_layouts(20, seed=1)
    assert layouts == prompt_only_layouts(20, seed=1) and layouts != prompt_only_layouts(20, seed=2)
    for layout in layouts:
        assert 2 <= layout.level <= 6 and layout.prompt.startswith("a photo of ")
        assert all(len(c.split()) == 3 for c in layout.captions)


def test_splits_never_share_scenes():
    train = {repr(ShapesPairedDataset(size=200, seed=1)[i]["layout"].meta["scene"]) for i in range(200)}
    prompts = {repr(layout.meta["scene"]) for layout in prompt_only_layouts(200, seed=1)}
    mig = {repr(layout.meta["scene"]) for layout in benchmark_layouts("shapes-mig")}
    sam = {repr(layout.meta["scene"]) for layout in benchmark_layouts("shapes-sam")}
    assert not (train & prompts) and not (train & mig) and not (prompts & mig) and not (mig & sam)


@pytest.mark.parametrize(
    ("name", "per_level", "style_words"), [("shapes-mig", 160, 3), ("shapes-sam", 100, None)]
)
def test_benchmarks(name, per_level, style_words):
    layouts = benchmark_layouts(name)
    assert len(layouts) == 5 * per_level
    for level in range(2, 7):
        assert sum(layout.level == level for layout in layouts) == per_level
    for index, layout in enumerate(layouts):
        assert layout.seed == index == layout.meta["index"] and layout.meta["level"] == layout.level
        assert all(0 <= v <= 1 for box in layout.boxes for v in box)
        if style_words:
            assert all(len(c.split()) == style_words for c in layout.captions)
    assert layouts == benchmark_layouts(name)
    assert np.array_equal(render_layout_scene(layouts[0]), render(layouts[0].meta["scene"]))


def test_unknown_benchmark_names_the_known_ones():
    with pytest.raises(ValueError, match="shapes-mig, shapes-sam"):
        benchmark_layouts("coco")
    with pytest.raises(ValueError, match="no 'scene'"):
        render_layout_scene(Layout("a photo", ()))
