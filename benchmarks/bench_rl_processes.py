"""One RL iteration on 1 and on 2 processes (one thread each), launched by accelerate as a user
runs it: rollouts per second, and the share of the iteration spent in the collectives that make
P processes at ``rl.batch_size=B`` train like one at P x B (gathering rewards and advantages,
summing statistics, averaging the critic's gradients; DDP's own gradient all-reduce is part of
the backward and is timed with it).

    python benchmarks/bench_rl_processes.py [--iterations 3] [--batch 8] [--baseline group]

Rows, each in its own launch: 1 process at B, 2 processes at B each (twice the rollouts, the
weak-scaling row), and 1 process at 2B (the same global batch as the 2-process row). The
iteration is ``RLStage.loss`` plus backward and optimiser step on the embedded shapes model with
the ``shapes-rl`` preset. Run it on an otherwise idle machine: on CPU, the cores are the
processes. Results go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rank_main(out: Path, iterations: int, batch: int, baseline: str) -> None:
    """One rank: time ``iterations`` RL iterations after a warm-up one, and the collectives."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from idruid.checkpoint import load_checkpoint
    from idruid.config import load_config
    from idruid.ranks import Ranks
    from idruid.rl.stage import RLStage

    torch.set_num_threads(1)
    accelerator = Accelerator()
    set_seed(0)
    model = load_checkpoint(None).train()
    config = load_config("shapes-rl", [f"rl.batch_size={batch}", f"rl.baseline={baseline}"])
    config.rl.critic_warmup, config.rl.critic_gate = 0, 0.0  # time the actor's iteration
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
    network, optimizer = accelerator.prepare(model, optimizer)
    model = accelerator.unwrap_model(network)
    spent = {"collectives": 0.0}
    for name in ("gather", "sum", "average_gradients"):  # time every collective of idruid.ranks
        original = getattr(Ranks, name)

        def timed(*args, _original=original, **kwargs):
            start = time.perf_counter()
            result = _original(*args, **kwargs)
            spent["collectives"] += time.perf_counter() - start
            return result

        setattr(Ranks, name, timed)
    stage = RLStage(config, model, accelerator.device, Ranks.of(accelerator))
    times, collectives = [], []
    for k in range(iterations + 1):  # the first iteration warms up
        accelerator.wait_for_everyone()
        spent["collectives"] = 0.0
        start = time.perf_counter()
        loss, _ = stage.loss(model, network)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        if k:
            times.append(time.perf_counter() - start)
            collectives.append(spent["collectives"])
    if accelerator.is_main_process:
        record = {"processes": accelerator.num_processes, "batch": batch, "seconds": times}
        record["collective_seconds"] = collectives
        out.write_text(json.dumps(record))
    accelerator.end_training()


def _launch(processes: int, batch: int, args) -> dict:
    out = Path(tempfile.mkdtemp()) / "timing.json"
    script = [__file__, "--rank-main", str(out), "--iterations", str(args.iterations)]
    script += ["--batch", str(batch), "--baseline", args.baseline]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"  # on a machine without GPUs (see README, "Many GPUs")
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", "0"]  # fmt: skip
    else:
        launch = [sys.executable]
    subprocess.run([*launch, *script], env=env, check=True, capture_output=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="rl.batch_size per process")
    parser.add_argument("--baseline", default="group", choices=["group", "critic", "batch"])
    parser.add_argument("--rank-main", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_main is not None:
        _rank_main(args.rank_main, args.iterations, args.batch, args.baseline)
        return
    rows = [(1, args.batch), (2, args.batch), (1, 2 * args.batch)]
    results = [_launch(processes, batch, args) for processes, batch in rows]
    base = None
    print(f"RL iteration, shapes-rl, {args.baseline} baseline, one thread a process, {args.iterations} timed")
    print("| processes x rl.batch_size | rollouts | s / iteration | rollouts / s | vs 1 x B | collectives |")
    print("|---|---:|---:|---:|---:|---:|")
    for record in results:
        seconds = sum(record["seconds"]) / len(record["seconds"])
        rollouts = record["processes"] * record["batch"]
        rate = rollouts / seconds
        base = base or rate
        share = sum(record["collective_seconds"]) / sum(record["seconds"])
        print(f"| {record['processes']} x {record['batch']} | {rollouts} | {seconds:.2f} | {rate:.2f} | "
              f"{rate / base:.2f}x | {100 * share:.1f}% |")  # fmt: skip


if __name__ == "__main__":
    main()
