"""The diffusion process of each prediction type: what sampling, losses and RL need to know.

Both backbones are called the same way, ``model(x_t, t, cond) -> (prediction, maps)``; what
``t`` and the prediction mean is the process's business, chosen by ``model.prediction_type``:

- "flow" (SD3, rectified flow): t is sigma in [0, 1], 1 being pure noise; the model predicts
  the velocity; sampling is Euler on the ODE; the RL policy is the SDE of Eq. 5.
- "eps" (SD1.5, DDPM): t is the DDPM timestep in [0, T) of a discrete alpha_bar schedule; the
  model predicts the noise; sampling is DDIM (eta = 0); the RL policy is the DDPM transition
  (a DDIM step with eta = 1, appendix B).

Sampling, training and RL call only the methods below, so nothing above the backbone branches
on its kind. A time grid holds the steps' times and one more: the time the last step lands on.
Each process makes its grid with a diffusers scheduler (``make_scheduler``, ``scheduler_times``),
so that the diffusers pipeline (idruid.pipeline) can take the grid of a scheduler it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .losses import add_noise, diffuse, flow_matching_loss, noise_prediction_loss, sample_sigmas
from .policy_steps import ddim_step_with_logprob, sde_step_with_logprob

# (prediction, x_t, t, t_next, x_next or None) -> (x_next, log_prob (B,), mean, std): the
# Gaussian policy of one step and the standard deviation of its action, (B, 1, ..., 1)
PolicyStep = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


def euler_step(
    v_pred: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """x_{t+dt} = x_t + dt * v with dt = sigma_next - sigma < 0 (sigma, sigma_next: (B,))."""
    dt = (sigma_next - sigma).view(-1, *([1] * (x_t.ndim - 1)))
    return x_t + dt * v_pred


def ddim_step(
    eps_pred: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_next: torch.Tensor
) -> torch.Tensor:
    """The deterministic DDIM step (eta = 0) from x_t at alpha_bar (B,) to alpha_bar_next (B,):
    x_next = sqrt(a_next) x0_pred + sqrt(1 - a_next) eps_pred, x0_pred = (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    a = alpha_bar.view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    a_next = alpha_bar_next.view_as(a).to(x_t.dtype)
    x0_pred = (x_t - (1.0 - a).sqrt() * eps_pred) / a.sqrt()
    return a_next.sqrt() * x0_pred + (1.0 - a_next).sqrt() * eps_pred


# What a flow network's raw output is (a backbone's network setting ``output``): "velocity" (its
# own parameterisation: real weights) or "x0" (the clean latents, turned into v = (x_t - x0) /
# sigma: the embedded miniatures, whose big patches make copying the noise through the network hard)
FLOW_OUTPUTS = ("velocity", "x0")
SIGMA_FLOOR = 0.05  # smallest sigma an x0 output is divided by, so that the last steps stay finite


def flow_velocity(output: str, raw: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A flow network's raw output as the velocity v = noise - x0: as is, or (x_t - x0) / sigma
    for an "x0" output (sigma floored at ``SIGMA_FLOOR``)."""
    if output == "velocity":
        return raw
    return (x_t - raw) / sigma.clamp(min=SIGMA_FLOOR).view(-1, *([1] * (x_t.ndim - 1))).to(raw.dtype)


class FlowProcess:
    """Rectified flow with SD3's schedule (``FlowMatchEulerDiscreteScheduler``)."""

    prediction_type = "flow"

    def make_scheduler(self, shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
        """The scheduler whose grid ``times`` samples on."""
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)

    def scheduler_times(self, scheduler, steps: int) -> torch.Tensor:
        """(steps + 1,) sigmas of a flow-matching scheduler for ``steps`` steps, ending at 0."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.float().clone()

    def times(self, steps: int, shift: float = 1.0) -> torch.Tensor:
        """(steps + 1,) sigmas from 1 down to 0: diffusers' flow-matching grid."""
        return self.scheduler_times(self.make_scheduler(shift), steps)

    def train_times(self, batch: int, mode: str, device=None) -> torch.Tensor:
        """(batch,) training sigmas: logit-normal (SD3) or uniform."""
        return sample_sigmas(batch, mode, device=device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return add_noise(x0, noise, t)

    def loss(self, prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return flow_matching_loss(prediction, x0, noise)

    def step(self, prediction, x_t, t, t_next) -> torch.Tensor:
        return euler_step(prediction, x_t, t, t_next)

    def policy(self, times: torch.Tensor, noise_level: float = 0.7, eta: float = 1.0) -> PolicyStep:
        """The SDE step of Eq. 5 with noise level ``noise_level`` (a); ``eta`` is the eps process's."""
        if len(times) < 3:
            raise ValueError("a flow policy needs at least 2 sampling steps (sigma_max is the second sigma)")
        sigma_max = float(times[1])

        def step(prediction, x_t, t, t_next, x_next=None, noise=None):
            return sde_step_with_logprob(
                prediction, x_t, t, t_next, sigma_max, noise_level, x_next=x_next, noise=noise
            )

        return step

    def unit_time(self, t: torch.Tensor) -> torch.Tensor:
        """t in [0, 1] (1 = noise), the critic's time input."""
        return t.float()


class EpsProcess:
    """DDPM with a discrete alpha_bar schedule, sampled with DDIM (diffusers' ``DDIMScheduler``)."""

    prediction_type = "eps"

    def __init__(self, scheduler_config: dict | None = None):
        """``scheduler_config``: a diffusers scheduler config (SD1.5's ``scheduler/scheduler_config.json``
        works, whatever its class); None uses SD1.5's: scaled-linear betas 0.00085 to 0.012 over
        1000 steps, leading timestep spacing with offset 1, final alpha_bar = alpha_bar[0]."""
        from diffusers import DDIMScheduler

        defaults = {
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "steps_offset": 1,
            "set_alpha_to_one": False,
            "timestep_spacing": "leading",
            "clip_sample": False,
        }
        config = {**defaults, **(scheduler_config or {})}
        prediction = config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(
                f"scheduler prediction_type '{prediction}': idruid's eps process needs 'epsilon'"
            )
        with torch.device("cpu"):  # a schedule of numbers, also when the model is built on "meta"
            self.scheduler = DDIMScheduler.from_config(config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()  # (T,)
        self.final_alpha_cumprod = float(self.scheduler.final_alpha_cumprod)

    @classmethod
    def from_folder(cls, folder: str | Path) -> EpsProcess:
        """The schedule of a diffusers folder's ``scheduler/scheduler_config.json``."""
        import json

        path = Path(folder) / "scheduler" / "scheduler_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"base model '{folder}': no scheduler/scheduler_config.json")
        return cls(json.loads(path.read_text()))

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at timesteps t (B,); a negative t (past the last step) is the final alpha_bar."""
        values = self.alphas_cumprod.to(t.device)[t.long().clamp(min=0)]  # t stays on its device
        return torch.where(t < 0, torch.full_like(values, self.final_alpha_cumprod), values)

    def make_scheduler(self, shift: float = 1.0):
        """A copy of the scheduler whose grid ``times`` samples on (the model's DDIMScheduler)."""
        self._check_shift(shift)
        return type(self.scheduler).from_config(self.scheduler.config)

    def scheduler_times(self, scheduler, steps: int) -> torch.Tensor:
        """(steps + 1,) timesteps of a scheduler for ``steps`` steps, then the step the last one
        lands on (t - T // steps). The noise levels stay this process's alpha_bar."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.float()
        last = timesteps[-1] - int(scheduler.config.num_train_timesteps) // steps
        return torch.cat([timesteps, last.view(1)])

    def times(self, steps: int, shift: float = 1.0) -> torch.Tensor:
        """(steps + 1,) DDIM timesteps, then the step the last one lands on (t - T // steps)."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self._check_shift(shift)
        return self.scheduler_times(self.scheduler, steps)

    @staticmethod
    def _check_shift(shift: float) -> None:
        if shift != 1.0:
            raise ValueError(f"shift={shift}: the timestep shift is a flow-matching setting (eps backbone)")

    def train_times(self, batch: int, mode: str, device=None) -> torch.Tensor:
        """(batch,) training timesteps: uniform over [0, T) as in DDPM, or logit-normal ones
        (SD3's density, t = floor(T * sigmoid(n)))."""
        if mode == "uniform":
            return torch.randint(0, self.num_train_timesteps, (batch,), device=device).float()
        if mode == "logit_normal":
            unit = torch.sigmoid(torch.randn(batch, device=device))
            return (unit * self.num_train_timesteps).floor().clamp(max=self.num_train_timesteps - 1)
        raise ValueError(f"time_sampling '{mode}': expected 'logit_normal' or 'uniform'")

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return diffuse(x0, noise, self.alpha_bar(t))

    def loss(self, prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise_prediction_loss(prediction, noise)

    def step(self, prediction, x_t, t, t_next) -> torch.Tensor:
        return ddim_step(prediction, x_t, self.alpha_bar(t), self.alpha_bar(t_next))

    def policy(self, times: torch.Tensor, noise_level: float = 0.7, eta: float = 1.0) -> PolicyStep:
        """The DDIM step with ``eta`` (1: the DDPM transition); ``noise_level`` is the flow process's."""

        def step(prediction, x_t, t, t_next, x_next=None, noise=None):
            return ddim_step_with_logprob(
                prediction, x_t, self.alpha_bar(t), self.alpha_bar(t_next), eta, x_next=x_next, noise=noise
            )

        return step

    def unit_time(self, t: torch.Tensor) -> torch.Tensor:
        """t / T in [0, 1] (1 = noise), the critic's time input."""
        return (t.float() / self.num_train_timesteps).clamp(0.0, 1.0)


PROCESSES = {"flow": FlowProcess, "eps": EpsProcess}
