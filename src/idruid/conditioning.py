"""What a layout-to-image model is conditioned on, as tensors: the frozen text encoder's outputs
for the prompt and the captions, the boxes, which instance slots are real, whether the layout
is on and, for a guidance-distilled network (FLUX.1-dev), the guidance scale it is given as an
input. Below the models, the sampler and the RL stage, which all pass it around.
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
    # (B,) float: the distilled guidance scale a guidance-distilled network takes as an input, one
    # per row so that it travels with the rows through CFG stacking, layout splits and RL batches;
    # None: not given (the network's own default, or a network without such an input)
    guidance: torch.Tensor | None = None

    def to(self, device) -> Conditioning:
        return Conditioning(
            **{f.name: _apply(getattr(self, f.name), lambda v: v.to(device)) for f in fields(self)}
        )

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """The rows of ``parts`` stacked; ``guidance`` stays None only when no part carries one."""
        values = {}
        for f in fields(parts[0]):
            column = [getattr(p, f.name) for p in parts]
            given = [v for v in column if v is not None]
            if given and len(given) < len(column):
                raise ValueError(f"Conditioning.cat: some parts carry {f.name} and some do not")
            values[f.name] = torch.cat(given) if given else None
        return Conditioning(**values)

    def rows(self, index: torch.Tensor | slice) -> Conditioning:
        """The conditioning of the batch rows ``index`` (an index tensor or a slice)."""
        if isinstance(index, torch.Tensor):
            index = index.to(self.valid.device)
        return Conditioning(
            **{f.name: _apply(getattr(self, f.name), lambda v: v[index]) for f in fields(self)}
        )

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
            guidance=self.guidance,
        )

    def __len__(self) -> int:
        return self.prompt_hidden.shape[0]


def _apply(value: torch.Tensor | None, fn):
    """``fn(value)``, or None for a field that is not set (``guidance``)."""
    return None if value is None else fn(value)
