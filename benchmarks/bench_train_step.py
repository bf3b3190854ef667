"""Stage-1 training speed (steps per second of ``idruid train``), printed as ratios against the
first variant in the same run: by default the data in the training process
(``num_workers=0``, the ``shapes`` preset) against one DataLoader worker rendering the next
batches while the model steps (``num_workers=1``).

    python benchmarks/bench_train_step.py [--steps 100] [--repeats 2] [--threads 2]
        [--config shapes] [--variant num_workers=0 --variant num_workers=1]

Each run trains from scratch in a temporary folder, in its own process; the first log interval
(start-up, first batches) is left out. Variants alternate, so a machine that slows down part way
through slows every variant alike. Results go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from fresh_process import in_fresh_process

LOG_EVERY = 20


def _measure(config_name: str, overrides: list[str], steps: int, threads: int, queue) -> None:
    from idruid.config import load_config
    from idruid.train import train

    extra = [f"steps={steps}", f"threads={threads}", f"log_every={LOG_EVERY}", "checkpoint_every=100000"]
    config = load_config(config_name, overrides + extra)
    with tempfile.TemporaryDirectory() as out:
        train(config, out, progress=False)
        records = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    seconds = sum(LOG_EVERY / r["steps_per_s"] for r in records[1:])
    queue.put(LOG_EVERY * (len(records) - 1) / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="shapes")
    parser.add_argument("--variant", action="append", help="space-separated overrides; repeatable")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.steps < 2 * LOG_EVERY:
        parser.error(f"--steps must be at least {2 * LOG_EVERY} (the first {LOG_EVERY} are left out)")
    variants = args.variant or ["num_workers=0", "num_workers=1"]
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            rate = in_fresh_process(_measure, args.config, variant.split(), args.steps, args.threads)
            rates[variant].append(rate)
    base = statistics.mean(rates[variants[0]])
    print(f"| {args.config}, {args.threads} threads | steps / s (runs) | vs {variants[0]} |")
    print("|---|---|---:|")
    for variant, values in rates.items():
        runs, mean = ", ".join(f"{v:.2f}" for v in values), statistics.mean(values)
        print(f"| {variant} | {mean:.2f} ({runs}) | {mean / base:.2f}x |")


if __name__ == "__main__":
    main()
