"""What RL adds to the policy steps' log-densities (idruid.policy_steps): the KL between two
policies of one step (Eq. 10) and per-instance log-probabilities of an action (rl.credit=instance).
"""

from __future__ import annotations

import torch

from ..policy_steps import gaussian_log_density


def gaussian_kl(mean: torch.Tensor, mean_old: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, scale^2) || N(mean_old, scale^2)) per sample (B,), averaged over the non-batch
    dimensions like the log-probabilities. Both policies share the step's std, so the KL is the
    squared distance of the means in units of that std (Eq. 10's KL term)."""
    per_dim = (mean.float() - mean_old.float()) ** 2 / (2.0 * scale.float() ** 2)
    return per_dim.mean(dim=tuple(range(1, mean.ndim)))


def box_log_probs(
    x_next: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """Per-instance log-probabilities of an action: the Gaussian log-density of x_next (M, C, H, W)
    under N(mean, scale^2) (scale (M, 1, 1, 1)), averaged over the channels and the cells of each
    instance's box, masks (M, N, H * W) (``idruid.boxes.covering_cells``) -> (M, N), 0 for empty masks.

    Eq. 6's reward is a sum over instances, and what decides an instance's term lies mostly in its
    box: crediting each term to its own box's density (``rl.credit=instance``) leaves out the
    noise of the other boxes, which only adds variance to the policy gradient.
    """
    if masks.shape[0] != x_next.shape[0] or masks.shape[-1] != x_next.shape[-2] * x_next.shape[-1]:
        raise ValueError(
            f"masks {tuple(masks.shape)} do not fit actions {tuple(x_next.shape)}: expected "
            f"({x_next.shape[0]}, N, {x_next.shape[-2] * x_next.shape[-1]})"
        )
    per_cell = gaussian_log_density(x_next, mean, scale).mean(dim=1).flatten(1)  # (M, H * W)
    masks = masks.to(per_cell.dtype)
    return torch.einsum("mp,mnp->mn", per_cell, masks) / masks.sum(dim=-1).clamp(min=1.0)


def front_masks(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each cell credited to one instance only: of the boxes covering it, the one drawn in front,
    masks (M, N, H * W) 0/1 and boxes (M, N, 4) -> the same masks with every cell kept in one box.

    Larger shapes are drawn first (the shapes world, and objects on a table), so the front box at a
    cell is the smallest covering it; of equal areas, the later instance. Where boxes nest, a box's
    own term is then credited to the cells where it can be seen, not to the cells of the smaller
    instances drawn over it (``rl.credit=visible``)."""
    num = masks.shape[1]
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # (M, N)
    ranked = torch.where(masks > 0, area[..., None], torch.full_like(masks, float("inf")))  # (M, N, HW)
    # argmin takes the first of equal minima: over the flipped instances that is the last one
    front = num - 1 - ranked.flip(1).argmin(dim=1)  # (M, HW)
    return masks * torch.nn.functional.one_hot(front, num).transpose(1, 2).to(masks.dtype)
