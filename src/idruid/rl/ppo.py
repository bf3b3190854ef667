"""PPO's clipped objective with a KL term to the old policy (paper Eq. 9-10).

The ratio rho = pi(a | s) / pi_old(a | s) is computed from log-probabilities of the same stored
action (the old policy's, from the action pool) under the current and the old policy. The loss
is the negative of PPO's clipped surrogate, max(-A rho, -A clip(rho, 1 - zeta, 1 + zeta)),
averaged, plus ``kl_weight`` times the KL to the old policy, as in the appendix's pseudo-code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PPOTerms:
    loss: torch.Tensor  # scalar: clipped surrogate + kl_weight * KL
    surrogate: torch.Tensor  # scalar: the clipped part
    kl: torch.Tensor  # scalar: mean KL
    clip_fraction: torch.Tensor  # scalar: share of ratios outside [1 - zeta, 1 + zeta]
    ratio: torch.Tensor  # the ratios (detached), same shape as the log-probs


def ppo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    kl: torch.Tensor | None = None,
    kl_weight: float = 1.0,
    weight: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> PPOTerms:
    """L_rl of Eq. 10. log_prob (with grad), old_log_prob and advantages: same shape, e.g.
    (B, steps), or (steps, B, N) for per-instance credit; kl: the KL to the old policy (any
    shape, averaged), or None to leave it out; weight: 0/1 of the log_prob's shape, which
    entries count (padded instances do not), default all; count: what the weighted sums are
    divided by, default the weight's sum (on P processes the global count / P: idruid.ranks)."""
    if log_prob.shape != old_log_prob.shape or log_prob.shape != advantages.shape:
        raise ValueError(
            f"log_prob {tuple(log_prob.shape)}, old_log_prob {tuple(old_log_prob.shape)} and "
            f"advantages {tuple(advantages.shape)} must have one shape"
        )
    if clip_range <= 0:
        raise ValueError(f"clip_range must be positive, got {clip_range}")
    advantages = advantages.detach()
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    weight = (
        torch.ones_like(advantages) if weight is None else weight.to(advantages.dtype).expand_as(advantages)
    )
    if count is None:
        count = weight.sum().clamp(min=1.0)
    surrogate = (torch.maximum(unclipped, clipped) * weight).sum() / count
    kl_mean = kl.mean() if kl is not None else torch.zeros((), device=log_prob.device)
    outside = (((ratio - 1.0).abs() > clip_range).to(weight.dtype) * weight).sum() / count
    return PPOTerms(surrogate + kl_weight * kl_mean, surrogate, kl_mean, outside, ratio.detach())
