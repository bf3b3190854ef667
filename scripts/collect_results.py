"""Copy what the README's tables are made from out of run folders into results/ (no weights).

    python scripts/collect_results.py runs/t3 results/table3      # every run folder under runs/t3
    python scripts/collect_results.py runs/probe results/probe

Keeps each run's config.yaml, log.jsonl and loss.png, each eval folder's metrics.json, table.md,
grid.png and audit.json (scripts/reward_audit.py), a probe's probe.jsonl, probe.json and
probe.png, and the direction.json of scripts/rl_direction_check.py; leaves checkpoints, the
exported model and the generated images behind. ``idruid report results/...`` reads the copies.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

RUN_FILES = (
    *("config.yaml", "log.jsonl", "loss.png", "report.md"),
    *("probe.jsonl", "probe.json", "probe.png", "direction.json"),
)
EVAL_FILES = ("metrics.json", "table.md", "grid.png", "audit.json")


def collect(run: Path, target: Path) -> int:
    copied = 0
    for name in RUN_FILES:
        if (run / name).is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / name, target / name)
            copied += 1
    for sub in sorted(p for p in run.iterdir() if (p / "metrics.json").is_file()):
        (target / sub.name).mkdir(parents=True, exist_ok=True)
        for name in EVAL_FILES:
            if (sub / name).is_file():
                shutil.copyfile(sub / name, target / sub.name / name)
                copied += 1
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a run folder, or a folder of run folders")
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    runs = [args.source] if (args.source / "config.yaml").is_file() else sorted(args.source.iterdir())
    for run in runs:
        if run.is_dir() and (run / "config.yaml").is_file():
            print(f"{run} -> {args.target / run.name}: {collect(run, args.target / run.name)} files")


if __name__ == "__main__":
    main()
