"""The shapes world's box geometries: the laws they draw from, the scenes they make (every box the
visible extent of its shape, shapes of one colour apart), the narrow geometry unchanged, and the
COCO-MIG geometry against the real benchmark's measured boxes."""

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

from idruid.data.box_stats import box_classes, box_stats
from idruid.data.shapes import (
    COLORS,
    SHADES,
    ShapesPairedDataset,
    benchmark_layouts,
    prompt_only_layouts,
    render,
    sample_scene,
    scene_to_layout,
    shape_mask,
)
from idruid.data.shapes.geometry import (
    COCO_MIG_FACTS,
    GEOMETRIES,
    MIN_SIDE,
    SCORED_SAME_COLOR_GAP,
    TRAINING_SAME_COLOR_GAP,
    LogNormal,
    LogQuantiles,
    LogUniform,
    SymmetricAspect,
    get_geometry,
)
from idruid.layout import Instance, Layout

COCO_MIG_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco-mig"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# ----------------------------------------------------------------------------- laws


def _draws(law, count=20_000, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([law.draw(rng) for _ in range(count)])


def test_log_uniform_has_uniform_logs():
    values = _draws(LogUniform(0.125, 0.9))
    assert values.min() >= 0.125 and values.max() <= 0.9
    uniform = (np.log(values) - math.log(0.125)) / (math.log(0.9) - math.log(0.125))
    assert stats.kstest(uniform, "uniform").pvalue > 0.01


def test_truncated_log_normal_matches_scipy():
    law = LogNormal(1.09, 0.5, lo=0.25, hi=4.0)
    values = _draws(law)
    mu = math.log(1.09)
    a, b = (math.log(0.25) - mu) / 0.5, (math.log(4.0) - mu) / 0.5
    reference = stats.truncnorm(a, b, loc=mu, scale=0.5)
    assert stats.kstest(np.log(values), reference.cdf).pvalue > 0.01
    assert values.min() >= 0.25 and values.max() <= 4.0


def test_log_quantiles_meet_their_points():
    points = ((0.0, 0.1), (0.25, 0.2), (0.5, 0.3), (0.9, 0.6), (1.0, 1.0))
    values = _draws(LogQuantiles(points, scale=2.0), count=40_000)
    for prob, value in points[1:-1]:
        assert np.quantile(values, prob) == pytest.approx(2.0 * value, rel=0.02)
    assert values.min() >= 0.2 and values.max() <= 2.0


def test_symmetric_aspect_is_symmetric_in_log():
    values = np.log(_draws(SymmetricAspect(LogUniform(2.5, 4.0))))
    assert (np.abs(values) >= math.log(2.5) - 1e-12).all() and (np.abs(values) <= math.log(4.0) + 1e-12).all()
    assert abs((values > 0).mean() - 0.5) < 0.02


def test_unknown_geometry_names_the_known_ones():
    with pytest.raises(ValueError, match="open, coco, narrow, strips"):
        get_geometry("square")


# ----------------------------------------------------------------------------- scenes


def _visible_extent(image: np.ndarray, spec) -> tuple[float, ...] | None:
    """The normalised bounding box of the pixels of ``spec``'s colour inside its own silhouette,
    read off the rendered image (an independent reading of what is visible of the shape)."""
    own = np.all(image == COLORS[spec.color], axis=-1) | np.all(image == SHADES[spec.color], axis=-1)
    own &= shape_mask(spec, image.shape[0])
    if not own.any():
        return None
    rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
    side = image.shape[0]
    return (cols[0] / side, rows[0] / side, (cols[-1] + 1) / side, (rows[-1] + 1) / side)


def _chebyshev_gap(a: np.ndarray, b: np.ndarray) -> int:
    """Background pixels between two pixel sets along the worse axis: min Chebyshev distance - 1,
    by brute force over the pixel pairs."""
    pa, pb = np.argwhere(a), np.argwhere(b)
    return int(np.abs(pa[:, None, :] - pb[None, :, :]).max(axis=-1).min()) - 1


@pytest.mark.parametrize(
    ("geometry", "gap"), [("coco", SCORED_SAME_COLOR_GAP), ("open", TRAINING_SAME_COLOR_GAP)]
)
def test_every_box_is_the_visible_extent_and_one_colour_keeps_its_gap(geometry, gap):
    overlapping = 0
    for seed, count in itertools.product(range(25), (2, 4, 6)):
        scene = sample_scene(
            np.random.default_rng([seed, count]), count, geometry=geometry, same_color_gap=gap
        )
        image = render(scene)
        assert len(scene.shapes) == count
        for spec in scene.shapes:
            assert _visible_extent(image, spec) == pytest.approx(spec.box)
            width, height = (spec.box[2] - spec.box[0]) * 32, (spec.box[3] - spec.box[1]) * 32
            assert min(width, height) >= MIN_SIDE and all(v * 32 == round(v * 32) for v in spec.box)
        for a, b in itertools.combinations(scene.shapes, 2):
            overlapping += (
                a.box[0] < b.box[2] and b.box[0] < a.box[2] and a.box[1] < b.box[3] and b.box[1] < a.box[3]
            )
            if a.color == b.color:
                assert _chebyshev_gap(shape_mask(a), shape_mask(b)) >= gap
    assert overlapping > 20  # boxes do overlap in these geometries


def test_each_visible_shape_is_one_piece():
    for seed in range(40):
        scene = sample_scene(np.random.default_rng(seed), 6, geometry="coco")
        image = render(scene)
        for spec in scene.shapes:
            own = np.all(image == COLORS[spec.color], axis=-1) | np.all(image == SHADES[spec.color], axis=-1)
            own &= shape_mask(spec)
            assert ndimage.label(own, structure=np.ones((3, 3)))[1] == 1


def test_strips_are_long_and_thin():
    for seed in range(20):
        for spec in sample_scene(np.random.default_rng(seed), 4, geometry="strips").shapes:
            width, height = spec.box[2] - spec.box[0], spec.box[3] - spec.box[1]
            assert max(width / height, height / width) >= 1.75  # 2.5 drawn, then rounded (odd triangles)


def _digest(layouts) -> str:
    h = hashlib.sha256()
    for layout in layouts:
        h.update(json.dumps([layout.prompt, layout.captions, layout.boxes]).encode())
    return h.hexdigest()[:16]


def test_the_narrow_geometry_is_the_worlds_first_draw_for_draw():
    # digests of the layouts that idruid at f1e9109 (before the geometries) made as shapes-mig,
    # shapes-sam and its first 64 prompt-only layouts: the -narrow splits keep every number of
    # the earlier README comparable
    assert _digest(benchmark_layouts("shapes-mig-narrow")) == "37a877fa53d8754c"
    assert _digest(benchmark_layouts("shapes-sam-narrow")) == "55cafe0fd5bb4988"
    assert _digest(prompt_only_layouts(64, seed=1, geometry="narrow")) == "0604ea307baa8a67"


def test_paired_dataset_uses_its_geometry():
    narrow = ShapesPairedDataset(size=100, geometry="narrow")
    wide = ShapesPairedDataset(size=100)
    aspects = [
        (b[3] - b[1]) / (b[2] - b[0]) for ds in (wide,) for i in range(100) for b in ds[i]["layout"].boxes
    ]
    assert min(aspects) < 0.6 and max(aspects) > 1.7  # open: every aspect
    for i in range(100):
        for b in narrow[i]["layout"].boxes:
            assert 0.74 <= (b[3] - b[1]) / (b[2] - b[0]) <= 1.34
    with pytest.raises(ValueError, match="unknown geometry"):
        ShapesPairedDataset(geometry="round")


def test_prompt_only_sets_of_two_geometries_differ_and_avoid_the_benchmark():
    coco = prompt_only_layouts(200, seed=1)
    assert coco != prompt_only_layouts(200, seed=1, geometry="narrow")
    benchmark = {repr(layout.meta["scene"]) for layout in benchmark_layouts("shapes-mig")}
    assert not benchmark & {repr(layout.meta["scene"]) for layout in coco}


# ----------------------------------------------------------------------------- box statistics


def test_box_stats_hand_worked():
    layout = Layout(
        "a photo",
        (
            Instance("a red circle", (0.0, 0.0, 0.5, 0.5)),  # 0.5 x 0.5, touches the border
            Instance("a red square", (0.1, 0.1, 0.3, 0.5)),  # inside the first: nested
            Instance("a blue square", (0.6, 0.6, 0.8, 0.7)),  # alone, wide
        ),
    )
    stats_ = box_stats([layout])
    assert stats_["boxes"] == 3
    assert stats_["aspect"][2] == pytest.approx(1.0)  # aspects 1, 2, 0.5
    assert stats_["aspect_out"] == pytest.approx(2 / 3)
    assert stats_["size"][2] == pytest.approx(math.sqrt(0.2 * 0.4))
    assert stats_["pairs_intersecting"] == pytest.approx(1 / 3)
    assert stats_["pairs_iou_over_0.15"] == pytest.approx(1 / 3)  # 0.08 / 0.25 = 0.32
    assert stats_["covered_over_0.9"] == pytest.approx(1 / 3)  # the nested square
    assert stats_["covered_over_0.3"] == pytest.approx(2 / 3)  # and the circle, 32% covered
    assert stats_["same_color_pairs"] == pytest.approx(1 / 3) and stats_["same_color_intersecting"] == 1.0
    assert stats_["touch_border"] == pytest.approx(1 / 3)
    assert stats_["smallest_side"] == pytest.approx(0.1)


def test_box_classes_hand_worked():
    """At 32 pixels: the circle's short side is 16 px, the red square's 6.4, the blue box's 3.2 and
    the green one's 4.0 (the smallest class holds every side below 6); the red square is nested,
    the circle 32% covered; the green box (1.6:1) is in neither elongation class."""
    layout = Layout(
        "a photo",
        (
            Instance("a red circle", (0.0, 0.0, 0.5, 0.5)),
            Instance("a red square", (0.1, 0.1, 0.3, 0.5)),
            Instance("a blue square", (0.6, 0.6, 0.8, 0.7)),
            Instance("a green square", (0.0, 0.875, 0.2, 1.0)),  # 4.0 px high: short side 4-5
        ),
    )
    classes = box_classes([layout], resolution=32)
    expected = {
        "short side 4-5 px": [False, False, True, True],
        "short side 6-9 px": [False, True, False, False],
        "short side 10+ px": [True, False, False, False],
        "elongation < 1.5": [True, False, False, False],
        "elongation >= 2": [False, True, True, False],
        "nested (> 90% covered)": [False, True, False, False],
        "overlapped (10-90%)": [True, False, False, False],
        "free (<= 10%)": [False, False, True, True],
    }
    assert {name: mask.tolist() for name, mask in classes.items()} == expected


def _coco_like(count_per_level: int = 160) -> list[Layout]:
    layouts = []
    for level in range(2, 7):
        for index in range(count_per_level):
            rng = np.random.default_rng([11, level, index])
            layouts.append(scene_to_layout(sample_scene(rng, level, geometry="coco"), "short", rng))
    return layouts


def test_the_coco_geometry_has_the_real_sizes_and_aspects():
    measured = box_stats(_coco_like())
    for ours, real in zip(measured["size"], COCO_MIG_FACTS["size_percentiles"], strict=True):
        assert ours == pytest.approx(real, rel=0.15)
    for ours, real in zip(measured["aspect"][:4], COCO_MIG_FACTS["aspect_percentiles"][:4], strict=True):
        assert ours == pytest.approx(real, rel=0.15)
    assert 0.4 <= measured["covered_over_0.3"] <= 0.6  # real: 0.50
    assert measured["covered_over_0.9"] >= 0.15  # real: 0.24 (nested boxes)


def test_coco_mig_facts_are_the_measured_ones():
    """COCO_MIG_FACTS against the box statistics of the real files kept in tests/fixtures
    (test_coco_mig.py checks them against the files where those are present)."""
    measured = json.loads((FIXTURES / "coco_mig" / "facts.json").read_text())
    real = measured["box_stats"]
    assert real["aspect"] == pytest.approx(COCO_MIG_FACTS["aspect_percentiles"], abs=0.006)
    assert real["size"] == pytest.approx(COCO_MIG_FACTS["size_percentiles"], abs=0.001)
    assert real["smallest_side"] == pytest.approx(COCO_MIG_FACTS["smallest_side"], abs=0.001)
    by_level = [measured["size_median_by_level"][str(level)] for level in range(2, 7)]
    assert by_level == pytest.approx(COCO_MIG_FACTS["size_median_by_level"], abs=0.001)


@pytest.mark.skipif(not COCO_MIG_DIR.is_dir(), reason="the real COCO-MIG files are not in this checkout")
def test_coco_mig_facts_are_the_real_files():
    from idruid.data.coco_mig import read_coco_mig

    real = box_stats(read_coco_mig(COCO_MIG_DIR))
    assert real["aspect"] == pytest.approx(COCO_MIG_FACTS["aspect_percentiles"], abs=0.006)
    assert real["size"] == pytest.approx(COCO_MIG_FACTS["size_percentiles"], abs=0.001)
    assert real["smallest_side"] == pytest.approx(COCO_MIG_FACTS["smallest_side"], abs=0.001)
    for level, median in zip(range(2, 7), COCO_MIG_FACTS["size_median_by_level"], strict=True):
        at_level = [layout for layout in read_coco_mig(COCO_MIG_DIR) if layout.level == level]
        assert box_stats(at_level)["size"][2] == pytest.approx(median, abs=0.001)


def test_every_geometry_is_registered_by_its_name():
    assert all(geometry is None or name == geometry.name for name, geometry in GEOMETRIES.items())
    assert get_geometry("narrow") is None  # its own sampler


def test_unknown_geometries_are_refused_before_training():
    from idruid.config import ConfigError, check_data, load_config

    with pytest.raises(ConfigError, match="geometry 'round': expected one of open, coco, narrow, strips"):
        check_data(load_config("tiny", ["geometry=round"]))
    with pytest.raises(ConfigError, match="rl.prompt_geometry 'square'"):
        load_config("tiny", ["rl.prompt_geometry=square"]).rl.check()
    with pytest.raises(ConfigError, match="rl.held_out_off 'oval': expected one of .*, none"):
        load_config("tiny", ["rl.held_out_off=oval"]).rl.check()
    load_config("tiny", ["rl.held_out_off=none", "rl.prompt_geometry=narrow"]).rl.check()
    with pytest.raises(ConfigError, match="needs rl.segmenter"):
        load_config("tiny", ["rl.algorithm=ppo", "rl.reward=iou_conf_color", "rl.segmenter=null"]).rl.check()
