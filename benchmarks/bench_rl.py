"""Cost of one RL iteration (rollout, reward, critic, PPO loss and its backward), printed as ratios
against I-DRUID's default in the same run:

- early-step RL (the first 20% of the steps explore and are trained) vs full-trajectory RL
  (paper appendix E: 15.4 s vs 82.6 s per iteration, 5.4x);
- PPO with the critic vs GRPO with group size 4 (paper 4.4: 15.4 s vs about 60 s, 3.9x): GRPO
  needs group_size trajectories per prompt, so it rolls out 4x the trajectories for the same prompts;
- the paper's image credit vs per-instance credit (``rl.credit=instance``, our option).

    python benchmarks/bench_rl.py [--repeats 3] [--threads 2] [--checkpoint DIR]

Each configuration runs in its own process. Results go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

CONFIGS = {
    # name: RLConfig overrides; batch_size counts trajectories, prompts = batch_size / group size
    "ppo, early steps (I-DRUID)": {"algorithm": "ppo", "rl_fraction": 0.2, "batch_size": 8},
    "ppo, full trajectory": {"algorithm": "ppo", "rl_fraction": 1.0, "batch_size": 8},
    "ppo, early steps, per-instance credit": {
        "algorithm": "ppo",
        "rl_fraction": 0.2,
        "batch_size": 8,
        "credit": "instance",
    },
    "grpo x4, early steps": {"algorithm": "grpo", "rl_fraction": 0.2, "batch_size": 32, "group_size": 4},
    "grpo x4, full trajectory": {"algorithm": "grpo", "rl_fraction": 1.0, "batch_size": 32, "group_size": 4},
}


def _measure(name: str, checkpoint: str | None, repeats: int, threads: int, queue) -> None:
    import torch

    from idruid.checkpoint import load_checkpoint
    from idruid.config import TrainConfig
    from idruid.rl.stage import RLStage

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_checkpoint(checkpoint).train()
    config = TrainConfig(model=model.config)
    for key, value in {**CONFIGS[name], "critic_warmup": 0}.items():
        setattr(config.rl, key, value)
    config.layout_fraction = 1.0
    stage = RLStage(config, model)
    times = []
    for k in range(repeats + 1):  # the first iteration warms up
        start = time.perf_counter()
        loss, _ = stage.loss(model)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if k:
            times.append(time.perf_counter() - start)
    queue.put(sum(times) / len(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="idruid checkpoint (default: the embedded model)")
    args = parser.parse_args()
    context = mp.get_context("spawn")
    seconds = {}
    for name in CONFIGS:
        queue = context.Queue()
        process = context.Process(
            target=_measure, args=(name, args.checkpoint, args.repeats, args.threads, queue)
        )
        process.start()
        seconds[name] = queue.get()
        process.join()
    base = seconds["ppo, early steps (I-DRUID)"]
    print("| RL iteration | prompts | trajectories | s / iteration | vs I-DRUID |")
    print("|---|---:|---:|---:|---:|")
    for name, value in seconds.items():
        config = CONFIGS[name]
        prompts = config["batch_size"] // config.get("group_size", 1)
        print(f"| {name} | {prompts} | {config['batch_size']} | {value:.2f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
