"""Advantages of the RL stage: reward minus a baseline, standardised and clipped.

A baseline predicts E[r | prompt]: the critic (paper Eq. 8), the mean reward of the rollouts of
the same prompt (a group, as GRPO) or of the whole batch. Between prompts the reward varies ten
times more than within one (README, "The RL stage"), so what a baseline misses of E[r | prompt]
is noise in the policy gradient. The advantages are then divided by a standard deviation (of the
batch, or of each group as Flow-GRPO does) so that the step size does not depend on the reward's
scale, and clipped to +-``limit`` (DDPO, Flow-GRPO) so that no single rollout dominates.

Tensors are laid out (..., B) or (..., B, N): B rollouts ordered as consecutive groups of one
prompt each, N instances (per-instance credit, padded); ``weight`` (same shape, 0/1) says which
entries count.
"""

from __future__ import annotations

import torch


def _groups(values: torch.Tensor, group_size: int, batch_dim: int) -> torch.Tensor:
    """Split the batch dimension into (B / group_size, group_size)."""
    batch = values.shape[batch_dim]
    if group_size < 1 or batch % group_size:
        raise ValueError(f"batch of {batch} rollouts is not a multiple of group_size={group_size}")
    shape = (*values.shape[:batch_dim], batch // group_size, group_size, *values.shape[batch_dim + 1 :])
    return values.reshape(shape)


def group_means(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each rollout's group mean, rewards (B,) or (B, N) -> the same shape (the group baseline)."""
    groups = _groups(rewards.float(), group_size, 0)
    return groups.mean(dim=1, keepdim=True).expand_as(groups).reshape(rewards.shape)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Flow-GRPO's advantages: (r - group mean) / (group std + eps), rewards (B,) or (B, N); per
    instance, each instance is standardised over the group (whose members share the prompt)."""
    if group_size < 2:
        raise ValueError(f"GRPO needs group_size >= 2, got {group_size}")
    if rewards.ndim not in (1, 2):
        raise ValueError(f"rewards must be (B,) or (B, N), got {tuple(rewards.shape)}")
    return standardise(rewards.float() - group_means(rewards, group_size), "group", group_size, eps=eps)


def standardise(
    advantages: torch.Tensor,
    mode: str,
    group_size: int = 1,
    weight: torch.Tensor | None = None,
    batch_dim: int = 0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Divide advantages by a std (not re-centred: the baseline did that). mode "batch": the std of
    all counted entries; "group": the std within each group of ``group_size`` rollouts along
    ``batch_dim`` (each instance and step on its own); "none": unchanged."""
    if mode == "none":
        return advantages
    if weight is None:
        weight = torch.ones_like(advantages)
    weight = weight.to(advantages.dtype).expand_as(advantages)
    if mode == "batch":
        count = weight.sum().clamp(min=1.0)
        mean = (advantages * weight).sum() / count
        std = (((advantages - mean) ** 2 * weight).sum() / count).sqrt()
        return advantages / (std + eps)
    if mode == "group":
        groups = _groups(advantages, group_size, batch_dim)
        std = groups.std(dim=batch_dim + 1, unbiased=False, keepdim=True)
        return (groups / (std + eps)).reshape(advantages.shape)
    raise ValueError(f"advantage std '{mode}': expected batch, group or none")


def clip_advantages(advantages: torch.Tensor, limit: float) -> torch.Tensor:
    """Clip to [-limit, limit]; limit 0 leaves them as they are."""
    return advantages.clamp(-limit, limit) if limit > 0 else advantages


def one_sign(advantages: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether every counted advantage has one sign (zeros fit either): a batch whose gradient
    only pushes all log-probabilities the same way, which a baseline should make rare."""
    counted = advantages if weight is None else advantages[weight.bool().expand_as(advantages)]
    return bool((counted >= 0).all() or (counted <= 0).all())


def within_group_variance(rewards: torch.Tensor, group_size: int) -> float:
    """The mean over groups of the unbiased reward variance within a group (B,): what no baseline
    of the prompt can explain, the floor of a critic's MSE."""
    if group_size < 2:
        raise ValueError(f"a within-group variance needs group_size >= 2, got {group_size}")
    return float(_groups(rewards.float(), group_size, 0).var(dim=1, unbiased=True).mean())
