"""What one Table 3 row gains over another, per benchmark, with its standard error: the README's
"row 6 - row 2" table, regenerated from the committed runs.

    python scripts/table3_gain.py results/table3/rl-s* -- results/table3/none-s*
    python scripts/table3_gain.py --spec results/table3.yaml
    python scripts/table3_gain.py --rows "2: IDM, no RL=results/table3/none-s*" "6: ...=..."

With --spec (a report spec, idruid.reports.spec) or --rows, the README's condensed Table 3
instead: per row, the mean ± standard error over its seeds of ISR on each benchmark, leakage on
the short-caption ones and the judge's spatial verdict on shapes-mig (`idruid report --spec
results/table3.yaml --out OUT` writes every column).

Each side's mean over its seeds; the difference's standard error is sqrt(se_a^2 + se_b^2), each
se the sample standard deviation over seeds / sqrt(seeds) (idruid.reports.tables.spread; 0 for
one seed). ISR and mIoU are COCO-MIG's means over levels, leakage the mean over levels, spatial
and shape the judge's rates over all boxes (%).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from idruid.reports.tables import spread

BENCHMARKS = ("shapes-mig", "shapes-strips", "shapes-sam", "shapes-mig-narrow")
METRICS = {
    "ISR": ("mig", "avg", "isr"),
    "mIoU": ("mig", "avg", "miou"),
    "leakage": ("leakage", "avg"),
    "spatial": ("sam", "all", "spatial"),
    "shape": ("sam", "all", "shape"),
}


def values(runs: list[Path], benchmark: str, path: tuple[str, ...]) -> list[float]:
    out = []
    for run in runs:
        file = run / f"eval-{benchmark}" / "metrics.json"
        if file.is_file():
            value = json.loads(file.read_text())
            for key in path:
                value = value[key]
            out.append(100.0 * value)
    return out


def _scored(runs: list[Path]) -> int:
    return sum(any((run / f"eval-{b}" / "metrics.json").is_file() for b in BENCHMARKS) for run in runs)


def table(first: list[Path], second: list[Path]) -> str:
    lines = [
        f"| benchmark ({_scored(first)} vs {_scored(second)} seeds) | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for benchmark in BENCHMARKS:
        cells = []
        for path in METRICS.values():
            a, b = values(first, benchmark, path), values(second, benchmark, path)
            if not a or not b:
                cells.append("-")
                continue
            gain, se = float(np.mean(a) - np.mean(b)), math.hypot(spread(a, "sem"), spread(b, "sem"))
            cells.append(f"{gain:+.2f} ± {se:.2f}")
        lines.append(f"| {benchmark} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


ROW_COLUMNS = (  # header, benchmark, metric
    *((f"{b} ISR", b, "ISR") for b in BENCHMARKS),
    ("shapes-mig leak", "shapes-mig", "leakage"),
    ("shapes-strips leak", "shapes-strips", "leakage"),
    ("shapes-mig spatial", "shapes-mig", "spatial"),
)


def rows(named: list[str]) -> str:
    """One line per NAME=GLOB: the row's runs (the folders the glob matches, in order)."""
    pairs = [item.split("=", 1) for item in named]
    return row_table([(name, sorted(Path().glob(pattern))) for name, pattern in pairs])


def spec_rows(path: str) -> str:
    """One line per row of a report spec that has runs."""
    from idruid.reports.spec import load_spec

    spec = load_spec(path)
    grouped: dict[str, list[Path]] = {}
    for run in spec.runs:
        grouped.setdefault(spec.labels[run], []).append(run)
    return row_table(list(grouped.items()))


def row_table(named_runs: list[tuple[str, list[Path]]]) -> str:
    lines = [
        "| row | seeds | " + " | ".join(header for header, _, _ in ROW_COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(ROW_COLUMNS),
    ]
    for name, runs in named_runs:
        cells = []
        for _, benchmark, metric in ROW_COLUMNS:
            xs = values(runs, benchmark, METRICS[metric])
            decimals = 2 if metric == "leakage" else 1
            se = f" ± {spread(xs, 'sem'):.{decimals}f}" if len(xs) > 1 else ""
            cells.append(f"{np.mean(xs):.{decimals}f}{se}" if xs else "-")
        lines.append(f"| {name} | {_scored(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--rows"]:
        print(rows(args[1:]))
        return
    if args[:1] == ["--spec"] and len(args) == 2:
        print(spec_rows(args[1]))
        return
    if "--" not in args or args.index("--") in (0, len(args) - 1) or "-h" in args or "--help" in args:
        raise SystemExit(__doc__)
    split = args.index("--")
    print(table([Path(p) for p in args[:split]], [Path(p) for p in args[split + 1 :]]))


if __name__ == "__main__":
    main()
