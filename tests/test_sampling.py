"""idruid.sampling: the layout-step count, per-layout noise, classifier-free guidance on a toy model
and the sampling loop driven by a fake model (the step functions and the flow grid by hand are in
test_processes.py).

(SamplingSettings' defaults and overrides are tested in test_sampling_settings.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from idruid.config import SamplingSettings
from idruid.diffusion import euler_step
from idruid.layout import Instance, Layout
from idruid.sampling import (
    guided_prediction,
    initial_noise,
    layout_steps,
    sample,
    seeded_noise,
)

LATENT = (2, 4, 4)


def _column(*values: float) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1)


def _layouts(seeds) -> list[Layout]:
    inst = (Instance("a red circle", (0.1, 0.1, 0.5, 0.5)),)
    return [Layout("shapes", inst, seed=s) for s in seeds]


# ----------------------------------------------------------------------------- layout steps


@pytest.mark.parametrize(
    ("steps", "fraction", "ceil", "floor"),
    [
        (10, 0.3, 3, 3),  # exact
        (28, 0.3, 9, 8),  # 8.4: idruid rounds up, the authors' int() down
        (20, 0.3, 6, 6),
        (3, 0.3, 1, 0),  # 0.9: ceil keeps the layout branch for one step, floor drops it
        (1, 0.01, 1, 0),  # any fraction > 0 gives ceil at least one step
        (7, 0.0, 0, 0),  # no layout branch
        (7, 1.0, 7, 7),  # all steps
        (0, 0.5, 0, 0),
    ],
)
def test_layout_steps_by_hand(steps, fraction, ceil, floor):
    assert layout_steps(steps, fraction) == ceil == layout_steps(steps, fraction, "ceil")
    assert layout_steps(steps, fraction, "floor") == floor


@pytest.mark.parametrize(("steps", "fraction", "expected"), [(25, 0.28, 7), (100, 0.07, 7), (50, 0.14, 7)])
def test_layout_steps_ceil_of_an_exact_product(steps, fraction, expected):
    # float error: 0.28 * 25 = 7.000000000000001 is still 7 steps, not 8
    assert layout_steps(steps, fraction) == expected


def test_layout_steps_errors():
    for fraction in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="layout_fraction must be in"):
            layout_steps(10, fraction)
    with pytest.raises(ValueError, match="layout rounding 'round'"):
        layout_steps(10, 0.3, "round")


# ----------------------------------------------------------------------------- initial noise


def test_initial_noise_follows_each_layouts_seed():
    """A layout's seed picks its noise whatever its neighbours or the batch seed; the k-th layout
    without one takes seed + k."""
    noise = initial_noise(_layouts([7, None, 3, None]), LATENT, seed=100)
    assert noise.shape == (4, *LATENT)
    for row, seed in zip(noise, (7, 101, 3, 103), strict=True):
        torch.testing.assert_close(row, torch.randn(LATENT, generator=torch.Generator().manual_seed(seed)))
    alone = initial_noise(_layouts([3]), LATENT, seed=0)
    torch.testing.assert_close(alone[0], noise[2])
    torch.testing.assert_close(seeded_noise(LATENT, 101), noise[1])
    assert not torch.equal(noise[0], noise[2])


# ----------------------------------------------------------------------------- guidance on a toy model


class ToyCond:
    """One scale per row; what guided_prediction asks of a conditioning: rows and stacking."""

    def __init__(self, scale: torch.Tensor):
        self.scale = scale  # (B,)

    def to(self, device):
        return self

    @staticmethod
    def cat(parts):
        return ToyCond(torch.cat([p.scale for p in parts]))

    def rows(self, index):
        return ToyCond(self.scale[index])


class ToyModel(nn.Module):
    """prediction = w * scale * x + t (+ 10 with the layout branch on), per row."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))
        self.calls: list[tuple[int, bool]] = []  # (rows, layout_on) of every forward

    def forward(self, x, t, cond, layout_on=True):
        self.calls.append((len(x), layout_on))
        prediction = self.w * cond.scale.view(-1, 1, 1, 1) * x + t.view(-1, 1, 1, 1)
        return prediction + (10.0 if layout_on else 0.0), None


