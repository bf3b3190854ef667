"""The paper's tables from run folders, in markdown.

- Table 1 (COCO-MIG protocol): ISR and mIoU per level L2-L6 and Avg, one row per run, one table
  per MIG-style benchmark (shapes-mig, coco-mig), formatted by ``format_table_mig``, plus the
  leakage table where the benchmark was scored for it.
- Table 2 (LayoutSAM-eval protocol): spatial / colour / texture / shape pass rates over all boxes,
  then every numeric entry of the eval folder's quality.json (FID, IS, CLIP score, ...).
- Table 3 (ablation): one row per variant, each cell the mean over its seeds and a spread
  (half the range, or the sample standard deviation).

The same tables of one evaluation (what ``idruid eval`` writes: ``format_table_mig``,
``format_table_sam``, ``format_table_leakage``) take metrics keyed by method name, from
idruid.metrics.levels; rates are printed as percentages. Table 1 prints both averages that
published tables call "Avg", each column labelled below the table (levels.AVERAGES): "Avg" beside
I-DRUID's Table 1, "All" beside eval_mig.py's output and MIG_Bench's tables.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..metrics.levels import AVERAGES, SAM_ATTRIBUTES
from .probes import Probe
from .runs import Run, Variant, format_value, varying_keys

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


def _level_keys(metrics_by_name: dict[str, dict]) -> list[str]:
    keys = {k for m in metrics_by_name.values() for k in m if re.fullmatch(r"L\d+", k)}
    return sorted(keys, key=lambda k: int(k[1:]))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def _table(metrics_by_name: dict[str, dict], columns: list[tuple[str, Sequence[str]]]) -> str:
    """One row per method; a column is (title, the path of its rate in the metrics)."""
    rows = [[name] + [_pct(_at(m, path)) for _, path in columns] for name, m in metrics_by_name.items()]
    return _markdown(["Method"] + [title for title, _ in columns], rows)


def averages_legend(protocol: str) -> str:
    """The line under a table that says which average each of its "Avg" / "All" columns is."""
    labels = AVERAGES[protocol]
    return f"Avg: {labels['avg']}; All: {labels['all']}.\n"


def format_table_mig(metrics_by_name: dict[str, dict]) -> str:
    """Markdown like Table 1: ISR per level, Avg and All, then mIoU per level, Avg and All, in
    percent, and the legend of the two averages."""
    levels = _level_keys(metrics_by_name)
    columns = []
    for metric, title in (("isr", "ISR"), ("miou", "mIoU")):
        columns += [(f"{title} {lv}", (lv, metric)) for lv in levels]
        columns += [(f"{title} Avg", ("avg", metric)), (f"{title} All", ("all", metric))]
    return _table(metrics_by_name, columns) + "\n" + averages_legend("mig")


def format_table_sam(metrics_by_name: dict[str, dict]) -> str:
    """Markdown like Table 2: Spatial, Color, Texture, Shape over all boxes, in percent."""
    return _table(metrics_by_name, [(a.capitalize(), ("all", a)) for a in SAM_ATTRIBUTES])


def format_table_leakage(metrics_by_name: dict[str, dict]) -> str:
    """Markdown of leakage rates per level, their Avg and over all instances, in percent."""
    levels = _level_keys(metrics_by_name)
    columns = [(f"Leak {lv}", (lv, "rate")) for lv in levels]
    columns += [("Leak Avg", ("avg",)), ("Leak All", ("rate",))]
    return _table(metrics_by_name, columns)


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


def _first_to_last(records: Sequence[dict], key: str, show) -> str:
    """``show(first, last)`` of a record key, "-" where the probe did not measure it."""
    first, last = records[0].get(key), records[-1].get(key)
    return "-" if first is None or last is None else show(first, last)


# optional columns: (record key, header, how its first and last values are shown)
_END_COLUMNS = (
    ("held_out_off_reward", "off gain", lambda first, last: f"{last - first:+.3f}"),
    ("held_out_leakage", "leak %", lambda first, last: f"{100 * first:.2f} -> {100 * last:.2f}"),
    ("held_out_off_leakage", "off leak %", lambda first, last: f"{100 * first:.2f} -> {100 * last:.2f}"),
)


def probe_table(probes: Sequence[Probe]) -> str:
    """Markdown: one row per probe, the held-out reward at each checkpoint iteration and its gain,
    and where the probes measured them, the gain on the off geometry and both leakage rates from
    the first record to the last."""
    iterations = sorted({r["iteration"] for p in probes for r in p.records})
    configs = [p.config for p in probes]
    # keys that differ where they are set (a key only older configs lack is no difference)
    keys = [
        k
        for k in varying_keys(configs)
        if k != "seed" and len({format_value(c[k]) for c in configs if k in c}) > 1
    ]
    ends = [column for column in _END_COLUMNS if any(column[0] in r for p in probes for r in p.records)]
    header = ["Probe", *keys, *(f"it {i}" for i in iterations), "gain", *(c[1] for c in ends), "s / it"]
    rule = ["---"] * (1 + len(keys)) + ["---:"] * (len(iterations) + 2 + len(ends))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    for probe in probes:
        by_iteration = {r["iteration"]: r["held_out_reward"] for r in probe.records}
        cells = [by_iteration.get(i) for i in iterations]
        gain = probe.records[-1]["held_out_reward"] - probe.records[0]["held_out_reward"]
        per_it = probe.seconds_per_iteration
        row = [
            probe.name,
            *(format_value(probe.config.get(k, "(unset)")) for k in keys),
            *("-" if c is None else f"{c:.3f}" for c in cells),
            f"{gain:+.3f}",
            *(_first_to_last(probe.records, key, show) for key, _, show in ends),
            "-" if per_it is None else f"{per_it:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


