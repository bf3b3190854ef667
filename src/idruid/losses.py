"""Training losses as pure functions: flow matching (Eq. 11), noise prediction (SD1.5's L_ldm,
appendix B) and the instance disentanglement constraint, CAS (Eq. 3) and L_dis (Eq. 4): per
IDM layer (``disentangle_loss``) and averaged over the layers of a model (``idc_loss``).

Flow (SD3): sigma = 1 is pure noise, x_t = (1 - sigma) x_0 + sigma * noise, and the velocity
target is v = noise - x_0. DDPM (SD1.5): x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise,
and the target is the noise itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .boxes import covering_cells

_EPS = 1e-6  # as in the paper's pseudo-code (appendix H)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t on the rectified-flow path; sigma has shape (B,)."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_ldm of Eq. 11: mean squared error between predicted and true velocity."""
    return F.mse_loss(v_pred.float(), velocity_target(x0, noise).float())


def diffuse(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t of DDPM's forward process; alpha_bar (B,) is the cumulative product of (1 - beta)."""
    a = alpha_bar.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def noise_prediction_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_ldm for a noise-predicting backbone (SD1.5, Ho et al. 2020): MSE to the true noise."""
    return F.mse_loss(eps_pred.float(), noise.float())


def sample_sigmas(
    batch: int, mode: str = "logit_normal", generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Training noise levels in (0, 1): logit-normal(0, 1) as in SD3, or uniform."""
    if mode == "logit_normal":
        return torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    if mode == "uniform":
        return torch.rand(batch, generator=generator, device=device).clamp(1e-4, 1 - 1e-4)
    raise ValueError(f"time_sampling '{mode}': expected 'logit_normal' or 'uniform'")


def cas(attn: torch.Tensor, box_mask: torch.Tensor) -> torch.Tensor:
    """Cross-attention score (Eq. 3) per instance and head.

    attn: (B, N, heads, HW), each instance's attention mass over its caption tokens.
    box_mask: (B, N, HW), 1 inside instance i's box and 0 outside.
    Returns (B, N, heads): over background pixels, the mean absolute deviation of the
    attention from its background mean (the mean detached, as in appendix H).
    """
    if (
        attn.ndim != 4
        or box_mask.ndim != 3
        or attn.shape[:2] != box_mask.shape[:2]
        or attn.shape[-1] != box_mask.shape[-1]
    ):
        raise ValueError(
            f"cas: attn {tuple(attn.shape)} must be (B, N, heads, HW) and box_mask (B, N, HW) to match"
        )
    background = (1.0 - box_mask.to(attn.dtype)).unsqueeze(2)  # (B, N, 1, HW)
    count = background.sum(-1) + _EPS
    mean = (attn * background).sum(-1) / count  # (B, N, heads)
    return ((attn - mean.detach().unsqueeze(-1)).abs() * background).sum(-1) / count


def disentangle_loss(
    attn_pos: torch.Tensor, attn_neg: torch.Tensor, box_mask: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """L_dis (Eq. 4) = softplus(mean CAS(R+) - mean CAS(R-)), a scalar.

    ``valid`` (B, N) excludes padded instances from both means; None keeps all.
    """
    cas_pos, cas_neg = cas(attn_pos, box_mask), cas(attn_neg, box_mask)
    if valid is None:
        return F.softplus(cas_pos.mean() - cas_neg.mean())
    weight = valid.to(cas_pos.dtype).unsqueeze(-1).expand_as(cas_pos)
    total = weight.sum().clamp(min=1.0)
    return F.softplus((cas_pos * weight).sum() / total - (cas_neg * weight).sum() / total)


def idc_loss(attention_maps: list, boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L_dis (Eq. 4) averaged over the IDM layers, a scalar; each layer left (attn_pos, attn_neg,
    grid), maps (B, N, heads, h * w) on its own token grid (one for MM-DiT, two sizes in a UNet),
    against the boxes (B, N', 4) and ``valid`` (B, N') of the batch, N' >= N.

    The model drops instance slots that no sample uses, so N may be below the padded 10.
    """
    num = attention_maps[0][0].shape[1]
    boxes, valid = boxes[:, :num], valid[:, :num]
    masks = {}
    losses = []
    for pos, neg, grid in attention_maps:
        if grid not in masks:
            masks[grid] = covering_cells(boxes, *grid) * valid.unsqueeze(-1).to(boxes.dtype)
        losses.append(disentangle_loss(pos, neg, masks[grid], valid))
    return torch.stack(losses).mean()
