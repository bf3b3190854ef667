"""idruid.rl.pool: the action pool of old policies' rollouts (paper 3.3, Algorithm 1), by hand:
capacity, first-in-first-out eviction, uniform draws of stored rollouts only, saving and loading."""

import pytest
import torch

from idruid.layout import Instance, Layout
from idruid.rl.pool import ActionPool
from idruid.rl.rollout import Rollout


def _layout(iteration: int) -> Layout:
    return Layout(f"prompt {iteration}", (Instance("a red circle", (0.1, 0.1, 0.5, 0.5)),))


def _rollout(iteration: int) -> Rollout:
    """A one-step, one-sample rollout whose tensors and iteration tell it apart."""
    value = torch.full((1, 1, 1, 2, 2), float(iteration))
    return Rollout(
        layouts=[_layout(iteration)],
        x_t=value,
        x_next=value + 0.5,
        log_prob=torch.full((1, 1), -float(iteration)),
        mean=value + 0.25,
        times=torch.tensor([1.0, 0.5]),
        images=value[0],
        iteration=iteration,
        reward=torch.tensor([float(iteration)]),
    )


def _iterations(pool: ActionPool) -> list[int]:
    return [entry.iteration for entry in pool.entries]


def test_capacity_must_be_positive():
    for capacity in (0, -2):
        with pytest.raises(ValueError, match=f"pool capacity must be at least 1, got {capacity}"):
            ActionPool(capacity)


def test_the_oldest_rollout_leaves_when_the_pool_is_full():
    pool = ActionPool(3)
    assert len(pool) == 0
    for k in range(5):
        pool.add(_rollout(k))
        assert len(pool) == min(k + 1, 3)
    assert _iterations(pool) == [2, 3, 4]  # 0 then 1 left, in the order they came
    pool.add(_rollout(5))
    assert _iterations(pool) == [3, 4, 5]
    single = ActionPool(1)
    for k in range(3):
        single.add(_rollout(k))
        assert _iterations(single) == [k]


def test_drawing_from_an_empty_pool_is_an_error():
    with pytest.raises(RuntimeError, match="the action pool is empty"):
        ActionPool(2).draw()


def test_draws_are_the_stored_rollouts_themselves_picked_by_the_generator():
    """A draw is entries[randint(len)] of the generator's stream: the same object, not a copy."""
    pool = ActionPool(3)
    stored = [_rollout(k) for k in range(5)]
    for entry in stored:
        pool.add(entry)
    drawn = pool.draw(torch.Generator().manual_seed(7))
    index = int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(7)))
    assert drawn is stored[2 + index]
    generator, reference = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(20):
        expected = pool.entries[int(torch.randint(3, (1,), generator=reference))]
        assert pool.draw(generator) is expected


def test_draws_are_uniform_over_the_stored_rollouts_only():
    pool = ActionPool(4)
    for k in range(6):
        pool.add(_rollout(k))
    generator = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(range(6), 0)
    draws = 4000
    for _ in range(draws):
        counts[pool.draw(generator).iteration] += 1
    assert counts[0] == counts[1] == 0  # evicted rollouts are never drawn
    for k in range(2, 6):  # 1000 expected each, binomial std about 27
        assert abs(counts[k] - draws / 4) < 150


def test_a_loaded_pool_keeps_its_saved_capacity_and_order():
    pool = ActionPool(2)
    for k in range(3):
        pool.add(_rollout(k))
    restored = ActionPool(5)
    restored.load_state_dict(pool.state_dict())
    assert restored.capacity == 2 and _iterations(restored) == [1, 2]
    torch.testing.assert_close(restored.entries[1].x_next, pool.entries[1].x_next)
    torch.testing.assert_close(restored.entries[0].reward, torch.tensor([1.0]))
    assert restored.entries[0].layouts == [_layout(1)]
    restored.add(_rollout(9))  # the saved capacity, not the constructor's, bounds it
    assert _iterations(restored) == [2, 9]
