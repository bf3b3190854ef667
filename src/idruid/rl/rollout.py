"""Policy rollouts through the one sampling loop, and their log-probabilities under a model.

A rollout samples a batch of layouts with ``idruid.sampling.sample`` where the step function is
the model's policy step (idruid.diffusion: the SDE of Eq. 5 for flow, the DDPM transition for
eps) on a window of ``rl_steps`` steps starting at ``first_step`` and the deterministic step
elsewhere ("RL speed-up", paper 3.3: the first 20% of the steps explore and are trained;
``sde_window`` also gives a random window within the first half, as Flow-GRPO-Fast, and the
full trajectory, appendix E). The states x_t, the actions x_{t-1},
their log-probabilities and the policy means are recorded for those steps: what the action
pool keeps of an old policy. ``policy_log_probs`` re-scores recorded actions under the current
weights, with gradients, for the PPO ratio (Eq. 9) and the KL term (Eq. 10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ..config import SamplingSettings, TrainConfig
from ..layout import Layout
from ..ranks import SINGLE, Ranks
from ..sampling import guidance_conditioning, guided_prediction, model_layout_steps, sample


def rollout_settings(config: TrainConfig) -> SamplingSettings:
    """The sampling settings of the RL stage's rollouts: the run's layout fraction and shift,
    ``rl.sampling_steps`` steps at guidance ``rl.cfg``."""
    return config.sampling_settings().override(steps=config.rl.sampling_steps, cfg=config.rl.cfg)


def rl_step_count(steps: int, rl_fraction: float) -> int:
    """How many leading sampling steps are SDE steps trained by RL (at least one)."""
    if not 0.0 < rl_fraction <= 1.0:
        raise ValueError(f"rl_fraction must be in (0, 1], got {rl_fraction}")
    return max(1, min(steps, math.ceil(rl_fraction * steps - 1e-9)))


def sde_window(
    steps: int, window: str, rl_fraction: float, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """(first step, number of steps) of the SDE window: "first" the leading ``rl_fraction`` of the
    steps, "random" as many steps starting anywhere they fit within the first half (drawn from
    ``generator``), "full" every step."""
    if window == "full":
        return 0, steps
    length = rl_step_count(steps, rl_fraction)
    if window == "first":
        return 0, length
    if window == "random":
        last_start = max(0, math.ceil(steps / 2) - length)
        return int(torch.randint(last_start + 1, (1,), generator=generator)), length
    raise ValueError(f"window '{window}': expected first, random or full")


@dataclass
class Rollout:
    """What one batch of trajectories leaves behind (tensors on the CPU)."""

    layouts: list[Layout]
    x_t: torch.Tensor  # (K, B, C, H, W) states of the K recorded steps
    x_next: torch.Tensor  # (K, B, C, H, W) actions
    log_prob: torch.Tensor  # (K, B) log pi_old(action | state)
    mean: torch.Tensor  # (K, B, C, H, W) the old policy's means (for the KL term)
    times: torch.Tensor  # (K + 1,) times of the recorded steps and the one after (process convention)
    images: torch.Tensor  # (B, C, H, W) final samples in [-1, 1]
    first_step: int = 0  # index of the first recorded step in the sampling loop
    iteration: int = 0  # the RL iteration that sampled it (its age is counted from there)
    reward: torch.Tensor | None = None  # (B,)
    instance_reward: torch.Tensor | None = None  # (B, N) the reward's per-instance terms (rl.credit=instance)

    def state_dict(self) -> dict:
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "layouts"}
        return {**state, "layouts": [layout.to_dict() for layout in self.layouts]}

    @classmethod
    def from_state_dict(cls, state: dict) -> Rollout:
        from ..layout import layout_from_dict

        layouts = [layout_from_dict(item) for item in state["layouts"]]
        return cls(**{k: v for k, v in state.items() if k != "layouts"}, layouts=layouts)


class _RecordingStep:
    """Step function for ``sample``: the policy on the steps ``first_step`` to ``first_step +
    rl_steps - 1``, recorded; the process's deterministic step elsewhere. The policy's noise is
    this rank's rows of a draw for the global batch (idruid.ranks)."""

    def __init__(self, first_step: int, rl_steps: int, policy, deterministic, ranks: Ranks):
        self.window = range(first_step, first_step + rl_steps)
        self.policy, self.deterministic, self.ranks = policy, deterministic, ranks
        self.index = -1
        self.x_t, self.x_next, self.log_prob, self.mean = [], [], [], []

    def __call__(self, prediction, x_t, t, t_next):
        self.index += 1
        if self.index not in self.window:
            return self.deterministic(prediction, x_t, t, t_next)
        noise = self.ranks.randn(len(x_t), x_t.shape[1:], device=x_t.device, dtype=torch.float32)
        x_next, log_prob, mean, _ = self.policy(prediction, x_t, t, t_next, noise=noise)
        self.x_t.append(x_t.float().cpu())
        self.x_next.append(x_next.cpu())
        self.log_prob.append(log_prob.cpu())
        self.mean.append(mean.cpu())
        return x_next.to(x_t.dtype)


