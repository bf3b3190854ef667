"""idruid.ranks on one process: the identity, so single-process runs compute what they did; the
global draw and the rows of a rank (the collectives are tested on two processes, tests/rl/
test_multiprocess_rl.py)."""

import pytest
import torch

from idruid.ranks import SINGLE, Ranks, check_joined


def test_one_process_changes_nothing():
    values = torch.randn(3, 4)
    assert SINGLE.gather(values, dim=1, ragged=0) is values and SINGLE.sum(values) is values
    assert SINGLE.mean(0.25, count=7) == 0.25
    weight = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    assert SINGLE.divisor(weight).item() == 4.0 and SINGLE.divisor(weight[:, :0]).item() == 1.0
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.full((2,), 3.0)
    SINGLE.average_gradients([param])
    assert param.grad.tolist() == [3.0, 3.0]
    torch.manual_seed(0)
    plain = torch.randn(5, 2)
    torch.manual_seed(0)
    assert torch.equal(SINGLE.randn(5, (2,)), plain)  # the same draw as before ranks existed


def test_a_rank_keeps_its_rows_of_the_global_draw():
    torch.manual_seed(1)
    whole = torch.randn(6, 3)
    for rank in range(3):
        torch.manual_seed(1)
        assert torch.equal(Ranks(rank, 3).randn(2, (3,)), whole[2 * rank : 2 * rank + 2])
    assert Ranks(2, 3).rows(4) == slice(8, 12)


def test_unjoined_launched_processes_are_refused(monkeypatch):
    class Alone:
        num_processes = 1

    check_joined(Alone())
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="ACCELERATE_USE_CPU=1"):
        check_joined(Alone())
