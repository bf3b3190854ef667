"""Benchmark runner: generate a benchmark's layouts, score them, write metrics, tables and grids.

Both embedded benchmarks are scored the same way (paper 4.1): COCO-MIG's protocol (ISR and
mIoU by level, with the analytic detector + segmenter standing in for Grounded-SAM), the
attribute-leakage rate, and LayoutSAM-eval's per-box judge (spatial / colour / texture / shape).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .data.shapes import BENCHMARKS, benchmark_layouts, render_layout_scene
from .detectors import DETECTORS, JUDGES, SEGMENTERS
from .layout import Layout
from .metrics import (
    aggregate_mig,
    aggregate_sam,
    format_table_leakage,
    format_table_mig,
    format_table_sam,
    leakage,
    score_coco_mig,
    score_layoutsam,
)
from .report import image_grid, write_metrics
from .sampling import generate


def select_layouts(benchmark: str, per_level: int | None = None) -> list[Layout]:
    """The benchmark's layouts, optionally only the first ``per_level`` of each level."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark '{benchmark}': unknown (choose from {', '.join(sorted(BENCHMARKS))})")
    layouts = benchmark_layouts(benchmark)
    if per_level is None:
        return layouts
    seen: dict[int, int] = {}
    kept = []
    for layout in layouts:
        seen[layout.level] = seen.get(layout.level, 0) + 1
        if seen[layout.level] <= per_level:
            kept.append(layout)
    return kept


def score_images(images: np.ndarray, layouts: Sequence[Layout], detector: str = "analytic") -> dict:
    """All embedded metrics for images (B, H, W, 3) uint8 made for ``layouts``."""
    levels = [layout.level for layout in layouts]
    mig = score_coco_mig(images, layouts, DETECTORS[detector](), SEGMENTERS[detector]())
    sam = score_layoutsam(images, layouts, JUDGES[detector]())
    return {
        "mig": aggregate_mig(mig, levels),
        "sam": aggregate_sam(sam, levels),
        "leakage": leakage(images, layouts),
    }


def render_ground_truth(layouts: Sequence[Layout]) -> np.ndarray:
    """Clean renders of the benchmark scenes: the ceiling any model can reach."""
    return np.stack([render_layout_scene(layout) for layout in layouts])


def write_outputs(
    out_dir: Path, name: str, metrics: dict, images: np.ndarray, layouts: Sequence[Layout]
) -> None:
    """metrics JSON, a markdown table, a grid with target boxes drawn, and every image as PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir, "metrics", metrics)
    (out_dir / "table.md").write_text(tables_markdown({name: metrics}))
    grid_idx = _grid_indices(layouts, per_level=4)
    image_grid([images[k] for k in grid_idx], [layouts[k] for k in grid_idx], ncols=8, scale=4).save(
        out_dir / "grid.png"
    )
    image_dir = out_dir / "images"
    image_dir.mkdir(exist_ok=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(image_dir / f"{k:05d}.png")


def tables_markdown(metrics_by_name: dict[str, dict]) -> str:
    mig = {name: m["mig"] for name, m in metrics_by_name.items()}
    sam = {name: m["sam"] for name, m in metrics_by_name.items()}
    leak = {name: m["leakage"] for name, m in metrics_by_name.items()}
    return (
        "**Instance success rate and mIoU (COCO-MIG protocol)**\n\n"
        + format_table_mig(mig)
        + "\n\n**Per-attribute scores (LayoutSAM-eval protocol)**\n\n"
        + format_table_sam(sam)
        + "\n\n**Attribute leakage**\n\n"
        + format_table_leakage(leak)
        + "\n"
    )


def _grid_indices(layouts: Sequence[Layout], per_level: int) -> list[int]:
    counts: dict[int, int] = {}
    picked = []
    for k, layout in enumerate(layouts):
        counts[layout.level] = counts.get(layout.level, 0) + 1
        if counts[layout.level] <= per_level:
            picked.append(k)
    return picked


def evaluate(
    model,
    benchmark: str,
    out_dir: str | Path,
    steps: int = 20,
    cfg: float = 3.0,
    seed: int = 0,
    layout_fraction: float = 0.3,
    shift: float = 1.0,
    per_level: int | None = None,
    batch_size: int = 100,
    progress: bool = True,
) -> dict:
    """Generate and score one benchmark; writes ``metrics.json``, ``table.md``, ``grid.png``."""
    layouts = select_layouts(benchmark, per_level)
    images = generate(
        model,
        layouts,
        batch_size=batch_size,
        progress=progress,
        steps=steps,
        cfg=cfg,
        seed=seed,
        layout_fraction=layout_fraction,
        shift=shift,
    )
    metrics = score_images(images, layouts)
    metrics["settings"] = {
        "benchmark": benchmark,
        "layouts": len(layouts),
        "steps": steps,
        "cfg": cfg,
        "seed": seed,
        "layout_fraction": layout_fraction,
        "shift": shift,
    }
    write_outputs(Path(out_dir), benchmark, metrics, images, layouts)
    return metrics


def load_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
