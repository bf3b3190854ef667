"""``idruid rl-probe --direction``: does the RL stage's mean gradient point uphill on this model?

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

One process: the gradients are those of the unwrapped model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .held_out import HeldOutReward
from .probe import signal_fraction
from .stage import RLStage


def flat_gradient(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """d loss / d params as one vector (zeros for parameters the loss does not reach)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads, strict=True)]
    )


@torch.no_grad()
def reward_after_move(measure, model, params, start, direction: torch.Tensor, size: float) -> float:
    """The held-out reward at start + size * direction (flattened like ``params``); the weights
    are put back to ``start`` afterwards."""
    offset = 0
    for p, p0 in zip(params, start, strict=True):
        p.copy_(p0 + size * direction[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    value = measure(model)
    for p, p0 in zip(params, start, strict=True):
        p.copy_(p0)
    return value


def run_direction_check(
    config,
    model,
    out: str | Path,
    gradients: int = 8,
    lr: float = 1e-4,
    sizes: Sequence[float] = (0.3, 1.0, 3.0),
    held_out: int = 96,
    seed: int = 0,
    checkpoint: str | None = None,
) -> dict:
    """Measure and write ``out/direction.json``; returns what it wrote."""
    from ..config import save_config

    if gradients < 2:
        raise ValueError(f"the signal fraction needs at least 2 gradients, got {gradients}")
    stage = RLStage(config, model)
    if stage.reward is None:
        raise ValueError(f"rl.algorithm={config.rl.algorithm} has no reward to probe (use ppo or grpo)")
    measure = HeldOutReward(config, stage.reward, held_out, model.latent_shape)
    params = list(model.trainable_parameters())
    start = [p.detach().clone() for p in params]
    model.train()
    drawn, rewards = [], []
    for _ in range(gradients):
        loss, stats = stage.loss(model)
        if loss is None:
            raise ValueError("the critic gate held the actor: set rl.critic_warmup=0 rl.critic_gate=0")
        drawn.append(flat_gradient(loss, params))
        rewards.append(stats.reward)
    drawn = torch.stack(drawn)
    downhill = -drawn.mean(dim=0)
    random = torch.randn(downhill.shape, generator=torch.Generator().manual_seed(seed))

    def slopes(direction: torch.Tensor) -> dict[str, dict[str, float]]:
        unit = direction / direction.pow(2).mean().sqrt()
        table = {}
        for size in sizes:
            up, down = (
                reward_after_move(measure, model, params, start, unit, sign * size * lr) for sign in (1, -1)
            )
            table[str(size)] = {"plus": up, "minus": down, "slope": (up - down) / 2}
        return table

    result = {
        "checkpoint": checkpoint or "embedded",
        "gradients": gradients,
        "rollout_reward": sum(rewards) / len(rewards),
        "signal_fraction": signal_fraction(drawn),
        "gradient_norms": drawn.norm(dim=1).tolist(),
        "mean_gradient_norm": float(downhill.norm()),
        "held_out_reward": measure(model),
        "along_mean_gradient": slopes(downhill),
        "along_random_direction": slopes(random),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    (out / "direction.json").write_text(json.dumps(result, indent=1))
    return result
