"""Cost of one RL iteration (rollout, reward, critic, policy loss and its backward), printed as
ratios against idruid's default (``shapes-rl``: 64 rollouts = 16 prompts x 4, SDE on the first 20%
of the steps, group baseline, per-instance credit) in the same run:

- the SDE windows: first 20% (the paper), a random window of as many steps within the first half
  (Flow-GRPO-Fast) and the full trajectory (appendix E: 15.4 s vs 82.6 s per iteration, 5.4x);
- the baselines: the group mean against the critic (fitted ``critic_epochs`` times per iteration);
- the KL to the frozen reference (one more no-grad pass over the recorded steps) against none;
- the paper's PPO (8 rollouts, one per prompt) vs GRPO with group size 4 on the same 8 prompts
  (paper 4.4: 15.4 s vs about 60 s, 3.9x) and the paper's literal reading (``shapes-rl-literal``).

    python benchmarks/bench_rl.py [--repeats 3] [--threads 2] [--checkpoint DIR]

Each configuration runs in its own process. Results go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import time

from fresh_process import in_fresh_process

DEFAULT = "default: first 20%, group baseline"
CONFIGS = {
    # name: RLConfig overrides of the shapes-rl preset; batch_size counts trajectories
    DEFAULT: {},
    "random window (Flow-GRPO-Fast)": {"window": "random"},
    "full trajectory": {"window": "full"},
    "critic baseline, first 20%": {"baseline": "critic"},
    "critic baseline, full trajectory": {"baseline": "critic", "window": "full"},
    "no KL term": {"kl_weight": 0.0},
    "paper's PPO, 8 prompts x 1": {"batch_size": 8, "group_size": 1, "baseline": "critic"},
    "GRPO, 8 prompts x 4": {"algorithm": "grpo", "batch_size": 32, "group_size": 4},
    "literal reading (shapes-rl-literal)": "shapes-rl-literal",
}


def _measure(name: str, checkpoint: str | None, repeats: int, threads: int, queue) -> None:
    import torch

    from idruid.checkpoint import load_checkpoint
    from idruid.config import load_config
    from idruid.rl.stage import RLStage

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_checkpoint(checkpoint).train()
    overrides = CONFIGS[name]
    config = load_config(overrides if isinstance(overrides, str) else "shapes-rl")
    for key, value in {**({} if isinstance(overrides, str) else overrides), "critic_warmup": 0}.items():
        setattr(config.rl, key, value)
    config.rl.critic_gate = 0.0  # time the actor's iteration, not the gate's wait
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
    seconds = {}
    for name in CONFIGS:
        seconds[name] = in_fresh_process(_measure, name, args.checkpoint, args.repeats, args.threads)
    base = seconds[DEFAULT]
    print("| RL iteration | s / iteration | vs default |")
    print("|---|---:|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.2f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
