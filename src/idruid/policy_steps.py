"""Policy steps with log-probabilities: the flow-matching ODE step turned into an SDE (paper
Eq. 5, SD3) and the DDPM transition as a DDIM step with eta = 1 (appendix B, SD1.5, as DDPO).
The processes (idruid.diffusion) hand these steps to RL, so they sit below both.

Time runs from sigma = 1 (pure noise) to sigma = 0 (data), as in SD3; dt = sigma_next - sigma < 0.
The step keeps the ODE's marginals while injecting noise of std ``g * sqrt(-dt)``, with
``g = noise_level * sqrt(sigma / (1 - sigma))`` (the paper's sigma_t = a sqrt(t / (1 - t)),
a = 0.7). At sigma = 1 that ratio is infinite, so the appendix's pseudo-code puts the
schedule's largest sigma below 1 (``sigma_max``) in the denominator there; we do the same.
"""

from __future__ import annotations

import math

import torch


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against ``like``."""
    return value.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def sde_std(sigma: torch.Tensor, sigma_max: float, noise_level: float) -> torch.Tensor:
    """Eq. 5's diffusion coefficient: noise_level * sqrt(sigma / (1 - s)), s = sigma_max at sigma == 1."""
    denominator = 1.0 - torch.where(sigma == 1.0, torch.as_tensor(sigma_max, dtype=sigma.dtype), sigma)
    return noise_level * torch.sqrt(sigma / denominator)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, scale^2) in float32; no gradient flows into the action x."""
    scale = scale.float()
    return (
        -((x.detach().float() - mean.float()) ** 2) / (2.0 * scale**2)
        - torch.log(scale)
        - 0.5 * math.log(2.0 * math.pi)
    )


def sde_step_with_logprob(
    v_pred: torch.Tensor,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    sigma_max: float,
    noise_level: float = 0.7,
    x_next: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One policy step pi(x_next | x_t) (Eq. 5): returns (x_next, log_prob, mean, std).

    v_pred, x_t: (B, ...); sigma, sigma_next: (B,). With Eq. 5's diffusion coefficient
    ``g = sde_std(sigma)``, the mean is
    x_t (1 + g^2 dt / (2 sigma)) + v_pred (1 + g^2 (1 - sigma) / (2 sigma)) dt and the step's
    standard deviation is std = g sqrt(-dt); the sample is mean + std noise (unless ``x_next`` is
    given, as when PPO re-scores a stored action; ``noise``, a standard normal like x_t, is
    drawn here unless given: a multi-process rollout passes its rows of a global draw), and
    log_prob (B,) is the Gaussian log-density of x_next averaged over the non-batch dimensions,
    in float32. std is (B, 1, ..., 1), the action's own std as ``ddim_step_with_logprob``
    returns it. With noise_level = 0 the step is the Euler ODE step, a deterministic map with no
    density: its log_prob is returned as zeros.
    """
    if not 0.0 < float(sigma_max) < 1.0:
        raise ValueError(f"sigma_max must be in (0, 1): the largest noise level below 1, got {sigma_max}")
    if sigma.shape != (x_t.shape[0],) or sigma_next.shape != (x_t.shape[0],):
        raise ValueError(
            f"sigma and sigma_next must have shape ({x_t.shape[0]},), got {tuple(sigma.shape)} and "
            f"{tuple(sigma_next.shape)}"
        )
    x_t, v_pred = x_t.float(), v_pred.float()
    sigma_b = _per_sample(sigma.float(), x_t)
    dt = _per_sample((sigma_next - sigma).float(), x_t)
    g = sde_std(sigma_b, sigma_max, noise_level)  # Eq. 5's sigma_t, per unit of time
    mean = (
        x_t * (1.0 + g**2 / (2.0 * sigma_b) * dt)
        + v_pred * (1.0 + g**2 * (1.0 - sigma_b) / (2.0 * sigma_b)) * dt
    )
    std = g * torch.sqrt(-dt)  # the step's standard deviation
    if x_next is None:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        x_next = mean + std * noise
    x_next = x_next.float()
    if noise_level == 0.0:
        return x_next, torch.zeros(x_t.shape[0], device=x_t.device), mean, std
    log_density = gaussian_log_density(x_next, mean, std)
    return x_next, log_density.mean(dim=tuple(range(1, x_t.ndim))), mean, std


def ddim_step_with_logprob(
    eps_pred: torch.Tensor,
    x_t: torch.Tensor,
    alpha_bar: torch.Tensor,
    alpha_bar_next: torch.Tensor,
    eta: float = 1.0,
    x_next: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DDIM step from alpha_bar (B,) to alpha_bar_next (B,) as a Gaussian policy: returns
    (x_next, log_prob, mean, std), like ``sde_step_with_logprob``; std is (B, 1, ..., 1).

    x0_pred = (x_t - sqrt(1 - a) eps) / sqrt(a); std = eta sqrt((1 - a_next) / (1 - a) (1 - a / a_next));
    mean = sqrt(a_next) x0_pred + sqrt(1 - a_next - std^2) eps. With eta = 1 this is the DDPM
    posterior q(x_next | x_t, x0_pred) (Ho et al. 2020); eta = 0 is the deterministic DDIM step,
    whose log_prob is returned as zeros. log_prob (B,) averages the Gaussian log-density over the
    non-batch dimensions, in float32.
    """
    batch = x_t.shape[0]
    if alpha_bar.shape != (batch,) or alpha_bar_next.shape != (batch,):
        raise ValueError(
            f"alpha_bar and alpha_bar_next must have shape ({batch},), got {tuple(alpha_bar.shape)} and "
            f"{tuple(alpha_bar_next.shape)}"
        )
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x_t, eps_pred = x_t.float(), eps_pred.float()
    a, a_next = _per_sample(alpha_bar.float(), x_t), _per_sample(alpha_bar_next.float(), x_t)
    x0_pred = (x_t - (1.0 - a).sqrt() * eps_pred) / a.sqrt()
    variance = (1.0 - a_next) / (1.0 - a) * (1.0 - a / a_next)
    std = eta * variance.clamp(min=0.0).sqrt()
    mean = a_next.sqrt() * x0_pred + (1.0 - a_next - std**2).clamp(min=0.0).sqrt() * eps_pred
    if x_next is None:
        if noise is None:
            noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        x_next = mean + std * noise
    x_next = x_next.float()
    if eta == 0.0:
        return x_next, torch.zeros(batch, device=x_t.device), mean, std
    log_density = gaussian_log_density(x_next, mean, std)
    return x_next, log_density.mean(dim=tuple(range(1, x_t.ndim))), mean, std
