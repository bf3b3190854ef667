"""The held-out reward: does the RL stage make the policy better on prompts it never trained on?

A fixed set of prompt-only layouts, disjoint from the ones the RL stage draws, is sampled with the
deterministic sampler (ODE / DDIM) from fixed noise and scored by the stage's reward. With the
noise fixed, a change of the mean reward between two calls comes from the weights alone.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.shapes import prompt_only_layout
from ..sampling import sample, to_uint8
from .rollout import rollout_settings

HELD_OUT_START = 10_000  # prompt-only indices far from the ones the RL stage draws


class HeldOutReward:
    def __init__(self, config, reward, count: int, latent_shape: tuple[int, ...], seed: int = 0):
        if count < 1:
            raise ValueError(f"a held-out set needs at least one layout, got {count}")
        rl = config.rl
        self.config, self.reward = config, reward
        self.layouts = [
            prompt_only_layout(HELD_OUT_START + k, rl.prompt_seed, resolution=config.model.resolution)
            for k in range(count)
        ]
        self.noise = torch.randn((count, *latent_shape), generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def __call__(self, model, batch_size: int = 64) -> float:
        """Mean reward of the held-out set under ``model`` (left in the mode it was in)."""
        settings, was_training = rollout_settings(self.config), model.training
        model.eval()
        scores = []
        for start in range(0, len(self.layouts), batch_size):
            layouts = self.layouts[start : start + batch_size]
            images = sample(
                model,
                layouts,
                settings,
                x_init=self.noise[start : start + batch_size],
            )
            scores.append(self.reward(to_uint8(images), layouts).float().cpu().numpy())
        model.train(was_training)
        return float(np.concatenate(scores).mean())
