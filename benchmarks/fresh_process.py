"""Run one measurement in a fresh process, so that no thread pool, cache or allocator state of an
earlier measurement carries over (each benchmark script measures every variant this way)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def in_fresh_process(measure: Callable[..., None], *args: Any) -> Any:
    """``measure(*args, queue)`` in a spawned process; returns what it put on ``queue``."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result
