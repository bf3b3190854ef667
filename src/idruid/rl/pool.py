"""The model pool MP of paper 3.3 / Algorithm 1: recorded actions of old policies.

Every RL iteration enqueues the rollout it sampled (states, actions, log-probabilities and means
of the first RL steps, plus the reward); the PPO update then draws one stored rollout at random,
so the "old policy" of Eq. 9 is the actor as it was one or a few iterations back. The oldest
entry leaves when the pool is full. The pool is saved with the training state (resume).
"""

from __future__ import annotations

from collections import deque

import torch

from .rollout import Rollout


class ActionPool:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"pool capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.entries: deque[Rollout] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: Rollout) -> None:
        self.entries.append(entry)

    def draw(self, generator: torch.Generator | None = None) -> Rollout:
        """One stored rollout, uniformly at random."""
        if not self.entries:
            raise RuntimeError("the action pool is empty: roll out before drawing")
        return self.entries[int(torch.randint(len(self.entries), (1,), generator=generator))]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "entries": [entry.state_dict() for entry in self.entries]}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.entries = deque((Rollout.from_state_dict(e) for e in state["entries"]), maxlen=self.capacity)
