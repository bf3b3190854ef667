"""The paper's tables from run folders, in markdown.

- Table 1 (COCO-MIG protocol): ISR and mIoU per level L2-L6 and Avg, one row per run, one table
  per MIG-style benchmark (shapes-mig, coco-mig), formatted by metric_tables.format_table_mig, plus the
  leakage table where the benchmark was scored for it.
- Table 2 (LayoutSAM-eval protocol): spatial / colour / texture / shape pass rates over all boxes,
  then every numeric entry of the eval folder's quality.json (FID, IS, CLIP score, ...).
- Table 3 (ablation): one row per variant, each cell the mean over its seeds and a spread
  (half the range, or the sample standard deviation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .metric_tables import format_table_leakage, format_table_mig
from .runs import Run, Variant

SAM_COLUMNS = (("spatial", "Spatial"), ("color", "Color"), ("texture", "Texture"), ("shape", "Shape"))
SPREADS = ("half-range", "std", "sem")


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _at(metrics: dict, path: Sequence[str]) -> float | None:
    value = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def _benchmarks(runs: Sequence[Run], protocol: str) -> list[str]:
    """Benchmarks reported under a protocol ("mig" or "sam"): those named after it, and those
    named after neither that were scored by it."""
    other = {"mig": "sam", "sam": "mig"}[protocol]
    found = set()
    for run in runs:
        for benchmark, folder in run.evals.items():
            if protocol in benchmark or (other not in benchmark and protocol in folder.metrics):
                found.add(benchmark)
    return sorted(found)


def mig_benchmarks(runs: Sequence[Run]) -> list[str]:
    return _benchmarks(runs, "mig")


def sam_benchmarks(runs: Sequence[Run]) -> list[str]:
    return _benchmarks(runs, "sam")


def table_mig(runs: Sequence[Run], benchmark: str) -> str:
    """Table 1 for one benchmark: ISR / mIoU by level (and leakage) of the runs that have it."""
    scored = {run.name: run.evals[benchmark].metrics for run in runs if benchmark in run.evals}
    parts = [format_table_mig({name: m["mig"] for name, m in scored.items() if "mig" in m})]
    leakage = {name: m["leakage"] for name, m in scored.items() if "leakage" in m}
    if leakage:
        parts.append(
            "Attribute leakage (share of instances whose box shows another instance's colour):\n\n"
            + format_table_leakage(leakage)
        )
    return "\n".join(parts)


def _quality_keys(runs: Sequence[Run], benchmark: str) -> list[str]:
    keys: list[str] = []
    for run in runs:
        if benchmark in run.evals:
            keys += [k for k in run.evals[benchmark].quality if k not in keys]
    return keys


def _quality_cell(value: float | None) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def table_sam(runs: Sequence[Run], benchmark: str) -> str:
    """Table 2 for one benchmark: attribute pass rates over all boxes (%), then image quality."""
    quality = _quality_keys(runs, benchmark)
    rows = []
    for run in runs:
        if benchmark not in run.evals:
            continue
        folder = run.evals[benchmark]
        cells = []
        for attribute, _ in SAM_COLUMNS:
            value = _at(folder.metrics, ("sam", "all", attribute))
            cells.append("-" if value is None else f"{100.0 * value:.2f}")
        cells += [_quality_cell(folder.quality.get(key)) for key in quality]
        rows.append([run.name, *cells])
    return _markdown(["Method", *(title for _, title in SAM_COLUMNS), *quality], rows)


# ----------------------------------------------------------------------------- Table 3


@dataclass(frozen=True)
class Column:
    header: str
    benchmark: str
    path: tuple[str, ...]  # into metrics.json
    decimals: int


def ablation_columns(runs: Sequence[Run]) -> list[Column]:
    """MIG benchmarks: ISR Avg, mIoU Avg, leakage Avg; SAM benchmarks: ISR Avg and the attribute
    pass rates over all boxes (as in Table 2). Only columns that some run has a value for."""
    columns = []
    for benchmark in mig_benchmarks(runs):
        columns += [
            Column(f"{benchmark} ISR", benchmark, ("mig", "avg", "isr"), 1),
            Column(f"{benchmark} mIoU", benchmark, ("mig", "avg", "miou"), 1),
            Column(f"{benchmark} leak", benchmark, ("leakage", "avg"), 2),
        ]
    sam = sam_benchmarks(runs)
    for benchmark in sam:
        prefix = f"{benchmark} " if len(sam) > 1 else ""  # headers stay apart with several benchmarks
        columns.append(Column(f"{benchmark} ISR", benchmark, ("mig", "avg", "isr"), 1))
        columns += [Column(prefix + title, benchmark, ("sam", "all", key), 1) for key, title in SAM_COLUMNS]
    return [column for column in columns if column_values(runs, column)]


def column_values(runs: Sequence[Run], column: Column) -> list[float]:
    """The column's value (%) for each run that has it."""
    values = []
    for run in runs:
        if column.benchmark in run.evals:
            value = _at(run.evals[column.benchmark].metrics, column.path)
            if value is not None:
                values.append(100.0 * value)
    return values


def spread(values: Sequence[float], kind: str = "half-range") -> float:
    """Half the range (max - min) / 2, the sample standard deviation (ddof 1), or the standard error
    of the mean (that std / sqrt(n))."""
    if kind not in SPREADS:
        raise ValueError(f"spread must be one of {', '.join(SPREADS)}, got '{kind}'")
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return 0.0
    if kind == "half-range":
        return float((values.max() - values.min()) / 2)
    std = float(values.std(ddof=1))
    return std / float(np.sqrt(len(values))) if kind == "sem" else std


def mean_spread_cell(values: Sequence[float], decimals: int = 1, kind: str = "half-range") -> str:
    """'mean ± spread' over seeds, the value alone for one seed, '-' for none."""
    if not len(values):
        return "-"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {spread(values, kind):.{decimals}f}"


def table_ablation(variants: Sequence[Variant], kind: str = "half-range") -> str:
    """Table 3: one row per variant with its seed count; a cell from fewer runs than the row has
    says so ("(n=1)")."""
    columns = ablation_columns([run for variant in variants for run in variant.runs])
    rows = []
    for variant in variants:
        cells = []
        for column in columns:
            values = column_values(variant.runs, column)
            cell = mean_spread_cell(values, column.decimals, kind)
            if values and len(values) != len(variant.runs):
                cell += f" (n={len(values)})"
            cells.append(cell)
        rows.append([variant.name, str(len(variant.runs)), *cells])
    return _markdown(["Variant", "seeds", *(column.header for column in columns)], rows)
