"""Print the tables of several `idruid eval` folders side by side (for README / reports).

    python scripts/compare_runs.py "I-DRUID=runs/shapes/eval-sam" "adapter only=runs/baseline/eval-sam"

Each argument is NAME=FOLDER (split at the last "=").
"""

from __future__ import annotations

import sys

from idruid.evaluate import load_metrics, tables_markdown


def main(pairs: list[str]) -> None:
    if not pairs or any("=" not in p for p in pairs):
        sys.exit(__doc__)
    runs = {name: load_metrics(folder) for name, folder in (p.rsplit("=", 1) for p in pairs)}
    print(tables_markdown(runs))


if __name__ == "__main__":
    main(sys.argv[1:])
