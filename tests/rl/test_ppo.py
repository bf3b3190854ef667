"""PPO's clipped loss (Eq. 9-10) and GRPO's group advantages."""

import pytest
import torch

from idruid.rl.advantages import group_advantages
from idruid.rl.ppo import ppo_loss


def test_loss_is_minus_advantage_at_ratio_one():
    log_prob = torch.tensor([[-1.0, -2.0], [0.5, 0.1]], requires_grad=True)
    advantages = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    terms = ppo_loss(log_prob, log_prob.detach().clone(), advantages)
    assert terms.loss.item() == pytest.approx(-advantages.mean().item())
    assert terms.clip_fraction.item() == 0.0
    terms.loss.backward()  # inside the clip range: d/dlogp of -A * ratio = -A / numel
    torch.testing.assert_close(log_prob.grad, -advantages / 4)


@pytest.mark.parametrize(("shift", "advantage"), [(0.1, 2.0), (-0.1, -2.0)])
def test_no_gradient_outside_the_clip_range(shift, advantage):
    """A ratio that already moved past 1 +- zeta in the advantage's direction gets no gradient."""
    old = torch.tensor([-1.0, -0.5])
    log_prob = (old + shift).requires_grad_(True)
    terms = ppo_loss(log_prob, old, torch.full((2,), advantage), clip_range=1e-4)
    terms.loss.backward()
    assert torch.equal(log_prob.grad, torch.zeros(2))
    assert terms.clip_fraction.item() == 1.0
    # the other way round the unclipped term is the larger loss and keeps its gradient
    log_prob = (old - shift).requires_grad_(True)
    ppo_loss(log_prob, old, torch.full((2,), advantage), clip_range=1e-4).loss.backward()
    assert (log_prob.grad.abs() > 0).all()


def test_kl_term_is_added_with_its_weight():
    log_prob = torch.zeros(3)
    kl = torch.tensor([0.1, 0.2, 0.6])
    terms = ppo_loss(log_prob, log_prob, torch.ones(3), kl=kl, kl_weight=0.5)
    assert terms.loss.item() == pytest.approx(-1.0 + 0.5 * 0.3)
    assert terms.kl.item() == pytest.approx(0.3)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        ppo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])  # groups (1, 3), (2, 2), (0, 4)
    advantages = group_advantages(rewards, group_size=2, eps=0.0 + 1e-12)
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.zeros(4), 1)


def test_weight_leaves_padded_entries_out():
    """Per-instance credit pads instances: a zero weight removes an entry from the loss, its
    gradient and the clip fraction, as if it were not there."""
    log_prob = torch.tensor([[-1.0, -2.0, 0.3]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, 0.0]])  # the padded third entry also sits outside the clip range
    advantages = torch.tensor([[1.0, -3.0, 5.0]])
    weight = torch.tensor([[True, True, False]])
    terms = ppo_loss(log_prob, old, advantages, weight=weight)
    assert terms.loss.item() == pytest.approx(-(1.0 - 3.0) / 2)
    assert terms.clip_fraction.item() == 0.0
    terms.loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-0.5, 1.5, 0.0]]))
    alone = ppo_loss(log_prob[:, :2], old[:, :2], advantages[:, :2])
    assert alone.loss.item() == pytest.approx(terms.loss.item())


def test_group_advantages_per_instance():
    """(B, N) rewards are standardised per instance column within each group."""
    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 5.0], [2.0, 1.0]])  # groups of 2
    advantages = group_advantages(rewards, group_size=2, eps=1e-12)
    torch.testing.assert_close(advantages, torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(torch.zeros(3, 2), 2)
