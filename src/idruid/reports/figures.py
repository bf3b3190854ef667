"""Every figure idruid draws: what users look at after an evaluation (section 4.1-4.3: layouts
drawn on images, image grids, metrics JSON, the ISR-by-level plot, Table 1 as a figure) and the
paper's figures from run folders (matplotlib, Agg canvas, no display needed):

- Fig. 5: lambda sensitivity, the ISR Avg against lambda_dis or lambda_rl for runs that differ
  only in that lambda (and the seed); mean over seeds with the spread as error bars.
- Fig. 6: the RL reward against the training step, raw and as a trailing moving average.
- RL probes: the held-out reward against the iteration.

Box outlines use a fixed palette chosen to stand apart, to the eye, from the seven colours
the prompts ask for (red, blue, green, yellow, black, white, brown), each with a 1-px dark
border so it shows on any background, and a small index label (the instance's position).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ReportError
from ..layout import Layout
from .probes import Probe
from .runs import Run, Variant, config_key, variant_names
from .tables import spread

# magenta, cyan, orange, violet, pink, teal, grey, lavender
BOX_PALETTE = (
    (255, 0, 255),
    (0, 255, 255),
    (255, 140, 0),
    (140, 60, 255),
    (255, 105, 180),
    (0, 150, 150),
    (160, 160, 160),
    (200, 160, 255),
)
DARK = (16, 16, 16)
_TITLE_HEIGHT = 12
_GAP = 2


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _upscale(image: np.ndarray, scale: int) -> Image.Image:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    return Image.fromarray(image).resize((width * scale, height * scale), Image.NEAREST)


def _draw_label(draw: ImageDraw.ImageDraw, x: int, y: int, text: str, color: tuple[int, int, int]) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_font())
    draw.rectangle((x, y, x + right - left + 2, y + bottom - top + 2), fill=color, outline=DARK)
    draw.text((x + 1 - left, y + 1 - top), text, fill=DARK, font=_font())


def draw_layout(image: np.ndarray, layout: Layout, scale: int = 4, labels: bool = True) -> Image.Image:
    """The image upscaled ``scale`` times (nearest) with each target box outlined and numbered."""
    canvas = _upscale(image, scale)
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    for k, (x0, y0, x1, y1) in enumerate(layout.boxes):
        color = BOX_PALETTE[k % len(BOX_PALETTE)]
        left, top = round(x0 * width), round(y0 * height)
        right, bottom = max(left, round(x1 * width) - 1), max(top, round(y1 * height) - 1)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), outline=DARK)
        draw.rectangle((left, top, right, bottom), outline=color)
        if right - left > 2 and bottom - top > 2:
            draw.rectangle((left + 1, top + 1, right - 1, bottom - 1), outline=DARK)
        if labels:
            _draw_label(draw, max(left, 0), max(top, 0), str(k), color)
    return canvas


def image_grid(
    images: Sequence[np.ndarray],
    layouts: Sequence[Layout] | None = None,
    ncols: int = 8,
    scale: int = 4,
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """Tiles of images (boxes drawn when layouts are given), ``ncols`` per row, titles above."""
    if not len(images):
        raise ValueError("image_grid needs at least one image")
    for name, other in (("layouts", layouts), ("titles", titles)):
        if other is not None and len(other) != len(images):
            raise ValueError(f"{len(images)} images but {len(other)} {name}")
    tiles = [
        draw_layout(im, layouts[k], scale) if layouts is not None else _upscale(im, scale)
        for k, im in enumerate(images)
    ]
    tile_w = max(t.width for t in tiles)
    tile_h = max(t.height for t in tiles) + (_TITLE_HEIGHT if titles is not None else 0)
    cols = min(ncols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    grid = Image.new("RGB", (cols * tile_w + (cols - 1) * _GAP, rows * tile_h + (rows - 1) * _GAP), "white")
    draw = ImageDraw.Draw(grid)
    for k, tile in enumerate(tiles):
        x, y = (k % cols) * (tile_w + _GAP), (k // cols) * (tile_h + _GAP)
        if titles is not None:
            draw.text((x + 1, y), str(titles[k]), fill=DARK, font=_font())
            y += _TITLE_HEIGHT
        grid.paste(tile, (x, y))
    return grid


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to metrics JSON")


def write_metrics(out_dir: str | Path, name: str, metrics: dict) -> Path:
    """Write ``out_dir/name.json`` (sorted keys, indent 2) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(metrics, sort_keys=True, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _levels(metrics: dict) -> list[int]:
    return sorted(int(k[1:]) for k in metrics if k.startswith("L") and k[1:].isdigit())


def plot_isr_by_level(metrics_by_name: dict[str, dict], path: str | Path) -> Path:
    """Line plot of ISR (%) per COCO-MIG level, one line per run (aggregate_mig outputs)."""
    figure = _figure(5, 3.5)
    axes = figure.add_subplot()
    all_levels: set[int] = set()
    for name, metrics in metrics_by_name.items():
        levels = _levels(metrics)
        all_levels.update(levels)
        isr = [100.0 * metrics[f"L{lv}"]["isr"] for lv in levels]
        axes.plot(levels, isr, marker="o", label=name)
    axes.set_xticks(sorted(all_levels), [f"L{lv}" for lv in sorted(all_levels)])
    axes.set_xlabel("COCO-MIG level (instances per image)")
    axes.set_ylabel("instance success rate (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    if metrics_by_name:
        axes.legend()
    return _save(figure, path)


LAMBDA_KEYS = {"lambda_dis": "λ_dis (weight of L_dis)", "rl.lambda_rl": "λ_rl (weight of L_rl)"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    return path


# ----------------------------------------------------------------------------- Fig. 6


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values; the first ones average what there is."""
    if window < 1:
        raise ValueError(f"moving-average window must be >= 1, got {window}")
    values = np.asarray(values, dtype=np.float64)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (sums[end] - sums[start]) / (end - start)


def reward_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(steps, rewards) of the log records with ``rl_reward``, by step; a step logged twice (a
    resumed run) keeps its later record."""
    by_step: dict[int, float] = {}
    for number, record in enumerate(run.log, start=1):
        if "rl_reward" not in record:
            continue
        if "step" not in record:
            raise ReportError(f"{run.path / 'log.jsonl'} record {number}: rl_reward without a step")
        by_step[int(record["step"])] = float(record["rl_reward"])
    steps = np.asarray(sorted(by_step), dtype=np.int64)
    return steps, np.asarray([by_step[s] for s in steps], dtype=np.float64)


def plot_reward_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, window: int
) -> Path:
    """Raw reward (thin) and its moving average (bold) against the step, one colour per run."""
    figure = _figure(5.5, 3.5)
    axes = figure.add_subplot()
    for k, (name, (steps, rewards)) in enumerate(curves.items()):
        color = f"C{k % 10}"
        axes.plot(steps, rewards, color=color, alpha=0.3, linewidth=0.8)
        axes.plot(steps, moving_average(rewards, window), color=color, linewidth=1.8, label=name)
    axes.set_xlabel("training step")
    axes.set_ylabel(f"RL reward (moving average over {window} logs)")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize="small")
    return _save(figure, path)


# ----------------------------------------------------------------------------- Fig. 5


@dataclass(frozen=True)
class SensitivityLine:
    label: str  # the variant the lambda was varied in
    benchmark: str
    lambdas: list[float]
    mean: list[float]  # ISR Avg (%) over the seeds at each lambda
    spread: list[float]


def lambda_sensitivity(
    runs: Sequence[Run], key: str, benchmarks: Sequence[str], kind: str = "half-range"
) -> list[SensitivityLine]:
    """Lines of ISR Avg against config ``key``: runs alike up to ``key`` and the seed form one line
    when they hold at least two values of it; [] when no runs vary it."""
    partitions: dict[tuple, list[Run]] = {}
    for run in runs:
        if isinstance(run.config.get(key), int | float) and not isinstance(run.config[key], bool):
            partitions.setdefault(config_key(run.config, ignore=(key,)), []).append(run)
    varied = [group for group in partitions.values() if len({run.config[key] for run in group}) > 1]
    labels = variant_names([{k: v for k, v in g[0].config.items() if k != key} for g in varied])
    lines = []
    for group, label in zip(varied, labels, strict=True):
        for benchmark in benchmarks:
            points: dict[float, list[float]] = {}
            for run in group:
                isr = _isr_avg(run, benchmark)
                if isr is not None:
                    points.setdefault(float(run.config[key]), []).append(isr)
            if len(points) > 1:
                xs = sorted(points)
                mean = [float(np.mean(points[x])) for x in xs]
                lines.append(
                    SensitivityLine(label, benchmark, xs, mean, [spread(points[x], kind) for x in xs])
                )
    return lines


def _isr_avg(run: Run, benchmark: str) -> float | None:
    """ISR Avg (%) of the run on the benchmark, None when it was not scored there."""
    if benchmark not in run.evals:
        return None
    isr = run.evals[benchmark].metrics.get("mig", {}).get("avg", {}).get("isr")
    return None if isr is None else 100.0 * float(isr)


def baselines(variants: Sequence[Variant], benchmarks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Fig. 5's dashed lines: the Table 3 rows trained with lambda_dis = lambda_rl = 0 in effect (no
    IDM or lambda_dis = 0, and no RL stage), name -> benchmark -> ISR Avg (%) over their seeds."""
    out = {}
    for variant in variants:
        config = variant.runs[0].config
        no_dis = config.get("lambda_dis") == 0 or config.get("model.use_idm") is False
        if not no_dis or config.get("rl.algorithm", "none") != "none":
            continue
        means = {}
        for benchmark in benchmarks:
            values = [v for v in (_isr_avg(run, benchmark) for run in variant.runs) if v is not None]
            if values:
                means[benchmark] = float(np.mean(values))
        out[f"baseline: {variant.name}"] = means
    return out


def plot_lambda_sensitivity(
    lines: Sequence[SensitivityLine],
    key: str,
    path: str | Path,
    references: dict[str, dict[str, float]] | None = None,
) -> Path:
    """One panel per benchmark, one line per varied variant, error bars the spread over seeds;
    ``references`` (name -> benchmark -> ISR) are drawn as dashed horizontal lines."""
    benchmarks = sorted({line.benchmark for line in lines})
    if not benchmarks:
        raise ValueError("no sensitivity lines to plot")
    figure = _figure(4.0 * len(benchmarks), 3.5)
    panels = figure.subplots(1, len(benchmarks), squeeze=False)[0]
    for axes, benchmark in zip(panels, benchmarks, strict=True):
        for line in (line for line in lines if line.benchmark == benchmark):
            axes.errorbar(line.lambdas, line.mean, yerr=line.spread, marker="o", capsize=3, label=line.label)
        for k, (name, values) in enumerate((references or {}).items()):
            if benchmark in values:
                axes.axhline(values[benchmark], linestyle="--", color=f"C{(k + 5) % 10}", label=name)
        axes.set_title(benchmark)
        axes.set_xlabel(LAMBDA_KEYS.get(key, key))
        axes.set_ylabel("ISR Avg (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    return _save(figure, path)


def plot_probes(probes: Sequence[Probe], path: Path) -> Path:
    """Held-out reward against the iteration, one line per probe."""
    figure = _figure(6, 3.6)
    axes = figure.add_subplot()
    for probe in probes:
        axes.plot(
            [r["iteration"] for r in probe.records],
            [r["held_out_reward"] for r in probe.records],
            "o-",
            label=probe.name,
        )
    axes.set(xlabel="RL iteration (L_rl alone)", ylabel="held-out reward (Eq. 6)", title="RL probes")
    axes.legend(fontsize=7)
    return _save(figure, path)
