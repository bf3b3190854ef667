"""The SDE policy step (paper Eq. 5) against torch.distributions and hand-worked values."""

import math

import pytest
import torch

from idruid.rl.logprob import gaussian_kl, sde_step_with_logprob
from idruid.sampling import euler_step


def _reference(v, x, sigma, sigma_next, sigma_max, a):
    """Eq. 5 written out per sample with Python floats."""
    means, scales = [], []
    for k in range(x.shape[0]):
        s, dt = float(sigma[k]), float(sigma_next[k] - sigma[k])
        std = a * math.sqrt(s / (1.0 - (sigma_max if s == 1.0 else s)))
        means.append(x[k] * (1 + std**2 / (2 * s) * dt) + v[k] * (1 + std**2 * (1 - s) / (2 * s)) * dt)
        scales.append(std * math.sqrt(-dt))
    return torch.stack(means), torch.tensor(scales)


def test_log_prob_matches_torch_normal():
    gen = torch.Generator().manual_seed(0)
    v, x = torch.randn(4, 3, 5, 5, generator=gen), torch.randn(4, 3, 5, 5, generator=gen)
    sigma = torch.tensor([1.0, 0.8, 0.5, 0.1])
    sigma_next = torch.tensor([0.9, 0.6, 0.45, 0.0])
    x_next, log_prob, mean, std = sde_step_with_logprob(v, x, sigma, sigma_next, 0.9, 0.7, generator=gen)
    ref_mean, ref_scale = _reference(v, x, sigma, sigma_next, 0.9, 0.7)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6)
    normal = torch.distributions.Normal(ref_mean, ref_scale.view(-1, 1, 1, 1))
    torch.testing.assert_close(log_prob, normal.log_prob(x_next).mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)
    assert std.shape == (4, 1, 1, 1) and log_prob.shape == (4,)


def test_hand_worked_step():
    """x = 1, v = 0.5, sigma 0.5 -> 0.25, a = 0.7: std = 0.7, mean = 0.8775 - 0.155625 = 0.721875,
    step std 0.35; x_next one std above the mean has log-density -1/2 - log 0.35 - log sqrt(2 pi)."""
    x, v = torch.ones(1, 1), torch.full((1, 1), 0.5)
    sigma, sigma_next = torch.tensor([0.5]), torch.tensor([0.25])
    x_next, log_prob, mean, std = sde_step_with_logprob(
        v, x, sigma, sigma_next, 0.9, 0.7, x_next=torch.full((1, 1), 0.721875 + 0.35)
    )
    assert mean.item() == pytest.approx(0.721875, abs=1e-6)
    assert std.item() == pytest.approx(0.7, abs=1e-6)
    assert log_prob.item() == pytest.approx(-0.5 - math.log(0.35) - 0.5 * math.log(2 * math.pi), abs=1e-5)


def test_sigma_one_uses_sigma_max():
    """At sigma = 1, std = a sqrt(1 / (1 - sigma_max)): finite, and 0.7 sqrt(20) for sigma_max 0.95."""
    x, v = torch.zeros(2, 4), torch.zeros(2, 4)
    _, log_prob, _, std = sde_step_with_logprob(v, x, torch.ones(2), torch.full((2,), 0.95), 0.95, 0.7)
    assert std.flatten().tolist() == pytest.approx([0.7 * math.sqrt(20.0)] * 2, rel=1e-5)
    assert torch.isfinite(log_prob).all()


def test_noise_level_zero_is_the_euler_step():
    gen = torch.Generator().manual_seed(1)
    v, x = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    sigma, sigma_next = torch.tensor([1.0, 0.7, 0.3]), torch.tensor([0.8, 0.5, 0.0])
    x_next, log_prob, _, _ = sde_step_with_logprob(v, x, sigma, sigma_next, 0.8, noise_level=0.0)
    torch.testing.assert_close(x_next, euler_step(v, x, sigma, sigma_next))
    assert torch.equal(log_prob, torch.zeros(3))


def test_sample_is_mean_plus_scaled_noise_and_gradients_reach_the_velocity():
    v = torch.randn(2, 8, requires_grad=True)
    x = torch.randn(2, 8)
    sigma, sigma_next = torch.tensor([0.6, 0.6]), torch.tensor([0.4, 0.4])
    x_next, _, mean, std = sde_step_with_logprob(
        v, x, sigma, sigma_next, 0.9, generator=torch.Generator().manual_seed(3)
    )
    noise = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x_next, mean + std * math.sqrt(0.2) * noise)
    _, log_prob, _, _ = sde_step_with_logprob(v, x, sigma, sigma_next, 0.9, x_next=x_next.detach())
    log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_bad_shapes_and_sigma_max_are_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="sigma and sigma_next"):
        sde_step_with_logprob(x, x, torch.ones(3), torch.ones(3), 0.9)
    with pytest.raises(ValueError, match="sigma_max"):
        sde_step_with_logprob(x, x, torch.ones(2), torch.ones(2) * 0.5, 1.0)


def test_gaussian_kl_matches_torch():
    gen = torch.Generator().manual_seed(4)
    mean, mean_old = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    scale = torch.tensor([0.3, 0.5, 1.2]).view(3, 1)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, scale.expand(3, 6)),
        torch.distributions.Normal(mean_old, scale.expand(3, 6)),
    ).mean(dim=1)
    torch.testing.assert_close(gaussian_kl(mean, mean_old, scale), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_log_probs_stay_in_float32_under_mixed_precision(dtype):
    """Under bf16 / fp16 autocast the policy's velocity comes in half precision; the log-density,
    a mean of thousands of squared residuals, is computed in float32 from the upcast inputs."""
    g = torch.Generator().manual_seed(3)
    v, x = (torch.randn(2, 3, 8, 8, generator=g).to(dtype) for _ in range(2))
    x_next = torch.randn(2, 3, 8, 8, generator=g)
    sigma, sigma_next = torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.4])
    _, log_prob, mean, std = sde_step_with_logprob(v, x, sigma, sigma_next, 0.95, 0.7, x_next=x_next)
    _, expected, _, _ = sde_step_with_logprob(
        v.float(), x.float(), sigma, sigma_next, 0.95, 0.7, x_next=x_next
    )
    assert log_prob.dtype == mean.dtype == std.dtype == torch.float32
    assert torch.equal(log_prob, expected)
