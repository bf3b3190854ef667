"""Does the RL stage's mean gradient point uphill on this model? (README, "Why RL lowers the
adapter-only model")

At a checkpoint's weights (no update), draws K independent RL gradients of a preset's RL stage,
each from its own fresh batch of rollouts, and writes ``direction.json`` (beside ``config.yaml``):

- ``signal_fraction``: |E g|^2 / E|g|^2 of one gradient (idruid.rl.probe.signal_fraction), with
  the gradients' norms;
- ``along_mean_gradient``: for each size s, the held-out reward R (idruid.rl.held_out) at the
  weights moved by +s x lr and -s x lr along the mean of the K gradients (downhill on L_rl),
  scaled to a root-mean-square of 1 per weight so that s x lr is an Adam-sized move, and the
  slope (R(+s) - R(-s)) / 2; ``along_random_direction``: the same along a random Gaussian
  direction. A gradient that carries signal has a positive slope; one that is noise has a slope
  of either sign, like the random direction's.

    python scripts/rl_direction_check.py --checkpoint runs/stage1/model --out results/narrow/direction/idm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from idruid.checkpoint import load_checkpoint
from idruid.config import load_config, save_config
from idruid.rl.held_out import HeldOutReward
from idruid.rl.probe import signal_fraction
from idruid.rl.stage import RLStage


def flat_gradient(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads, strict=True)]
    )


@torch.no_grad()
def reward_after_move(measure, model, params, start, direction: torch.Tensor, size: float) -> float:
    """The held-out reward at start + size * direction (flattened like ``params``), then restore."""
    offset = 0
    for p, p0 in zip(params, start, strict=True):
        p.copy_(p0 + size * direction[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    value = measure(model)
    for p, p0 in zip(params, start, strict=True):
        p.copy_(p0)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", default="shapes-rl", help="preset whose rl.* settings run")
    parser.add_argument("--out", required=True)
    parser.add_argument("--gradients", type=int, default=8)
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="the probe's Adam learning rate (one step's size)"
    )
    parser.add_argument(
        "--sizes", default="0.3,1,3", help="comma-separated move sizes in units of lr, each taken both ways"
    )
    parser.add_argument("--held-out", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = load_config(args.config, [f"seed={args.seed}", *args.overrides])
    model = load_checkpoint(args.checkpoint)
    stage = RLStage(config, model)
    measure = HeldOutReward(config, stage.reward, args.held_out, model.latent_shape)
    params = list(model.trainable_parameters())
    start = [p.detach().clone() for p in params]
    model.train()
    gradients, rewards = [], []
    for _ in range(args.gradients):
        loss, stats = stage.loss(model)
        gradients.append(flat_gradient(loss, params))
        rewards.append(stats.reward)
    gradients = torch.stack(gradients)
    downhill = -gradients.mean(dim=0)
    random = torch.randn(downhill.shape, generator=torch.Generator().manual_seed(args.seed))
    sizes = [float(size) for size in args.sizes.split(",")]

    def slopes(direction: torch.Tensor) -> dict[str, dict[str, float]]:
        unit = direction / direction.pow(2).mean().sqrt()
        table = {}
        for size in sizes:
            up, down = (
                reward_after_move(measure, model, params, start, unit, sign * size * args.lr)
                for sign in (1, -1)
            )
            table[str(size)] = {"plus": up, "minus": down, "slope": (up - down) / 2}
        return table

    result = {
        "checkpoint": args.checkpoint,
        "overrides": args.overrides,
        "gradients": args.gradients,
        "rollout_reward": sum(rewards) / len(rewards),
        "signal_fraction": signal_fraction(gradients),
        "gradient_norms": gradients.norm(dim=1).tolist(),
        "mean_gradient_norm": float(downhill.norm()),
        "held_out_reward": measure(model),
        "along_mean_gradient": slopes(downhill),
        "along_random_direction": slopes(random),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    (out / "direction.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "gradient_norms"}, indent=1))


if __name__ == "__main__":
    main()
