"""idruid.evaluate on a fake model that paints known images: metrics.json, table.md and grid.png
agree with idruid.metrics applied directly to the same images, and the images are the ones painted.

The fake model's velocity (x_t - x0) / t carries the Euler sampler onto its target x0 exactly, so
the generated images are renders chosen here: the ground truth of half the layouts and, for the
other half, the scene with its colours rotated among the shapes (leakage, failed colour checks)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from idruid.config import ModelConfig, SamplingSettings
from idruid.data.shapes import render_layout_scene
from idruid.diffusion import euler_step
from idruid.eval_benchmarks import resolve
from idruid.evaluate import evaluate, tables_markdown
from idruid.metrics import (
    aggregate_mig,
    aggregate_sam,
    leakage,
    score_coco_mig,
    score_layoutsam,
)
from idruid.reports.figures import image_grid
from idruid.reports.tables import format_table_mig
from idruid.scorers.registry import load_scorer


def _colours_rotated(layout):
    """The layout's scene with each shape painted in the next shape's colour."""
    scene = layout.meta["scene"]
    colours = [shape.color for shape in scene.shapes]
    shapes = tuple(replace(s, color=c) for s, c in zip(scene.shapes, colours[1:] + colours[:1], strict=True))
    return replace(layout, meta={**layout.meta, "scene": replace(scene, shapes=shapes)})


def painted(layout) -> np.ndarray:
    """What the fake model paints for a layout: (H, W, 3) uint8."""
    wrong = (layout.meta["index"] // 160) % 2 == 1
    return render_layout_scene(_colours_rotated(layout) if wrong else layout)


class PaintedTargets:
    def __init__(self, x0: torch.Tensor):
        self.x0 = x0  # (B, 3, H, W) in [-1, 1]

    def to(self, device):
        return self


class FlowGrid:
    def times(self, steps, shift=1.0):
        return torch.linspace(1.0, 0.0, steps + 1)

    def step(self, prediction, x_t, t, t_next):
        return euler_step(prediction, x_t, t, t_next)


class PaintingModel(nn.Module):
    """Flows any noise onto ``painted(layout)``: v = (x_t - x0) / t lands on x0 at t = 0."""

    latent_shape = (3, 32, 32)
    process = FlowGrid()
    layout_rounding = "ceil"  # the model contract: what a backbone declares (models.base.LayoutModel)
    guidance = ("cfg",)

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.config = ModelConfig()  # the model contract: its config

    def encode_text(self, layouts):
        images = np.stack([painted(layout) for layout in layouts])
        return PaintedTargets(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0)

    def forward(self, x_t, t, cond, layout_on=True):
        return (x_t - cond.x0) / t.view(-1, 1, 1, 1), None

    def decode_latents(self, latents):
        return latents


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"a/b": leaf} of a nested dict, for pytest.approx."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run = resolve("shapes-mig", per_level=2)
    out = tmp_path_factory.mktemp("eval") / "shapes-mig"
    settings = SamplingSettings(steps=2, cfg=1.0, layout_fraction=0.5)
    metrics = evaluate(PaintingModel(), run, out, settings, seed=3, batch_size=4, progress=False)
    images = np.stack(
        [
            np.asarray(Image.open(out / "images" / f"shapes-mig_{lay.meta['index']}.png"))
            for lay in run.layouts
        ]
    )
    return run, out, metrics, images


def test_the_saved_images_are_the_painted_ones(evaluated):
    run, out, _, images = evaluated
    assert len(list((out / "images").iterdir())) == len(run.layouts) == 10
    np.testing.assert_array_equal(images, np.stack([painted(layout) for layout in run.layouts]))


def test_metrics_json_equals_the_metrics_of_the_images(evaluated):
    """Scored here in one batch with the analytic detector, segmenter and judge: the same numbers."""
    run, out, metrics, images = evaluated
    layouts, levels = run.layouts, [layout.level for layout in run.layouts]
    detector, segmenter = load_scorer("detector", "analytic"), load_scorer("segmenter", "analytic")
    expected = {
        "mig": aggregate_mig(score_coco_mig(images, layouts, detector, segmenter), levels),
        "leakage": leakage(images, layouts),
        "sam": aggregate_sam(score_layoutsam(images, layouts, load_scorer("judge", "analytic")), levels),
    }
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) == {"mig", "leakage", "sam", "settings"}
    for key, value in expected.items():
        assert _flat(saved[key]) == pytest.approx(_flat(json.loads(json.dumps(value))), rel=1e-12)
        assert _flat(metrics[key]) == pytest.approx(_flat(value), rel=1e-12)
    # the painting is right for half the images, wrong in colour for the other half
    assert set(saved["mig"]) == {"L2", "L3", "L4", "L5", "L6", "all", "avg", "averages"}
    assert 0.0 < saved["mig"]["all"]["isr"] < 1.0 and saved["leakage"]["leaked"] > 0
    assert saved["mig"]["all"]["instances"] == sum(2 * level for level in range(2, 7))


def test_settings_record_what_was_run(evaluated):
    _, out, metrics, _ = evaluated
    assert (
        json.loads((out / "metrics.json").read_text())["settings"]
        == metrics["settings"]
        == {
            "benchmark": "shapes-mig",
            "layouts": 10,
            "steps": 2,
            "cfg": 1.0,
            "seed": 3,
            "layout_fraction": 0.5,
            "shift": 1.0,
            "mig_protocol": "mig-bench",
            "processes": 1,
            "detector": "analytic",
            "segmenter": "analytic",
            "judge": "analytic",
            "judge_rule": "generate",
        }
    )


def test_table_and_grid_are_made_from_the_same_numbers_and_images(evaluated):
    run, out, metrics, images = evaluated
    table = (out / "table.md").read_text()
    assert table == tables_markdown({"shapes-mig": metrics})
    assert format_table_mig({"shapes-mig": metrics["mig"]}) in table
    # every layout is in the grid (2 per level, at most 4 shown), tiles scaled 128 // 32 = 4 times
    expected = image_grid(list(images), run.layouts, ncols=8, scale=4)
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "grid.png").convert("RGB")), np.asarray(expected.convert("RGB"))
    )
