"""Baselines, standardisation and clipping of the RL stage's advantages, against hand-worked values."""

import math

import pytest
import torch

from idruid.rl.advantages import (
    clip_advantages,
    group_advantages,
    group_means,
    one_sign,
    standardise,
    within_group_variance,
)


def test_group_means_by_hand():
    rewards = torch.tensor([1.0, 3.0, 10.0, 20.0])
    torch.testing.assert_close(group_means(rewards, 2), torch.tensor([2.0, 2.0, 15.0, 15.0]))
    per_instance = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 1.0], [7.0, 1.0]])
    torch.testing.assert_close(
        group_means(per_instance, 2), torch.tensor([[2.0, 1.0], [2.0, 1.0], [6.0, 1.0], [6.0, 1.0]])
    )
    with pytest.raises(ValueError, match="group_size"):
        group_means(rewards, 3)


def test_batch_standardisation_by_hand():
    # weighted entries 1, -1, 3 (the 100 is padding): mean 1, variance (0 + 4 + 4) / 3
    advantages = torch.tensor([[1.0, -1.0], [3.0, 100.0]])
    weight = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    std = math.sqrt(8.0 / 3.0)
    out = standardise(advantages, "batch", weight=weight, eps=0.0)
    torch.testing.assert_close(out[weight.bool()], torch.tensor([1.0, -1.0, 3.0]) / std)
    assert standardise(advantages, "none") is advantages


def test_group_standardisation_by_hand():
    # (steps=1, B=4) in groups of 2 along dim 1: std of (1, 3) is 1, of (2, 6) is 2
    advantages = torch.tensor([[1.0, 3.0, 2.0, 6.0]])
    out = standardise(advantages, "group", group_size=2, batch_dim=1, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, 3.0, 1.0, 3.0]]))


def test_grpo_advantages_are_flow_grpo_s():
    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0])
    # group 1: mean 2, std 1 -> -1, 1; group 2: identical rewards -> 0 (eps keeps it finite)
    torch.testing.assert_close(
        group_advantages(rewards, 2), torch.tensor([-1.0, 1.0, 0.0, 0.0]), atol=1e-3, rtol=0
    )
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(rewards, 1)


def test_clipping_and_one_sign():
    advantages = torch.tensor([-7.0, -2.0, 0.5, 9.0])
    torch.testing.assert_close(clip_advantages(advantages, 5.0), torch.tensor([-5.0, -2.0, 0.5, 5.0]))
    assert clip_advantages(advantages, 0.0) is advantages
    assert not one_sign(advantages)
    assert one_sign(torch.tensor([0.0, 1.0, 2.0])) and one_sign(torch.tensor([-1.0, 0.0]))
    assert one_sign(advantages, torch.tensor([0.0, 0.0, 1.0, 1.0]))  # only the counted entries


def test_within_group_variance_by_hand():
    # groups (1, 3): unbiased variance 2; (2, 2, ...) -> groups of 2: (2, 2) variance 0
    assert within_group_variance(torch.tensor([1.0, 3.0, 2.0, 2.0]), 2) == pytest.approx(1.0)
    loop = []
    rewards = torch.randn(12)
    for g in range(3):
        values = rewards[4 * g : 4 * g + 4].tolist()
        mean = sum(values) / 4
        loop.append(sum((v - mean) ** 2 for v in values) / 3)
    assert within_group_variance(rewards, 4) == pytest.approx(sum(loop) / 3, rel=1e-5)
