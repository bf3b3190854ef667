"""The report that ``idruid demo`` writes: tables of both benchmarks beside the clean-render
ceiling, the image grids with target boxes, the loss and reward curves and the timings."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .eval_benchmarks import get_benchmark, select_layouts
from .evaluate import render_ground_truth, score_images, tables_markdown
from .reports.figures import plot_isr_by_level


def training_summary(config: TrainConfig) -> str:
    """What the run trained, in words: stage 1 alone, or stage 1 then the RL stage from step k."""
    if config.rl.algorithm == "none":
        return f"I-DRUID stage 1, {config.steps} steps"
    start = int(config.rl.start_fraction * config.steps)
    method = config.rl.algorithm.upper()
    if config.rl.algorithm == "ppo":
        method += f" ({config.rl.baseline} baseline)"
    return f"I-DRUID stage 1 + {method} from step {start} of {config.steps}"


def write_demo_report(
    out: Path,
    results: dict[str, dict],
    train_seconds: float,
    total_seconds: float,
    per_level: int | None = None,
    trained: str = "I-DRUID",
) -> Path:
    sections = [
        "# idruid demo report\n",
        f"{trained}: training took {train_seconds / 60:.1f} min; "
        f"the whole demo {total_seconds / 60:.1f} min.\n",
        "![loss curves and reward](loss.png)\n",
    ]
    for benchmark, metrics in results.items():
        layouts = select_layouts(get_benchmark(benchmark), per_level)
        truth = score_images(render_ground_truth(layouts), layouts)
        rows = {f"{trained} (this run)": metrics, "ground-truth renders (ceiling)": truth}
        settings = metrics.get("settings", {})
        sections += [
            f"## {benchmark}\n",
            f"{settings.get('layouts')} layouts, {settings.get('steps')} Euler steps, "
            f"CFG {settings.get('cfg')}, "
            f"layout branch on for the first {settings.get('layout_fraction')} of the steps.\n",
            tables_markdown(rows),
            f"![{benchmark} samples](eval-{benchmark}/grid.png)\n",
        ]
        plot_isr_by_level({name: m["mig"] for name, m in rows.items()}, out / f"isr-{benchmark}.png")
        sections.append(f"![ISR by level](isr-{benchmark}.png)\n")
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path
