"""The diffusion processes (flow for SD3, eps for SD1.5) against diffusers' own schedulers."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from idruid import sampling
from idruid.diffusion import PROCESSES, EpsProcess, FlowProcess, ddim_step, euler_step
from idruid.losses import add_noise, flow_matching_loss
from idruid.policy_steps import sde_std, sde_step_with_logprob

SD15 = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
}


def test_registry_is_keyed_by_prediction_type():
    assert {name: cls.prediction_type for name, cls in PROCESSES.items()} == {"flow": "flow", "eps": "eps"}


def test_flow_process_is_the_rectified_flow():
    process = FlowProcess()
    x0, noise, sigma = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(process.add_noise(x0, noise, sigma), add_noise(x0, noise, sigma))
    v = torch.randn_like(x0)
    assert process.loss(v, x0, noise) == flow_matching_loss(v, x0, noise)
    # the policy is the SDE step, and its std is the action's: Eq. 5's g(sigma) * sqrt(-dt)
    times = process.times(4)
    t, t_next = times[1].expand(3), times[2].expand(3)
    x_next, log_prob, mean, std = process.policy(times, noise_level=0.7)(v, x0, t, t_next)
    _, ref_log_prob, ref_mean, ref_std = sde_step_with_logprob(
        v, x0, t, t_next, float(times[1]), 0.7, x_next=x_next
    )
    assert torch.equal(mean, ref_mean) and torch.equal(std, ref_std) and torch.equal(log_prob, ref_log_prob)
    g = sde_std(t, float(times[1]), 0.7)
    torch.testing.assert_close(std.flatten(), g * math.sqrt(float(times[1] - times[2])))
    with pytest.raises(ValueError, match="at least 2 sampling steps"):
        process.policy(process.times(1))


def test_eps_time_grid_and_alphas_are_ddims():
    process = EpsProcess()
    reference = DDIMScheduler(**SD15)
    reference.set_timesteps(10)
    times = process.times(10)
    assert times[:-1].tolist() == reference.timesteps.float().tolist()
    assert times[-1].item() == reference.timesteps[-1].item() - 100  # the step the last one lands on
    t = torch.tensor([999.0, 500.0, 0.0, -99.0])
    expected = [reference.alphas_cumprod[999], reference.alphas_cumprod[500], reference.alphas_cumprod[0]]
    expected.append(reference.final_alpha_cumprod)  # past the last step (set_alpha_to_one=False)
    torch.testing.assert_close(process.alpha_bar(t), torch.stack(expected).float())
    assert process.unit_time(torch.tensor([999.0, 0.0, -99.0])).tolist() == pytest.approx([0.999, 0.0, 0.0])
    with pytest.raises(ValueError, match="flow-matching setting"):
        process.times(10, shift=3.0)


def test_eps_forward_process_and_loss_match_ddpm():
    process = EpsProcess()
    reference = DDPMScheduler(**{k: v for k, v in SD15.items() if k != "set_alpha_to_one"})
    x0, noise = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(
        process.add_noise(x0, noise, t.float()), reference.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5
    )
    eps = torch.randn_like(noise)
    assert process.loss(eps, x0, noise).item() == pytest.approx(((eps - noise) ** 2).mean().item(), rel=1e-6)


def test_eps_training_times():
    process = EpsProcess()
    torch.manual_seed(0)
    uniform = process.train_times(4000, "uniform")
    assert uniform.min() >= 0 and uniform.max() <= 999 and torch.equal(uniform, uniform.round())
    assert abs(uniform.mean().item() - 499.5) < 20  # uniform over [0, 1000)
    logit = process.train_times(4000, "logit_normal")
    assert logit.min() >= 0 and logit.max() <= 999 and abs(logit.median().item() - 500) < 30
    with pytest.raises(ValueError, match="time_sampling"):
        process.train_times(2, "cosine")


def test_eps_process_reads_a_scheduler_config_and_refuses_other_predictions(tmp_path):
    from diffusers import PNDMScheduler

    pndm = {k: v for k, v in SD15.items() if k != "clip_sample"}  # SD1.5 ships a PNDM config
    PNDMScheduler(**{**pndm, "beta_end": 0.02}).save_pretrained(tmp_path / "scheduler")
    process = EpsProcess.from_folder(tmp_path)
    expected = DDIMScheduler(**{**SD15, "beta_end": 0.02}).alphas_cumprod
    torch.testing.assert_close(process.alphas_cumprod, expected.float())
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        EpsProcess.from_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="v_prediction"):
        EpsProcess({"prediction_type": "v_prediction"})


# ----------------------------------------------------------------------------- step functions


def test_euler_step_by_hand():
    """x_next = x + (sigma_next - sigma) v, per row: dt = -0.25 and -0.5."""
    x = torch.tensor([[1.0, 2.0], [0.0, -4.0]]).view(2, 2, 1, 1)
    v = torch.tensor([[3.0, -1.0], [2.0, 2.0]]).view(2, 2, 1, 1)
    out = euler_step(v, x, torch.tensor([0.75, 1.0]), torch.tensor([0.5, 0.5]))
    expected = torch.tensor([[0.25, 2.25], [-1.0, -5.0]]).view(2, 2, 1, 1)
    torch.testing.assert_close(out, expected)
    # sigma_next == sigma leaves x as it is; a full step 1 -> 0 lands on x - v
    same = euler_step(v, x, torch.tensor([0.3, 0.3]), torch.tensor([0.3, 0.3]))
    torch.testing.assert_close(same, x)
    torch.testing.assert_close(euler_step(v, x, torch.ones(2), torch.zeros(2)), x - v)


def test_ddim_step_by_hand():
    """Row 0: a = 0.36, a_next = 0.64, x_t = 1, eps = 0.5: x0 = (1 - 0.8 * 0.5) / 0.6 = 1,
    x_next = 0.8 * 1 + 0.6 * 0.5 = 1.1. Row 1: a = 0.64, a_next = 1, x_t = 2, eps = -1:
    x0 = (2 + 0.6) / 0.8 = 3.25, and a_next = 1 returns x0 itself."""
    x_t, eps = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1), torch.tensor([0.5, -1.0]).view(2, 1, 1, 1)
    out = ddim_step(eps, x_t, torch.tensor([0.36, 0.64]), torch.tensor([0.64, 1.0]))
    torch.testing.assert_close(out, torch.tensor([1.1, 3.25]).view(2, 1, 1, 1))
    # a step to the same alpha_bar is the identity
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    a = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(ddim_step(noise, x, a, a), x)


# ----------------------------------------------------------------------------- the flow grid


def _shifted(sigma, shift: float):
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_flow_grid_endpoints_and_order(steps):
    sigmas = FlowProcess().times(steps)
    assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    # shift 1: diffusers' grid, evenly spaced from 1 to 1 / num_train_timesteps, then 0
    expected = torch.cat([torch.linspace(1.0, 1e-3, steps, dtype=torch.float64), torch.zeros(1)])
    torch.testing.assert_close(sigmas.double(), expected, rtol=0, atol=1e-6)


def test_flow_grid_shift_moves_the_grid_towards_noise():
    """SD3's shift s maps sigma to s sigma / (1 + (s - 1) sigma); diffusers spaces the grid evenly
    between 1 and the shifted sigma_min, then shifts it: sigmas = f(linspace(1, f(1e-3)))."""
    plain, shifted = FlowProcess().times(4), FlowProcess().times(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and torch.all(shifted[1:] < shifted[:-1])
    assert torch.all(shifted[1:-1] > plain[1:-1])
    grid = torch.linspace(1.0, _shifted(1e-3, 3.0), 4, dtype=torch.float64)
    torch.testing.assert_close(shifted[:-1].double(), _shifted(grid, 3.0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        FlowProcess().times(0)


def test_the_step_functions_have_one_home():
    assert not hasattr(sampling, "euler_step") and not hasattr(sampling, "ddim_step")
    assert not hasattr(sampling, "flow_sigmas")  # the flow grid has one home: FlowProcess.times
