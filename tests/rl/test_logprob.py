"""The policy steps with log-probabilities: the SDE step (Eq. 5) and the DDIM / DDPM step (SD1.5),
against torch.distributions, diffusers' schedulers and hand-worked values."""

import math

import pytest
import torch

from idruid.boxes import covering_cells
from idruid.diffusion import ddim_step, euler_step
from idruid.policy_steps import ddim_step_with_logprob, sde_std, sde_step_with_logprob
from idruid.rl.logprob import box_log_probs, front_masks, gaussian_kl


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
    """x = 1, v = 0.5, sigma 0.5 -> 0.25, a = 0.7: g = 0.7, mean = 0.8775 - 0.155625 = 0.721875,
    step std 0.35; x_next one std above the mean has log-density -1/2 - log 0.35 - log sqrt(2 pi)."""
    x, v = torch.ones(1, 1), torch.full((1, 1), 0.5)
    sigma, sigma_next = torch.tensor([0.5]), torch.tensor([0.25])
    x_next, log_prob, mean, std = sde_step_with_logprob(
        v, x, sigma, sigma_next, 0.9, 0.7, x_next=torch.full((1, 1), 0.721875 + 0.35)
    )
    assert mean.item() == pytest.approx(0.721875, abs=1e-6)
    assert std.item() == pytest.approx(0.35, abs=1e-6)
    assert log_prob.item() == pytest.approx(-0.5 - math.log(0.35) - 0.5 * math.log(2 * math.pi), abs=1e-5)


def test_sigma_one_uses_sigma_max():
    """At sigma = 1, g = a sqrt(1 / (1 - sigma_max)): finite, 0.7 sqrt(20) for sigma_max 0.95, and
    the step's std g sqrt(-dt) = 0.7 sqrt(20 * 0.05) = 0.7."""
    x, v = torch.zeros(2, 4), torch.zeros(2, 4)
    _, log_prob, _, std = sde_step_with_logprob(v, x, torch.ones(2), torch.full((2,), 0.95), 0.95, 0.7)
    assert std.flatten().tolist() == pytest.approx([0.7 * math.sqrt(20.0 * 0.05)] * 2, rel=1e-5)
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
    torch.testing.assert_close(x_next, mean + std * noise)
    g = sde_std(torch.tensor(0.6), 0.9, 0.7).item()  # Eq. 5's coefficient; the step's std is g sqrt(-dt)
    assert std.flatten().tolist() == pytest.approx([g * math.sqrt(0.2)] * 2)
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


# ---------------------------------------------------------------------- DDIM / DDPM policy (SD1.5)
def _ddim_reference(eps, x, a, a_next, eta):
    """The DDIM step written out per sample with Python floats (Song et al. 2021, Eq. 12)."""
    means, stds = [], []
    for k in range(x.shape[0]):
        ak, an = float(a[k]), float(a_next[k])
        x0 = (x[k] - math.sqrt(1 - ak) * eps[k]) / math.sqrt(ak)
        std = eta * math.sqrt((1 - an) / (1 - ak) * (1 - ak / an))
        means.append(math.sqrt(an) * x0 + math.sqrt(1 - an - std**2) * eps[k])
        stds.append(std)
    return torch.stack(means), torch.tensor(stds)


def test_ddim_log_prob_matches_torch_normal():
    gen = torch.Generator().manual_seed(0)
    eps, x = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    a, a_next = torch.tensor([0.05, 0.4, 0.9]), torch.tensor([0.2, 0.7, 0.9991])
    x_next, log_prob, mean, std = ddim_step_with_logprob(eps, x, a, a_next, eta=1.0, generator=gen)
    ref_mean, ref_std = _ddim_reference(eps, x, a, a_next, 1.0)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.flatten(), ref_std, rtol=1e-5, atol=1e-7)
    normal = torch.distributions.Normal(ref_mean, ref_std.view(-1, 1, 1, 1))
    torch.testing.assert_close(log_prob, normal.log_prob(x_next).mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)


