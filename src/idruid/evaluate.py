"""Benchmark runner: generate a benchmark's layouts, score them, write metrics, tables and grids.

The embedded benchmarks are scored the same way (paper 4.1): COCO-MIG's protocol (ISR and
mIoU by level, with the analytic detector + segmenter standing in for Grounded-SAM), the
attribute-leakage rate, and LayoutSAM-eval's per-box judge (spatial / colour / texture / shape).
COCO-MIG itself is scored with GroundingDINO + SAM by its official protocol, LayoutSAM-eval by
a local VLM judge on its detailed captions (idruid.eval_benchmarks); ``judge`` swaps a VLM in for the
analytic judge of the shapes benchmarks too. Images are made at the checkpoint's resolution.

Generated images are saved as ``images/<benchmark>_<index>.png`` and scored from there by the
code that ``idruid score`` runs, so both give the same numbers. Launched with accelerate
(``accelerate launch -m idruid.cli eval ...``), each process generates its share of the
layouts and the main process scores them all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from .data.shapes import render_layout_scene
from .eval_benchmarks import BenchmarkRun, check_scorers, get_benchmark
from .layout import Layout
from .reports.figures import image_grid, write_metrics
from .reports.tables import format_table_leakage, format_table_mig, format_table_sam
from .sampling import SamplingSettings, generate
from .scoring import load_scorers, save_images, score_benchmark, score_folder

GRID_TILE = 128  # grid tiles: small images are upscaled to about this size, large ones shrunk to 2x it


def score_images(images: np.ndarray, layouts: Sequence[Layout]) -> dict:
    """All embedded metrics for images (B, H, W, 3) uint8 made for shapes-world ``layouts``, by the
    analytic detector, segmenter and judge (the shapes benchmarks' defaults)."""
    benchmark = get_benchmark("shapes-mig")
    scorers = load_scorers(check_scorers(benchmark))
    return score_benchmark(benchmark, images, layouts, scorers, batch_size=max(1, len(layouts)))


def render_ground_truth(layouts: Sequence[Layout]) -> np.ndarray:
    """Clean renders of the benchmark scenes: the ceiling any model can reach."""
    return np.stack([render_layout_scene(layout) for layout in layouts])


def write_outputs(
    out_dir: Path, name: str, metrics: dict, images: Sequence[np.ndarray], layouts: Sequence[Layout]
) -> None:
    """metrics JSON, a markdown table and a grid with target boxes drawn (the images themselves
    are saved where they are made: images/<benchmark>_<index>.png). Only the grid's images are
    read from ``images`` (scoring.FolderImages reads them from disk then)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(out_dir, "metrics", metrics)
    (out_dir / "table.md").write_text(tables_markdown({name: metrics}))
    grid_idx = _grid_indices(layouts, per_level=4)
    if grid_idx:
        tiles, scale = _grid_tiles([images[k] for k in grid_idx])
        image_grid(tiles, [layouts[k] for k in grid_idx], ncols=8, scale=scale).save(out_dir / "grid.png")


def _grid_tiles(images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Images and the scale at which to tile them: small ones scaled up to about GRID_TILE,
    large ones (real 512-1024 px images) shrunk to 2 * GRID_TILE."""
    width = images[0].shape[1]
    if width <= GRID_TILE:
        return list(images), max(1, GRID_TILE // width)
    size = 2 * GRID_TILE
    return [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images], 1


def tables_markdown(metrics_by_name: dict[str, dict]) -> str:
    """Markdown tables of the protocols the runs were scored by (COCO-MIG has no "sam")."""
    sections = [
        ("mig", "Instance success rate and mIoU (COCO-MIG protocol)", format_table_mig),
        ("sam", "Per-attribute scores (LayoutSAM-eval protocol)", format_table_sam),
        ("leakage", "Attribute leakage", format_table_leakage),
    ]
    parts = []
    for key, title, table in sections:
        rows = {name: m[key] for name, m in metrics_by_name.items() if key in m}
        if rows:
            parts.append(f"**{title}**\n\n" + table(rows))
    return "\n\n".join(parts) + "\n"


def _grid_indices(layouts: Sequence[Layout], per_level: int) -> list[int]:
    counts: dict[int, int] = {}
    picked = []
    for k, layout in enumerate(layouts):
        counts[layout.level] = counts.get(layout.level, 0) + 1
        if counts[layout.level] <= per_level:
            picked.append(k)
    return picked


def with_index_seeds(layouts: Sequence[Layout], seed: int) -> list[Layout]:
    """Layouts without a seed get ``seed + benchmark index``, so an image does not depend on
    which other layouts were selected or on how they were split across processes."""
    return [
        layout if layout.seed is not None else replace(layout, seed=seed + layout.meta.get("index", k))
        for k, layout in enumerate(layouts)
    ]


def evaluate(
    model,
    run: BenchmarkRun,
    out_dir: str | Path,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = True,
    device: str = "cpu",
    score_batch_size: int = 8,
    state=None,
) -> dict | None:
    """Generate and score one benchmark with ``settings`` (None: SamplingSettings' defaults);
    writes ``metrics.json``, ``table.md``, ``grid.png`` and ``images/``. ``run``: the benchmark
    resolved once (benchmarks.resolve): its selected layouts and checked scorers, which the main
    process loads on ``device`` once the images exist.
    ``state`` is an accelerate PartialState (made here when None): each process generates its
    share of the layouts, ``batch_size`` at a time, and saves them as it goes; the main process
    scores them all and returns the metrics, the others None."""
    from accelerate import PartialState
    from tqdm import tqdm

    state = PartialState() if state is None else state
    settings = settings or SamplingSettings()
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    benchmark, specs = run.name, run.scorers
    layouts = with_index_seeds(run.layouts, seed)

    # ---------------------------------------------------------------- generate (each process)
    with state.split_between_processes(layouts) as mine:
        starts = range(0, len(mine), batch_size)
        for start in tqdm(starts, desc="generating", unit="batch", disable=not progress or len(starts) < 2):
            chunk = mine[start : start + batch_size]  # every layout has its seed: chunks do not matter
            images = generate(
                model, chunk, settings, seed=seed, batch_size=batch_size, progress=False
            )
            save_images(image_dir, benchmark, images, chunk)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    # ---------------------------------------------------------------- score (main process)
    scorers = load_scorers(specs, device, run.mig_protocol)
    metrics, images = score_folder(run.benchmark, image_dir, layouts, scorers, score_batch_size, progress)
    metrics["settings"] = {
        "benchmark": benchmark,
        "layouts": len(layouts),
        "steps": settings.steps,
        "cfg": settings.cfg,
        "seed": seed,
        "layout_fraction": settings.layout_fraction,
        "shift": settings.shift,
        # a distilled guidance scale only where one was given (earlier evaluations had none)
        **({} if settings.guidance is None else {"guidance": settings.guidance}),
        **_skip_layer_settings(settings),
        "mig_protocol": run.mig_protocol,
        "processes": state.num_processes,
        "detector": specs.detector,
        "segmenter": specs.segmenter,
        "judge": specs.judge,
        "judge_rule": specs.judge_rule,
    }
    write_outputs(out_dir, benchmark, metrics, images, layouts)
    return metrics


def _skip_layer_settings(settings: SamplingSettings) -> dict:
    """The skip-layer guidance an evaluation ran with, where it ran with any (earlier ones had none)."""
    if settings.skip_layers is None:
        return {}
    return {key: value for key, value in settings.to_dict().items() if key.startswith("skip_layer")}


def load_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