def test_guided_prediction_by_hand():
    """Row 0: x = 1, t = 0.5, conditional scale 3, unconditional 1: c = 2 * 3 + 0.5 = 6.5,
    u = 2 * 1 + 0.5 = 2.5, guided at cfg 4: 2.5 + 4 * (6.5 - 2.5) = 18.5. Row 1: x = -1, t = 0.25,
    scales 1 and 0: c = -1.75, u = 0.25, guided: 0.25 + 4 * (-2) = -7.75."""
    model = ToyModel()
    x, t = _column(1.0, -1.0), torch.tensor([0.5, 0.25])
    cond = ToyCond.cat([ToyCond(torch.tensor([3.0, 1.0])), ToyCond(torch.tensor([1.0, 0.0]))])
    guided = guided_prediction(model, x, t, cond, cfg=4.0, layout_on=False)
    torch.testing.assert_close(guided, _column(18.5, -7.75))
    assert model.calls == [(4, False)]  # one batched pass over [cond; uncond]
    # with the layout branch on both branches gain 10, and so does the guided prediction
    on = guided_prediction(model, x, t, cond, cfg=4.0, layout_on=True)
    torch.testing.assert_close(on, _column(28.5, 2.25))
    # cfg 1: the conditional prediction alone, from a conditioning without unconditional rows
    model.calls.clear()
    plain = guided_prediction(model, x, t, ToyCond(torch.tensor([3.0, 1.0])), cfg=1.0, layout_on=False)
    torch.testing.assert_close(plain, _column(6.5, -1.75))
    assert model.calls == [(2, False)]


def test_detached_unconditional_branch_same_value_gradient_through_the_conditional_only():
    """Same value; d guided / d w is cfg * dc/dw with the unconditional branch detached, and
    cfg * dc/dw + (1 - cfg) * du/dw without: row 0 above, dc/dw = 3, du/dw = 1 at cfg 4."""
    x, t = _column(1.0), torch.tensor([0.5])
    cond = ToyCond.cat([ToyCond(torch.tensor([3.0])), ToyCond(torch.tensor([1.0]))])
    grads, values = [], []
    for detach in (False, True):
        model = ToyModel()
        guided = guided_prediction(model, x, t, cond, cfg=4.0, layout_on=False, detach_uncond=detach)
        guided.sum().backward()
        values.append(guided.detach())
        grads.append(model.w.grad.item())
        assert model.calls == ([(1, False), (1, False)] if detach else [(2, False)])
    torch.testing.assert_close(values[0], values[1])
    assert grads == [pytest.approx(4 * 3 + (1 - 4) * 1), pytest.approx(4 * 3)]


# ----------------------------------------------------------------------------- the sampling loop


class FakeProcess:
    """A flow-like process: evenly spaced times from 1 to 0, the Euler step."""

    def times(self, steps, shift=1.0):
        return torch.linspace(1.0, 0.0, steps + 1)

    def step(self, prediction, x_t, t, t_next):
        return euler_step(prediction, x_t, t, t_next)


class FakeModel(nn.Module):
    """Predicts velocity ``velocity`` everywhere and records every call's layout flag; its text
    encoder gives one ToyCond row per layout, the unconditional rows scale 0."""

    def __init__(self, velocity: float = 0.0, rounding: str = "ceil"):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # sample() reads the device from the parameters
        self.velocity = velocity
        self.layout_rounding = rounding  # what a backbone declares (models.base.LayoutModel)
        self.guidance = ("cfg",)
        self.latent_shape = LATENT
        self.process = FakeProcess()
        self.layout_flags: list[bool] = []

    def encode_text(self, layouts):
        return ToyCond(torch.ones(len(layouts)))

    def unconditional(self, cond, negative_prompts=None):
        return ToyCond(torch.zeros_like(cond.scale))

    def forward(self, x, t, cond, layout_on=True):
        self.layout_flags.append(layout_on)
        return torch.full_like(x, self.velocity), None

    def decode_latents(self, latents):
        return 2.0 * latents


