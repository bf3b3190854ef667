"""The held-out reward: does the RL stage make the policy better on prompts it never trained on?

A fixed set of prompt-only layouts, disjoint from the ones the RL stage draws, is sampled with the
deterministic sampler (ODE / DDIM) from fixed noise and scored by the stage's reward. With the
noise fixed, a change of the mean reward between two calls comes from the weights alone.

The set has a box geometry (idruid.data.shapes.geometry): the prompts' own (``rl.prompt_geometry``)
tells whether the stage learns; another one (``rl.held_out_off``, by default long thin boxes that
no split trains on) tells whether what it learns holds off the kind of layout it trains on.
"""

from __future__ import annotations

import torch

from ..data.shapes import prompt_only_layout
from ..metrics.checks import leak_counts
from ..ranks import SINGLE, Ranks
from ..sampling import sample, to_uint8
from .rollout import rollout_settings

HELD_OUT_START = 10_000  # prompt-only indices far from the ones the RL stage draws


class HeldOutReward:
    def __init__(
        self,
        config,
        reward,
        count: int,
        latent_shape: tuple[int, ...],
        seed: int = 0,
        geometry: str | None = None,
    ):
        """``count`` prompt-only layouts of ``geometry`` (None: the RL prompts' geometry)."""
        if count < 1:
            raise ValueError(f"a held-out set needs at least one layout, got {count}")
        rl = config.rl
        self.config, self.reward = config, reward
        self.geometry = geometry or rl.prompt_geometry
        self.layouts = [
            prompt_only_layout(
                HELD_OUT_START + k, rl.prompt_seed, resolution=config.model.resolution, geometry=self.geometry
            )
            for k in range(count)
        ]
        self.noise = torch.randn((count, *latent_shape), generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def measure(self, model, batch_size: int = 64, ranks: Ranks = SINGLE) -> dict[str, float]:
        """The held-out set under ``model`` (left in the mode it was in): its mean "reward" and its
        "leakage", the share of instances whose box another instance's colour dominates
        (idruid.metrics.leakage's rule), which the reward alone may not see. On P processes each
        rank samples a contiguous share of the set and the scores are gathered in order, so every
        rank returns the one-process numbers (call it on every rank)."""
        settings, was_training = rollout_settings(self.config), model.training
        model.eval()
        share = -(-len(self.layouts) // ranks.world)
        first, end = ranks.rank * share, min(len(self.layouts), (ranks.rank + 1) * share)
        scores = torch.full((share,), float("nan"))  # this rank's, NaN past the end of the set
        leaks = torch.zeros(2, dtype=torch.float64)  # instances leaked, instances counted
        for start in range(first, end, batch_size):
            stop = min(start + batch_size, end)
            layouts = self.layouts[start:stop]
            images = to_uint8(sample(model, layouts, settings, x_init=self.noise[start:stop]))
            scores[start - first : stop - first] = self.reward(images, layouts).float().cpu()
            for leaked_here, instances in leak_counts(images, layouts):
                leaks += torch.tensor([leaked_here, instances], dtype=torch.float64)
        model.train(was_training)
        scores, (leaked, counted) = ranks.gather(scores), ranks.sum(leaks).tolist()
        reward = float(scores[~scores.isnan()].numpy().mean())
        return {"reward": reward, "leakage": leaked / max(counted, 1)}

    def __call__(self, model, batch_size: int = 64) -> float:
        """Mean reward of the held-out set under ``model``."""
        return self.measure(model, batch_size)["reward"]


def held_out_sets(config, reward, count: int, latent_shape: tuple[int, ...]) -> dict[str, HeldOutReward]:
    """The held-out sets a run logs: "held_out" (the prompts' geometry) and, unless
    ``rl.held_out_off`` is "none", "held_out_off" (that geometry), ``count`` layouts each."""
    sets = {"held_out": HeldOutReward(config, reward, count, latent_shape)}
    if config.rl.held_out_off != "none":
        sets["held_out_off"] = HeldOutReward(
            config, reward, count, latent_shape, geometry=config.rl.held_out_off
        )
    return sets


def measure_held_out(sets: dict[str, HeldOutReward], model, ranks: Ranks = SINGLE) -> dict[str, float]:
    """Every set's reward and leakage under ``model``, as log keys: "rl_held_out_reward",
    "rl_held_out_leakage", "rl_held_out_off_reward", ... (on every rank of a multi-process run)."""
    return {
        f"rl_{name}_{key}": value
        for name, m in sets.items()
        for key, value in m.measure(model, ranks=ranks).items()
    }
