"""The critic of the RL stage (paper Eq. 7-8): phi(s_t) predicts the final reward from a state.

The state s_t = (x_t, t, y) is the noisy sample, its noise level and the embedded layout y
(the frozen caption embeddings and a Fourier embedding of the boxes). The reward of Eq. 6 is a
sum over instances, so the critic is one: a light MLP scores each instance from what x_t holds
inside its box (a 4x4 bilinear crop), a summary of the whole x_t, the instance's caption and box
and the noise level, and the scores of the valid instances add up. All instances at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.adapter import fourier_embed

CROP = 4  # bilinear samples per box side
GLOBAL_POOL = 4  # side of the average-pooled summary of x_t


def box_crops(x: torch.Tensor, boxes: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """Bilinear size x size samples of x (B, C, H, W) inside each box (B, N, 4) -> (B, N, C * size^2)."""
    batch, num = boxes.shape[:2]
    steps = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size  # cell centres in [0, 1]
    x0, y0, x1, y1 = boxes.to(x.dtype).unbind(-1)  # (B, N)
    xs = x0[..., None] + (x1 - x0)[..., None] * steps  # (B, N, size)
    ys = y0[..., None] + (y1 - y0)[..., None] * steps
    grid = torch.stack(
        [xs[:, :, None, :].expand(-1, -1, size, -1), ys[:, :, :, None].expand(-1, -1, -1, size)], dim=-1
    )  # (B, N, size, size, 2) as (x, y) in [0, 1]
    grid = (grid * 2.0 - 1.0).view(batch, num * size, size, 2)
    samples = F.grid_sample(x, grid, mode="bilinear", align_corners=False)  # (B, C, N * size, size)
    return samples.view(batch, x.shape[1], num, size, size).permute(0, 2, 1, 3, 4).flatten(2)


class Critic(nn.Module):
    """phi(x_t, t, layout) -> (B,) predicted reward (Eq. 7); t is the process's unit time. With
    ``per_instance=True`` it returns the instances' scores (B, N) before they are summed (zero for
    padding): the baselines of per-instance credit (``rl.credit=instance``)."""

    def __init__(self, in_channels: int, caption_dim: int, hidden: int = 256, fourier_freqs: int = 8):
        super().__init__()
        self.fourier_freqs = fourier_freqs
        self.summary = nn.Sequential(nn.Linear(in_channels * GLOBAL_POOL**2, hidden), nn.SiLU())
        inputs = in_channels * CROP**2 + hidden + caption_dim + 4 * 2 * fourier_freqs + 2 * fourier_freqs
        self.score = nn.Sequential(
            nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )

    def forward(
        self,
        x_t: torch.Tensor,  # (B, C, H, W)
        time: torch.Tensor,  # (B,) in [0, 1], 1 = pure noise (the process's unit_time)
        caption_pooled: torch.Tensor,  # (B, N, Dt)
        boxes: torch.Tensor,  # (B, N, 4)
        valid: torch.Tensor,  # (B, N) bool
        per_instance: bool = False,
    ) -> torch.Tensor:
        x_t = x_t.float()
        num = boxes.shape[1]
        summary = self.summary(F.adaptive_avg_pool2d(x_t, GLOBAL_POOL).flatten(1))  # (B, hidden)
        time = fourier_embed(time.float()[:, None], self.fourier_freqs)  # (B, 2F)
        features = torch.cat(
            [
                box_crops(x_t, boxes),
                summary[:, None].expand(-1, num, -1),
                caption_pooled.float(),
                fourier_embed(boxes.float(), self.fourier_freqs),
                time[:, None].expand(-1, num, -1),
            ],
            dim=-1,
        )
        scores = self.score(features).squeeze(-1) * valid.to(x_t.dtype)  # (B, N)
        return scores if per_instance else scores.sum(dim=1)


def critic_loss(
    predicted: torch.Tensor,
    reward: torch.Tensor,
    valid: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 7: mean of (phi(s_t) - r)^2; over the ``valid`` entries only when given (per-instance
    values and rewards, where padded instances must not count), their sum divided by ``count``
    (default the number of valid entries; on P processes the global count / P: idruid.ranks)."""
    squared = (predicted - reward.detach()) ** 2
    if valid is None:
        return squared.mean()
    weight = valid.to(squared.dtype).expand_as(squared)
    return (squared * weight).sum() / (weight.sum().clamp(min=1.0) if count is None else count)
