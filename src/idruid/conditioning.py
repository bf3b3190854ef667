"""What a layout-to-image model is conditioned on, as tensors: the frozen text encoder's outputs
for the prompt and the captions, the boxes, which instance slots are real and whether the layout
is on. Below the models, the sampler and the RL stage, which all pass it around.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch


@dataclass
class Conditioning:
    """The whole conditioning of a batch of layouts: the frozen text encoder's outputs (prompt and
    captions), the boxes, which instance slots are real, and whether the layout is on."""

    prompt_hidden: torch.Tensor  # (B, Lp, Dt)
    prompt_pooled: torch.Tensor  # (B, Dt)
    caption_hidden: torch.Tensor  # (B, N, T, Dt)
    caption_pooled: torch.Tensor  # (B, N, Dt)
    caption_mask: torch.Tensor  # (B, N, T) bool
    boxes: torch.Tensor  # (B, N, 4)
    valid: torch.Tensor  # (B, N) bool
    enabled: torch.Tensor  # (B,) float: 0 drops the layout (classifier-free guidance, dropout)

    def to(self, device) -> Conditioning:
        return Conditioning(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        return Conditioning(
            **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])}
        )

    def rows(self, index: torch.Tensor | slice) -> Conditioning:
        """The conditioning of the batch rows ``index`` (an index tensor or a slice)."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.valid.device)
        return Conditioning(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def trimmed(self) -> Conditioning:
        """Drop instance slots and caption tokens that no sample of the batch uses.

        Padding to 10 instances keeps shapes fixed, but every padded slot costs attention;
        the outputs are unchanged because padded slots and tokens are masked out anyway.
        """
        num = max(int(self.valid.sum(1).max()), 1)
        tokens = max(int(self.caption_mask.sum(-1).max()), 1)
        return Conditioning(
            prompt_hidden=self.prompt_hidden,
            prompt_pooled=self.prompt_pooled,
            caption_hidden=self.caption_hidden[:, :num, :tokens],
            caption_pooled=self.caption_pooled[:, :num],
            caption_mask=self.caption_mask[:, :num, :tokens],
            boxes=self.boxes[:, :num],
            valid=self.valid[:, :num],
            enabled=self.enabled,
        )

    def __len__(self) -> int:
        return self.prompt_hidden.shape[0]