def rollout(
    model,
    layouts: Sequence[Layout],
    settings: SamplingSettings,
    rl_steps: int,
    noise_level: float = 0.7,
    x_init: torch.Tensor | None = None,
    eta: float = 1.0,
    first_step: int = 0,
    ranks: Ranks = SINGLE,
) -> Rollout:
    """Sample ``layouts`` with ``settings`` and the policy on ``rl_steps`` steps from
    ``first_step`` on, and record them. ``noise_level`` is the flow SDE's a (Eq. 5), ``eta`` the
    eps process's DDIM eta. On P processes, ``layouts`` are this rank's rows of the global batch
    and every random draw (initial noise, each SDE step's noise) is this rank's rows of a draw for
    all P x B rollouts, so the ranks' rollouts together are those of one process at P x B."""
    steps = settings.steps
    if steps < 2:
        raise ValueError("a rollout needs at least 2 sampling steps")
    if first_step < 0 or rl_steps < 1 or first_step + rl_steps > steps:
        raise ValueError(f"SDE window of {rl_steps} steps from step {first_step} does not fit {steps} steps")
    process = model.process
    times = process.times(steps, settings.shift)
    device = next(model.parameters()).device
    if x_init is None:
        x_init = ranks.randn(len(layouts), model.latent_shape)
    policy = process.policy(times, noise_level, eta)
    recorder = _RecordingStep(first_step, rl_steps, policy, process.step, ranks)
    images = sample(
        model,
        layouts,
        settings,
        step_fn=recorder,
        x_init=x_init.to(device),
    )
    return Rollout(
        layouts=list(layouts),
        x_t=torch.stack(recorder.x_t),
        x_next=torch.stack(recorder.x_next),
        log_prob=torch.stack(recorder.log_prob),
        mean=torch.stack(recorder.mean),
        times=times[first_step : first_step + rl_steps + 1].clone(),
        images=images.float().cpu(),
        first_step=first_step,
    )


def policy_log_probs(
    model,
    recorded: Rollout,
    settings: SamplingSettings,
    noise_level: float = 0.7,
    network=None,
    eta: float = 1.0,
    detach_uncond: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log pi_theta(action | state) of the recorded steps under the current weights, with grad;
    ``settings`` are those the rollout was sampled with.

    ``model`` encodes the text; ``network`` (default ``model``) makes the predictions: in
    training, the accelerate-prepared module, so that gradients synchronise across processes;
    any callable with the model's signature (the frozen reference, for the KL term).
    ``detach_uncond``: no gradient through CFG's unconditional prediction (sampling.guided_prediction).

    Returns (log_prob (K, B), mean (K, B, C, H, W), scale (K, B, 1, 1, 1)), scale being the
    standard deviation of the step's action. All K steps of all B trajectories go through the
    model as one batch (two when the layout branch switches off inside the recorded steps).
    """
    device = next(model.parameters()).device
    num_steps, batch = recorded.log_prob.shape
    process = model.process
    cfg = settings.cfg
    policy = process.policy(process.times(settings.steps, settings.shift), noise_level, eta)
    with_layout = model_layout_steps(model, settings.steps, settings.layout_fraction)
    x_t = recorded.x_t.to(device).flatten(0, 1)  # (K * B, C, H, W), step-major
    x_next = recorded.x_next.to(device).flatten(0, 1)
    t = recorded.times[:-1].to(device).repeat_interleave(batch)
    t_next = recorded.times[1:].to(device).repeat_interleave(batch)
    # step-major, as x_t; the distilled guidance scale the rollout was sampled with, on every row
    cond = guidance_conditioning(model, recorded.layouts * num_steps, cfg, device, guidance=settings.guidance)
    step_index = recorded.first_step + torch.arange(num_steps)
    layout_on = step_index.repeat_interleave(batch) < with_layout
    prediction = torch.empty_like(x_t)
    for flag in (True, False):
        rows = (layout_on == flag).nonzero(as_tuple=True)[0]
        if len(rows) == 0:
            continue
        part = _select(cond, rows, len(x_t)) if len(rows) < len(x_t) else cond
        prediction[rows] = guided_prediction(
            network or model, x_t[rows], t[rows], part, cfg, layout_on=flag, detach_uncond=detach_uncond
        )
    _, log_prob, mean, scale = policy(prediction, x_t, t, t_next, x_next)
    shape = (num_steps, batch)
    return log_prob.view(shape), mean.view(*shape, *mean.shape[1:]), scale.view(*shape, *scale.shape[1:])


def _select(cond, rows: torch.Tensor, batch: int):
    """Rows of a conditioning that may hold [conditional; unconditional] halves of ``batch`` each."""
    if len(cond) == 2 * batch:
        rows = torch.cat([rows, rows + batch])
    return cond.rows(rows)