def test_sample_with_a_zero_velocity_returns_the_initial_noise():
    """v = 0 leaves x where it started: the latents are initial_noise of the seed, and the
    images are the fake codec's decode of them, clamped to [-1, 1]."""
    layouts = _layouts([None, 5, None])
    settings = SamplingSettings(steps=3, cfg=2.0, layout_fraction=0.5)
    latents = sample(FakeModel(), layouts, settings, seed=11, decode=False)
    torch.testing.assert_close(latents, initial_noise(layouts, LATENT, seed=11))
    images = sample(FakeModel(), layouts, settings, seed=11)
    torch.testing.assert_close(images, (2.0 * latents).clamp(-1.0, 1.0))
    assert images.abs().max() == 1.0  # the clamp bit


def test_sample_is_deterministic_given_the_seed():
    """A constant velocity 0.5 over the 1 -> 0 grid moves x by -0.5: the output is the seed's
    noise minus 0.5, the same on every call, different for another seed."""
    layouts, settings = _layouts([None, None]), SamplingSettings(steps=4, cfg=1.0)
    first = sample(FakeModel(0.5), layouts, settings, seed=3, decode=False)
    again = sample(FakeModel(0.5), layouts, settings, seed=3, decode=False)
    other = sample(FakeModel(0.5), layouts, settings, seed=4, decode=False)
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.testing.assert_close(first, initial_noise(layouts, LATENT, seed=3) - 0.5)
    # x_init replaces the noise of the seed
    x_init = torch.zeros(2, *LATENT)
    torch.testing.assert_close(
        sample(FakeModel(0.5), layouts, settings, x_init=x_init, decode=False), x_init - 0.5
    )


@pytest.mark.parametrize(
    ("steps", "fraction", "rounding", "on"),
    [
        (10, 0.3, "ceil", 3),
        (10, 0.25, "ceil", 3),
        (10, 0.25, "floor", 2),
        (6, 0.0, "ceil", 0),
        (6, 1.0, "ceil", 6),
    ],
)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_layout_fraction_sets_the_leading_steps_with_the_layout_branch(steps, fraction, rounding, on, cfg):
    """One model call per step (conditional and unconditional rows batched under guidance), the
    layout branch on for the first ``layout_steps`` of them with the model's rounding, then off."""
    model = FakeModel(rounding=rounding)
    sample(model, _layouts([1, 2]), SamplingSettings(steps=steps, cfg=cfg, layout_fraction=fraction))
    assert model.layout_flags == [True] * on + [False] * (steps - on)


def test_sample_walks_the_time_grid_and_calls_back_after_each_step():
    """step_fn sees (t_i, t_{i+1}) of the grid in order; on_step may replace x."""
    seen = []

    def step_fn(prediction, x_t, t, t_next):
        seen.append((t.tolist(), t_next.tolist()))
        return x_t + 1.0

    def on_step(i, t, x):
        return torch.zeros_like(x) if i == 1 else None  # reset after the second step

    times = torch.tensor([1.0, 0.75, 0.25, 0.0])  # exact in float32
    layouts, settings = _layouts([1, 2]), SamplingSettings(steps=3, cfg=1.0)
    out = sample(FakeModel(), layouts, settings, step_fn=step_fn, times=times, on_step=on_step, decode=False)
    assert seen == [([1.0, 1.0], [0.75, 0.75]), ([0.75, 0.75], [0.25, 0.25]), ([0.25, 0.25], [0.0, 0.0])]
    torch.testing.assert_close(out, torch.ones(2, *LATENT))  # reset to 0 after step 2, + 1 in step 3
    with pytest.raises(ValueError, match="a time grid of 3 steps has 4 times, got 3"):
        sample(FakeModel(), layouts, settings, times=times[:3])
