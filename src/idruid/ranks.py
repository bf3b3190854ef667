"""This process's share of a multi-process run, and the collectives that let P processes at a
per-process batch B compute what one process computes at P x B.

The rule (README, "Many GPUs"): every rank runs the same seeded random stream, so a draw for the
global batch is the same on every rank and each rank keeps its own rows ``[rank * B, (rank + 1)
* B)``; statistics of the global batch are taken after a gather or a sum over the ranks; a mean
whose count differs between ranks is divided by the global count. With one process every
operation here is the identity (no collective is called), so a single-process run computes
exactly what it computed before these existed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def check_joined(accelerator) -> None:
    """Refuse processes that were launched together (WORLD_SIZE > 1) but did not join one group:
    each would train alone on the same folder."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"launched as {launched} processes (WORLD_SIZE) but accelerate sees only this one, so each "
            "would train alone; on a machine without GPUs set ACCELERATE_USE_CPU=1 (see README)"
        )


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device | str = "cpu"  # where collectives run (NCCL needs the GPU; gloo takes the CPU)

    @classmethod
    def of(cls, accelerator) -> Ranks:
        return cls(accelerator.process_index, accelerator.num_processes, accelerator.device)

    def rows(self, per_rank: int) -> slice:
        """This rank's rows of a global batch of ``world * per_rank`` rows."""
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def randn(self, per_rank: int, shape: Sequence[int], **kwargs) -> torch.Tensor:
        """``torch.randn`` of the global batch (world x per_rank rows of ``shape``), this rank's rows:
        the noise of a row depends on its global index, not on which rank holds it."""
        return torch.randn((self.world * per_rank, *shape), **kwargs)[self.rows(per_rank)]

    def gather(self, tensor: torch.Tensor, dim: int = 0, ragged: int | None = None) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along ``dim`` in rank order (on every rank). Dimension
        ``ragged`` may differ between ranks (instances of a batch); it is zero-padded to the largest."""
        if self.world == 1:
            return tensor
        from accelerate.utils import gather, pad_across_processes

        moved = tensor.to(self.device)
        if ragged is not None:
            moved = pad_across_processes(moved, dim=ragged % tensor.ndim)
        gathered = gather(moved.movedim(dim, 0).contiguous()).movedim(0, dim)
        return gathered.to(tensor.device)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (on every rank)."""
        if self.world == 1:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor.to(self.device), reduction="sum").to(tensor.device)

    def mean(self, value: float, count: float = 1.0) -> float:
        """The mean over all ranks' entries of a per-rank mean ``value`` taken over ``count`` entries."""
        if self.world == 1:
            return value
        totals = self.sum(torch.tensor([value * count, count], dtype=torch.float64))
        return float(totals[0] / totals[1].clamp(min=1e-12))

    def divisor(self, weight: torch.Tensor) -> torch.Tensor:
        """What a rank divides a sum weighted by ``weight`` (0/1) by, so that the mean of the
        ranks' results (DDP's gradient average) is the global weighted mean: the global count
        over P; on one process the weight's own sum, at least 1."""
        count = weight.float().sum()
        if self.world > 1:
            count = self.sum(count) / self.world
        return count.clamp(min=1.0 / self.world)

    def average_gradients(self, parameters) -> None:
        """Replace each gradient by its mean over the ranks (what DDP does for the prepared model),
        for a module that accelerate does not wrap (the critic)."""
        grads = [param.grad for param in parameters if param.grad is not None]
        if self.world == 1 or not grads:
            return
        flat = self.sum(torch.cat([grad.reshape(-1) for grad in grads])) / self.world  # one all-reduce
        for grad, part in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
            grad.copy_(part.view_as(grad))


SINGLE = Ranks()  # one process: every operation is the identity
