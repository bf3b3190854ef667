"""Layout adapter: per-instance tokens from a Fourier embedding of the box and the caption.

Each instance becomes a short token sequence ``[null, layout, caption tokens...]``:
- ``null`` (position 0) is a learnable token that lets a pixel attend to nothing, so the
  attention mass on positions 1: is the instance's attention map (appendix H sums ``[..., 1:]``);
- ``layout`` = MLP(Fourier(box), pooled caption embedding), the GLIGEN-style grounding token;
- caption tokens (optional, ``ModelConfig.caption_max_length > 0``) = projected caption hidden
  states plus the projected Fourier box.
Padded slots (up to 10, section 4.1) get a learnable null instance token and no caption tokens.
The residual that injects these tokens into the backbone is zero-initialised (models/idm.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def fourier_embed(boxes: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """(..., 4) boxes in [0, 1] -> (..., 4 * 2 * num_freqs) features [sin(2^k pi x), cos(2^k pi x)]."""
    freqs = (2.0 ** torch.arange(num_freqs, device=boxes.device, dtype=boxes.dtype)) * math.pi
    angles = boxes.unsqueeze(-1) * freqs  # (..., 4, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


@dataclass
class InstanceTokens:
    tokens: torch.Tensor  # (B, N, L, D), L = 2 + caption tokens
    token_mask: torch.Tensor  # (B, N, L) bool, True for keys a pixel may attend to


# The modules that make the caption tokens only: at caption_max_length=0 they get no gradient,
# so the model neither trains nor saves them (LayoutModel.unused_prefixes)
CAPTION_TOKEN_MODULES = ("caption_proj", "box_proj", "caption_norm")


class LayoutAdapter(nn.Module):
    def __init__(self, text_dim: int, dim: int, num_freqs: int = 8, pooled_dim: int | None = None):
        super().__init__()
        self.num_freqs = num_freqs
        fourier_dim = 4 * 2 * num_freqs
        self.layout_mlp = nn.Sequential(
            nn.Linear(fourier_dim + (pooled_dim or text_dim), dim),
            nn.SiLU(),
            nn.Linear(dim, dim),
            nn.LayerNorm(dim),
        )
        self.caption_proj = nn.Linear(text_dim, dim)
        self.box_proj = nn.Linear(fourier_dim, dim)
        self.caption_norm = nn.LayerNorm(dim)
        self.null_token = nn.Parameter(torch.randn(dim) * 0.02)  # "attend to nothing"
        self.null_instance = nn.Parameter(torch.randn(dim) * 0.02)  # padding slots

    def forward(
        self,
        boxes: torch.Tensor,  # (B, N, 4)
        valid: torch.Tensor,  # (B, N) bool
        caption_hidden: torch.Tensor,  # (B, N, T, Dt)
        caption_pooled: torch.Tensor,  # (B, N, Dt)
        caption_mask: torch.Tensor,  # (B, N, T) bool
    ) -> InstanceTokens:
        batch, num, _ = boxes.shape
        fourier = fourier_embed(boxes, self.num_freqs)  # (B, N, 4*2*F)
        layout = self.layout_mlp(torch.cat([fourier, caption_pooled], dim=-1))  # (B, N, D)
        layout = torch.where(valid.unsqueeze(-1), layout, self.null_instance.to(layout.dtype))
        words = self.caption_norm(self.caption_proj(caption_hidden) + self.box_proj(fourier).unsqueeze(2))
        null = self.null_token.to(layout.dtype).expand(batch, num, 1, -1)
        tokens = torch.cat([null, layout.unsqueeze(2), words], dim=2)
        always = torch.ones(batch, num, 2, dtype=torch.bool, device=boxes.device)
        token_mask = torch.cat([always, caption_mask & valid.unsqueeze(-1)], dim=2)
        return InstanceTokens(tokens, token_mask)
