"""The box geometry of the shapes world's splits beside the real COCO-MIG's (README, "The world"):
sizes, aspect ratios, overlaps, nesting, same-colour pairs and border contact, each measured by
idruid.data.box_stats on the layouts themselves.

    python scripts/geometry_stats.py --coco-mig shared/data/coco-mig --out results/geometry

writes ``geometry.json`` and ``table.md``; without ``--coco-mig`` the real column is left out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from idruid.data.box_stats import box_stats
from idruid.data.shapes import ShapesPairedDataset, benchmark_layouts, prompt_only_layouts

TRAINING_PAIRS = 4000  # enough for percentiles to two digits
PROMPTS = 800

ROWS = (  # (key, label, how to show it)
    ("aspect", "height / width at 5 / 25 / 50 / 75 / 95%", "list"),
    ("aspect_out", "share outside 0.75-1.33", "share"),
    ("size", "sqrt(area) at 5 / 25 / 50 / 75 / 95%", "list"),
    ("size_below_0.2", "share with sqrt(area) < 0.2", "share"),
    ("size_above_0.45", "share with sqrt(area) > 0.45", "share"),
    ("smallest_side", "smallest box side", "number"),
    ("pairs_intersecting", "box pairs that intersect", "share"),
    ("pairs_iou_over_0.15", "box pairs with IoU > 0.15", "share"),
    ("covered_over_0.3", "boxes > 30% covered by another", "share"),
    ("covered_over_0.9", "boxes > 90% covered by another (nested)", "share"),
    ("same_color_pairs", "pairs of one colour", "share"),
    ("same_color_intersecting", "of those, boxes that intersect", "share"),
    ("touch_border", "boxes touching the border", "share"),
)


def splits() -> dict[str, list]:
    """The layouts of every split, by column name."""
    pairs = ShapesPairedDataset(size=TRAINING_PAIRS)
    return {
        "training pairs (open)": [pairs[i]["layout"] for i in range(TRAINING_PAIRS)],
        "RL prompts (coco)": prompt_only_layouts(PROMPTS),
        "shapes-mig (coco)": benchmark_layouts("shapes-mig"),
        "shapes-sam (open)": benchmark_layouts("shapes-sam"),
        "shapes-mig-narrow": benchmark_layouts("shapes-mig-narrow"),
        "shapes-strips": benchmark_layouts("shapes-strips"),
    }


def _cell(value, kind: str) -> str:
    if kind == "list":
        return " / ".join(f"{v:.2f}" for v in value)
    if kind == "share":
        return f"{100 * value:.0f}%"
    return f"{value:.3f}"


def table(columns: dict[str, dict]) -> str:
    header = "| | " + " | ".join(columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = [header, rule]
    lines.append(
        "| boxes (layouts) | " + " | ".join(f"{c['boxes']} ({c['layouts']})" for c in columns.values()) + " |"
    )
    for key, label, kind in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(c[key], kind) for c in columns.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coco-mig", help="folder of the real mig_bench_anno.yaml (optional)")
    parser.add_argument("--out", required=True, help="folder for geometry.json and table.md")
    args = parser.parse_args()
    columns = {}
    if args.coco_mig:
        from idruid.data.coco_mig import read_coco_mig

        columns["COCO-MIG (real)"] = box_stats(read_coco_mig(args.coco_mig))
    columns.update({name: box_stats(layouts) for name, layouts in splits().items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "geometry.json").write_text(json.dumps(columns, indent=1) + "\n")
    (out / "table.md").write_text(table(columns))
    print(table(columns))


if __name__ == "__main__":
    main()
