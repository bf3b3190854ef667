"""The exponential moving average of the trainable weights: what a training run exports.

Below the trainer (idruid.train) and its resumable state (idruid.train_state), which both hold
one; it knows only tensors, so either may import it.
"""

from __future__ import annotations

import torch


class EMA:
    """Exponential moving average of the trainable weights (what gets exported)."""

    def __init__(self, parameters, decay: float):
        self.decay = decay
        self.parameters = list(parameters)
        self.shadow = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the current weights; ``step`` counts from the EMA's (re)start."""
        decay = min(self.decay, (1 + step) / (10 + step))  # warm start, as in diffusers' EMAModel
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters) -> None:
        for shadow, param in zip(self.shadow, parameters, strict=True):
            param.copy_(shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for shadow, saved in zip(self.shadow, state["shadow"], strict=True):
            shadow.copy_(saved)


def ema_count(step: int, origin: int) -> int:
    """The EMA's step count for its warm-up: from ``origin`` on (where it restarts), else from 0."""
    return step - origin if step >= origin else step
