"""Markdown tables shaped like the paper's Tables 1 and 2, and one of leakage rates, from the
metrics of levels.py keyed by method name; rates are printed as percentages. Table 1 prints both
averages that published tables call "Avg", each column labelled below the table (levels.AVERAGES):
"Avg" beside I-DRUID's Table 1, "All" beside eval_mig.py's output and MIG_Bench's tables."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..metrics.levels import AVERAGES, SAM_ATTRIBUTES


def _level_keys(metrics_by_name: dict[str, dict]) -> list[str]:
    keys = {k for m in metrics_by_name.values() for k in m if re.fullmatch(r"L\d+", k)}
    return sorted(keys, key=lambda k: int(k[1:]))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _table(
    metrics_by_name: dict[str, dict], columns: list[tuple[str, Callable[[dict], float | None]]]
) -> str:
    rows = [[name] + [_pct(get(m)) for _, get in columns] for name, m in metrics_by_name.items()]
    return _markdown(["Method"] + [title for title, _ in columns], rows)


def _at(*path: str) -> Callable[[dict], float | None]:
    def get(metrics: dict) -> float | None:
        value = metrics
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    return get


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
        columns += [(f"{title} {lv}", _at(lv, metric)) for lv in levels]
        columns += [(f"{title} Avg", _at("avg", metric)), (f"{title} All", _at("all", metric))]
    return _table(metrics_by_name, columns) + "\n" + averages_legend("mig")


def format_table_sam(metrics_by_name: dict[str, dict]) -> str:
    """Markdown like Table 2: Spatial, Color, Texture, Shape over all boxes, in percent."""
    return _table(metrics_by_name, [(a.capitalize(), _at("all", a)) for a in SAM_ATTRIBUTES])


def format_table_leakage(metrics_by_name: dict[str, dict]) -> str:
    """Markdown of leakage rates per level, their Avg and over all instances, in percent."""
    levels = _level_keys(metrics_by_name)
    columns = [(f"Leak {lv}", _at(lv, "rate")) for lv in levels]
    columns += [("Leak Avg", _at("avg")), ("Leak All", _at("rate"))]
    return _table(metrics_by_name, columns)