def test_ddim_eta_one_is_the_ddpm_posterior_of_diffusers():
    """With eta = 1 the step equals diffusers' DDIMScheduler.step given the same noise, and its
    variance is the DDPM posterior's beta tilde = (1 - a_prev) / (1 - a) (1 - a / a_prev)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
        set_alpha_to_one=False, clip_sample=False,
    )  # fmt: skip
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(2)
    eps, x, noise = (torch.randn(1, 4, 6, 6, generator=gen) for _ in range(3))
    for t in scheduler.timesteps[:3].tolist() + [1]:
        prev = t - 100
        a = scheduler.alphas_cumprod[t].view(1)
        a_prev = (scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod).view(1)
        expected = scheduler.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
        x_next, _, mean, std = ddim_step_with_logprob(eps, x, a, a_prev, eta=1.0)
        torch.testing.assert_close(mean + std * noise, expected, rtol=1e-5, atol=1e-5)
        beta_tilde = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        torch.testing.assert_close(std.flatten() ** 2, beta_tilde, rtol=1e-5, atol=1e-9)
        deterministic = scheduler.step(eps, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ddim_step(eps, x, a, a_prev), deterministic, rtol=1e-5, atol=1e-5)
        x_zero, log_prob_zero, _, _ = ddim_step_with_logprob(eps, x, a, a_prev, eta=0.0)
        torch.testing.assert_close(x_zero, deterministic, rtol=1e-5, atol=1e-5)
        assert torch.equal(log_prob_zero, torch.zeros(1))


def test_ddim_hand_worked_step():
    """eps = 0, x = 1, a = 0.25 -> a_next = 0.5: x0 = 2, variance = 0.5 / 0.75 * 0.5 = 1/3,
    mean = sqrt(0.5) * 2; x_next one std above the mean has log-density -1/2 - log std - log sqrt(2 pi)."""
    std = math.sqrt(1 / 3)
    mean_value = math.sqrt(0.5) * 2
    x_next, log_prob, mean, out_std = ddim_step_with_logprob(
        torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([0.25]), torch.tensor([0.5]),
        x_next=torch.full((1, 1), mean_value + std),
    )  # fmt: skip
    assert mean.item() == pytest.approx(mean_value, abs=1e-6)
    assert out_std.item() == pytest.approx(std, abs=1e-6)
    assert log_prob.item() == pytest.approx(-0.5 - math.log(std) - 0.5 * math.log(2 * math.pi), abs=1e-5)


def test_ddim_rejects_bad_shapes():
    two, one = torch.zeros(2, 3), torch.zeros(1, 3)
    with pytest.raises(ValueError, match="alpha_bar and alpha_bar_next must have shape"):
        ddim_step_with_logprob(two, two, torch.full((3,), 0.5), torch.full((2,), 0.6))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_step_with_logprob(one, one, torch.tensor([0.5]), torch.tensor([0.6]), eta=-1.0)


def test_box_log_probs_match_a_loop_over_boxes():
    """Per-instance log-probs (rl.credit=instance) against torch.distributions.Normal summed cell by
    cell inside each box; a box over the whole latent gives the step's image log-prob."""
    torch.manual_seed(0)
    x_t, v = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    sigma, sigma_next = torch.tensor([1.0, 0.6]), torch.tensor([0.8, 0.4])
    x_next, log_prob, mean, scale = sde_step_with_logprob(v, x_t, sigma, sigma_next, 0.9)
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 0.5, 0.5], [0.25, 0.4, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]],
            [[0.1, 0.1, 0.3, 0.9], [0.0] * 4, [0.0] * 4],
        ]
    )
    masks = covering_cells(boxes, 6, 8)
    got = box_log_probs(x_next, mean, scale, masks)
    density = torch.distributions.Normal(mean, scale.expand_as(mean)).log_prob(x_next)  # (B, C, H, W)
    for b in range(2):
        for n in range(3):
            cells = [(i, j) for i in range(6) for j in range(8) if masks[b, n, i * 8 + j] > 0]
            expected = sum(density[b, :, i, j].sum() for i, j in cells) / (3 * len(cells)) if cells else 0.0
            assert got[b, n].item() == pytest.approx(float(expected), abs=1e-5)
    assert got[0, 2].item() == pytest.approx(log_prob[0].item(), abs=1e-5)
    assert got[1, 1].item() == 0.0  # a padded (empty) box
    with pytest.raises(ValueError, match="do not fit"):
        box_log_probs(x_next, mean, scale, masks[:, :, :10])


def test_front_masks_keep_each_cell_in_the_smallest_box_covering_it():
    """Against a loop over cells: a table, a cup on it, a second cup of the same size (the later
    one wins their shared cells), a box beside them, and a padded slot."""
    boxes = torch.tensor(
        [
            [
                [0.0, 0.0, 1.0, 0.75],  # table
                [0.25, 0.25, 0.5, 0.5],  # cup
                [0.375, 0.375, 0.625, 0.625],  # second cup, same area, overlapping the first
                [0.0, 0.75, 0.5, 1.0],  # beside the table
                [0.0, 0.0, 0.0, 0.0],  # padding
            ]
        ]
    )
    valid = torch.tensor([[True, True, True, True, False]])
    masks = covering_cells(boxes, 8, 8) * valid[..., None]
    front = front_masks(masks, boxes)
    area = (boxes[0, :, 2] - boxes[0, :, 0]) * (boxes[0, :, 3] - boxes[0, :, 1])
    expected = torch.zeros_like(masks)
    for cell in range(64):
        covering = [n for n in range(5) if masks[0, n, cell] > 0]
        if covering:
            smallest = min(area[n] for n in covering)
            expected[0, max(n for n in covering if area[n] == smallest), cell] = 1.0
    assert torch.equal(front, expected)
    assert torch.equal(front.sum(dim=1), (masks.sum(dim=1) > 0).float())  # every covered cell once
    assert front[0, 0].sum() == masks[0, 0].sum() - 7  # the table loses the cups' 7 cells
