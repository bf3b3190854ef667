"""GRPO's group-relative advantages (the Table 3 row 4 ablation, after Flow-GRPO).

Instead of a critic, every prompt is rolled out ``group_size`` times and each trajectory's
advantage is its reward standardised within its group: A = (r - mean_group) / (std_group + eps).
The clipped PPO loss (idruid.rl.ppo) then uses these advantages.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """rewards (B,) or (B, N), ordered as B / group_size consecutive groups of one prompt each ->
    the same shape. Per-instance rewards (B, N) are standardised per instance over the group, whose
    members share the prompt and so the instances."""
    if group_size < 2:
        raise ValueError(f"GRPO needs group_size >= 2, got {group_size}")
    if rewards.ndim not in (1, 2) or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards must be (B,) or (B, N) with B a multiple of group_size={group_size}, got "
            f"{tuple(rewards.shape)}"
        )
    groups = rewards.float().view(-1, group_size, *rewards.shape[1:])
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).view(rewards.shape)
