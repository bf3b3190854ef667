"""The paper's figures from run folders (matplotlib, Agg canvas, no display needed).

- Fig. 5: lambda sensitivity, the ISR Avg against lambda_dis or lambda_rl for runs that differ
  only in that lambda (and the seed); mean over seeds with the spread as error bars.
- Fig. 6: the RL reward against the training step, raw and as a trailing moving average.
The ISR-by-level plot (Table 1 as a figure) is idruid.reports.figures.plot_isr_by_level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ReportError
from .runs import Run, Variant, config_key, variant_names
from .tables import spread

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
