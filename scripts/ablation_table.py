"""The mini paper Table 3 alone, printed as markdown (``idruid report`` writes it with Tables 1-2,
the plots and the grids; this prints just the table, naming each row yourself).

    python scripts/ablation_table.py "2 IDM=runs/t3/none-s0,runs/t3/none-s1" "6 IDM+PPO=runs/t3/ppo-s0,..."

Each argument is NAME=RUN[,RUN...]: the seeds of one variant (their configs may differ only in the
seed). Eval folders are found in each RUN as ``idruid report`` finds them. Cells read
"mean ± half-range" over the seeds, in percent (``--std`` as first argument: mean ± std).
"""

from __future__ import annotations

import sys
from pathlib import Path

from idruid.reports.runs import ReportError, group_runs, load_runs
from idruid.reports.tables import table_ablation


def main(arguments: list[str]) -> None:
    spread = "half-range"
    if arguments[:1] == ["--std"]:
        spread, arguments = "std", arguments[1:]
    if not arguments or any("=" not in a for a in arguments):
        sys.exit(__doc__)
    paths, labels = [], {}
    for argument in arguments:
        name, runs = argument.rsplit("=", 1)
        for run in runs.split(","):
            paths.append(run)
            labels[Path(run).resolve()] = name
    try:
        print(table_ablation(group_runs(load_runs(paths, labels)), spread), end="")
    except ReportError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main(sys.argv[1:])
