"""Copy what a report is made from out of run folders (``idruid report --collect``): the README's
tables are regenerated from these copies under results/, without weights or images.

Kept: each run's config.yaml, log.jsonl, loss.png and report.md; a probe's probe.jsonl,
probe.json, probe.png and direction.json; each eval folder's metrics.json, table.md, grid.png and
audit.json (scripts/reward_audit.py). Checkpoints, the exported model and generated images stay
behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ReportError

RUN_FILES = (
    *("config.yaml", "log.jsonl", "loss.png", "report.md"),
    *("probe.jsonl", "probe.json", "probe.png", "direction.json"),
)
EVAL_FILES = ("metrics.json", "table.md", "grid.png", "audit.json")


def collect_run(run: str | Path, target: str | Path) -> int:
    """Replace ``target`` by the kept files of the run folder ``run``; returns how many were copied."""
    run, target = Path(run), Path(target)
    if not (run / "config.yaml").is_file():
        raise ReportError(f"{run}: not a run folder (no config.yaml)")
    if target.resolve() == run.resolve():
        raise ReportError(f"{target}: the copy would replace the run itself")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    copied = 0
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copyfile(run / name, target / name)
            copied += 1
    for folder in sorted(p for p in run.iterdir() if (p / "metrics.json").is_file()):
        (target / folder.name).mkdir()
        for name in EVAL_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, target / folder.name / name)
                copied += 1
    return copied
