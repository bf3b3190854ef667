"""The metrics by level: COCO-MIG's ISR / mIoU, the leakage rate and LayoutSAM-eval's pass rates
per level ("L2".."L6"), and two averages that published tables both call "Avg":

- "all": over all instances (all images for the success ratio), what MIG_Bench's eval_mig.py
  prints and what MIG_Bench's and MIGC's tables report; LayoutSAM-eval's scores are this
  micro-average over all boxes, as CreatiLayout's script computes them;
- "avg": the mean of the level values, what the I-DRUID paper's Table 1 reports.

On COCO-MIG (160 images per level) they differ: "all" weights L6 three times as much as L2.
Each aggregate names them under "averages" (AVERAGES); levels with no image are left out of both
(eval_mig.py divides by zero there). Rates are fractions in [0, 1]; checks.py makes the
per-instance verdicts they count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from idruid.layout import Layout

from .checks import InstanceScore, leak_counts

if TYPE_CHECKING:
    from idruid.scorers.protocols import RegionJudgement

SAM_ATTRIBUTES = ("spatial", "color", "texture", "shape")

# what each average key of an aggregate is, by where it is used (written to metrics.json)
AVERAGES = {
    "mig": {"avg": "mean of levels (I-DRUID Table 1)", "all": "all instances (eval_mig.py)"},
    "sam": {"avg": "mean of levels", "all": "all boxes (score_layoutsam_benchmark.py)"},
}


def _level_key(level: int) -> str:
    return f"L{level}"


def _group_by_level(items: Sequence, levels: Sequence[int]) -> dict[str, list]:
    if len(items) != len(levels):
        raise ValueError(f"{len(items)} images scored but {len(levels)} levels given")
    groups: dict[str, list] = {}
    for level in sorted(set(levels)):
        groups[_level_key(level)] = [item for item, lv in zip(items, levels, strict=True) if lv == level]
    return groups


def _mean_over_levels(per_level: dict[str, dict], keys: Sequence[str]) -> dict[str, float]:
    return {k: float(np.mean([v[k] for v in per_level.values()])) if per_level else 0.0 for k in keys}


def _mig_summary(rows: list[list[InstanceScore]]) -> dict:
    flat = [s for row in rows for s in row]
    n = len(flat)
    return {
        "isr": sum(s.success for s in flat) / n if n else 0.0,
        "miou": sum(s.miou_value for s in flat) / n if n else 0.0,
        "success_ratio": sum(all(s.success for s in row) for row in rows) / len(rows) if rows else 0.0,
        "instances": n,
        "images": len(rows),
    }


def aggregate_mig(scores: list[list[InstanceScore]], levels: list[int]) -> dict:
    """ISR, mIoU and image success ratio per level ("L2".."L6"), over all instances ("all",
    eval_mig.py's), their mean over levels ("avg", I-DRUID Table 1's) and those labels.

    ISR and mIoU average over instances; success_ratio is the share of images whose instances
    all succeed.
    """
    per_level = {key: _mig_summary(rows) for key, rows in _group_by_level(scores, levels).items()}
    return {
        **per_level,
        "all": _mig_summary(scores),
        "avg": _mean_over_levels(per_level, ("isr", "miou", "success_ratio")),
        "averages": AVERAGES["mig"],
    }


# ----------------------------------------------------------------------------- leakage


def leakage(images, layouts: Sequence[Layout], dominance: float = 0.5) -> dict:
    """Attribute-leakage rate: how often an instance shows another instance's colour.

    For each instance whose caption names a colour, take the pixels of its target box that lie
    in any of the 7 COCO-MIG colour ranges. It leaks when the most frequent colour there is named
    by another instance of the layout, is not its own (a tie with its own colour does not leak),
    and covers >= ``dominance`` of those coloured pixels. Returns ``{"rate", "leaked",
    "instances"}``, the same per level ("L2", ...), and "avg", the mean of the per-level rates.
    """
    per_image = leak_counts(images, layouts, dominance)  # (leaked, instances with a colour)
    summary = _leak_summary(per_image)
    per_level = {
        key: _leak_summary(rows)
        for key, rows in _group_by_level(per_image, [lay.level for lay in layouts]).items()
    }
    return {**summary, **per_level, "avg": _mean_over_levels(per_level, ("rate",))["rate"]}


def _leak_summary(rows: list[tuple[int, int]]) -> dict:
    leaked = sum(r[0] for r in rows)
    total = sum(r[1] for r in rows)
    return {"rate": leaked / total if total else 0.0, "leaked": leaked, "instances": total}


# ----------------------------------------------------------------------------- LayoutSAM-eval


def _sam_summary(rows: list[list[RegionJudgement]]) -> dict:
    flat = [j for row in rows for j in row]
    n = len(flat)
    out: dict = {a: sum(bool(getattr(j, a)) for j in flat) / n if n else 0.0 for a in SAM_ATTRIBUTES}
    return {**out, "instances": n, "images": len(rows)}


def aggregate_sam(judgements: list[list[RegionJudgement]], levels: list[int]) -> dict:
    """Spatial / colour / texture / shape pass rates over all boxes ("all", the script's
    micro-averages), per level, their mean over levels ("avg") and those labels."""
    per_level = {key: _sam_summary(rows) for key, rows in _group_by_level(judgements, levels).items()}
    return {
        **per_level,
        "all": _sam_summary(judgements),
        "avg": _mean_over_levels(per_level, SAM_ATTRIBUTES),
        "averages": AVERAGES["sam"],
    }
