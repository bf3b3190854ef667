"""``idruid report``: Tables 1-3, Figs. 5-6, ISR-by-level plots and sample grids of several run
folders, written as one ``report.md`` with its images beside it (plots/, grids/)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import ReportError
from .figures import (
    LAMBDA_KEYS,
    baselines,
    lambda_sensitivity,
    plot_isr_by_level,
    plot_lambda_sensitivity,
    plot_probes,
    plot_reward_curves,
    reward_curve,
)
from .probes import is_probe, load_probe
from .runs import (
    ABSENT,
    IGNORED_EVAL_SETTINGS,
    Run,
    Variant,
    eval_settings,
    format_value,
    group_runs,
    load_runs,
    varying_keys,
)
from .tables import SPREADS, mig_benchmarks, probe_table, sam_benchmarks, table_ablation, table_mig, table_sam

SPREAD_TEXT = {
    "half-range": "mean ± half the range over seeds (with two seeds, each seed's distance from the mean)",
    "std": "mean ± sample standard deviation over seeds",
    "sem": "mean ± standard error of the mean over seeds (sample std / sqrt(seeds))",
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _settings_text(settings: dict) -> str:
    return ", ".join(
        f"{k}={format_value(v)}"
        for k, v in sorted(settings.items())
        if k not in IGNORED_EVAL_SETTINGS and k != "benchmark"
    )


def _settings_section(runs: Sequence[Run], benchmark: str) -> str:
    """How the benchmark was sampled, once when all runs agree, else per run."""
    texts = {
        run.name: _settings_text(eval_settings(run.evals[benchmark].metrics))
        for run in runs
        if benchmark in run.evals
    }
    if len(set(texts.values())) == 1:
        return f"Sampling: {next(iter(texts.values()))}.\n"
    return "Sampling differs between runs:\n\n" + "".join(f"- {n}: {t}\n" for n, t in texts.items())


def _isr_plot(runs: Sequence[Run], benchmark: str, out_dir: Path) -> str:
    scored = {
        run.name: run.evals[benchmark].metrics["mig"]
        for run in runs
        if benchmark in run.evals and "mig" in run.evals[benchmark].metrics
    }
    if not scored:
        return ""
    path = plot_isr_by_level(scored, out_dir / "plots" / f"isr-{_slug(benchmark)}.png")
    return f"\n![ISR by level, {benchmark}]({path.relative_to(out_dir).as_posix()})\n"


def _runs_section(runs: Sequence[Run], variants: Sequence[Variant]) -> str:
    variant_of = {id(run): variant.name for variant in variants for run in variant.runs}
    rows = ["| Run | folder | seed | Table 3 row | eval folders |", "|---|---|---:|---|---|"]
    for run in runs:
        folders = ", ".join(f"{b}: {f.path.name}" for b, f in sorted(run.evals.items()))
        seed = format_value(run.config.get("seed", ABSENT))
        rows.append(f"| {run.name} | {run.path} | {seed} | {variant_of[id(run)]} | {folders} |")
    notes = [f"- {run.name}: {note}" for run in runs for note in run.notes]
    return "\n".join(rows) + "\n" + ("\nNot used:\n\n" + "\n".join(notes) + "\n" if notes else "")


def _variants_section(variants: Sequence[Variant]) -> str:
    """Each row's seeds and its values of the keys that vary between rows, leaving out keys that
    only some (older) configs lack but that have one value wherever they are set."""
    configs = [variant.runs[0].config for variant in variants]
    keys = [k for k in varying_keys(configs) if len({format_value(c[k]) for c in configs if k in c}) > 1]
    lines = []
    for variant in variants:
        config = variant.runs[0].config
        seeds = ", ".join(format_value(s) for s in variant.seeds)
        differs = "; ".join(f"{k}={format_value(config.get(k, ABSENT))}" for k in keys)
        lines.append(f"- **{variant.name}** (seeds {seeds}){': ' + differs if differs else ''}")
    return "Rows and the settings that tell them apart:\n\n" + "\n".join(lines) + "\n"


def _sensitivity_section(runs: Sequence[Run], variants: Sequence[Variant], out_dir: Path, kind: str) -> str:
    benchmarks = sorted({b for run in runs for b, f in run.evals.items() if "mig" in f.metrics})
    parts = []
    for key, label in LAMBDA_KEYS.items():
        lines = lambda_sensitivity(runs, key, benchmarks, kind)
        if not lines:
            parts.append(f"No runs differ only in {label} (and the seed): no {key} plot.\n")
            continue
        references = baselines(variants, benchmarks)
        path = plot_lambda_sensitivity(lines, key, out_dir / "plots" / f"{_slug(key)}.png", references)
        parts.append(f"![ISR Avg against {key}]({path.relative_to(out_dir).as_posix()})\n")
    return "\n".join(parts)


def _reward_section(runs: Sequence[Run], out_dir: Path, window: int) -> str:
    curves = {run.name: reward_curve(run) for run in runs}
    curves = {name: curve for name, curve in curves.items() if len(curve[0])}
    if not curves:
        return "No run logged an RL reward (`rl_reward` in log.jsonl): no reward curve.\n"
    path = plot_reward_curves(curves, out_dir / "plots" / "reward.png", window)
    return (
        f"Thin lines: the logged reward; bold: its trailing moving average over {window} log records.\n\n"
        f"![RL reward against training step]({path.relative_to(out_dir).as_posix()})\n"
    )


def _grids_section(runs: Sequence[Run], out_dir: Path) -> str:
    parts = []
    for k, run in enumerate(runs):
        for benchmark, folder in sorted(run.evals.items()):
            source = folder.path / "grid.png"
            if not source.is_file():
                parts.append(f"{run.name}, {benchmark}: no grid.png in {folder.path}.\n")
                continue
            target = out_dir / "grids" / f"{k:02d}-{_slug(run.name)}-{_slug(benchmark)}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            link = target.relative_to(out_dir).as_posix()
            parts.append(f"**{run.name}, {benchmark}**\n\n![{run.name} {benchmark}]({link})\n")
    return "\n".join(parts)


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    labels: dict[str | Path, str] | None = None,
    window: int = 5,
    spread: str = "half-range",
) -> Path:
    """Write ``out_dir/report.md`` (and plots/, grids/) for the run folders; ``labels`` maps run
    folders to names (runs of one variant given one name name its Table 3 row)."""
    if spread not in SPREADS:
        raise ReportError(f"spread must be one of {', '.join(SPREADS)}, got '{spread}'")
    if window < 1:
        raise ReportError(f"moving-average window must be >= 1, got {window}")
    labels = {Path(path).resolve(): name for path, name in (labels or {}).items()}
    for path in labels:
        if path not in {Path(p).resolve() for p in run_dirs}:
            run_dirs = [*run_dirs, path]
    probes = [load_probe(p, labels.get(Path(p).resolve())) for p in run_dirs if is_probe(p)]
    run_dirs = [p for p in run_dirs if not is_probe(p)]
    out_dir = Path(out_dir)
    if not run_dirs and probes:
        return _write_probe_report(probes, out_dir)
    runs = load_runs(run_dirs, labels)
    variants = group_runs(runs)
    out_dir.mkdir(parents=True, exist_ok=True)

    sections = [
        "# idruid report\n",
        f"{len(runs)} run(s), {len(variants)} variant(s). Metric cells are percentages.\n",
        "## Runs\n",
        _runs_section(runs, variants),
        "## Table 1: instance success rate and mIoU (COCO-MIG protocol)\n",
    ]
    mig = mig_benchmarks(runs)
    if not mig:
        sections.append("No run was evaluated on a COCO-MIG-style benchmark.\n")
    for benchmark in mig:
        sections += [f"### {benchmark}\n", _settings_section(runs, benchmark), table_mig(runs, benchmark)]
        sections.append(_isr_plot(runs, benchmark, out_dir))
    sections.append("## Table 2: per-attribute scores (LayoutSAM-eval protocol) and image quality\n")
    sam = sam_benchmarks(runs)
    if not sam:
        sections.append("No run was evaluated on a LayoutSAM-style benchmark.\n")
    for benchmark in sam:
        sections += [f"### {benchmark}\n", _settings_section(runs, benchmark), table_sam(runs, benchmark)]
        sections.append(_isr_plot(runs, benchmark, out_dir))
    sections += [
        "## Table 3: ablation\n",
        f"Cells: {SPREAD_TEXT[spread]}; ISR, mIoU and leakage are the Avg over levels, the attribute "
        "scores are over all boxes (as in Table 2); (n=k): only k of the row's runs have that value.\n",
        table_ablation(variants, spread),
        _variants_section(variants),
        "## Lambda sensitivity (Fig. 5)\n",
        _sensitivity_section(runs, variants, out_dir, spread),
        "## RL reward (Fig. 6)\n",
        _reward_section(runs, out_dir, window),
        "## Samples (target boxes drawn)\n",
        _grids_section(runs, out_dir),
    ]
    if probes:
        sections.append(_probe_section(probes, out_dir))
    path = out_dir / "report.md"
    path.write_text("\n".join(part for part in sections if part))
    return path


def _probe_section(probes, out_dir: Path) -> str:
    plot = plot_probes(probes, out_dir / "plots" / "rl-probes.png")
    return (
        "## RL probes (L_rl alone, held-out reward)\n\n"
        "Held-out reward: prompt-only layouts the RL stage never draws, sampled with the ODE from fixed "
        "noise (`idruid rl-probe`); gain: last checkpoint minus the start.\n\n"
        + probe_table(probes)
        + f"\n![held-out reward]({plot.relative_to(out_dir).as_posix()})\n"
    )


def _write_probe_report(probes, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    path.write_text(f"# idruid report\n\n{len(probes)} probe(s).\n\n" + _probe_section(probes, out_dir))
    return path
