"""A test hook that kills the process with SIGKILL at a named point, so that crash-safety tests
can stop training exactly inside a checkpoint write instead of racing a timer.

``IDRUID_CRASH_AT=<point>:<step>`` (e.g. ``checkpoint-write:3``) makes ``crash_point(point,
step)`` kill the process; unset, it does nothing. Points: ``before-checkpoint`` (the step's log
record written, its checkpoint not), ``checkpoint-write`` (state files written to the partial
folder, no manifest yet), ``checkpoint-rename`` (renamed into place, older ones not pruned) and
``export`` (``model/`` written to its partial folder, not swapped in).
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "IDRUID_CRASH_AT"


def crash_point(point: str, step: int) -> None:
    """Die by SIGKILL (no cleanup, no flush) when ``IDRUID_CRASH_AT`` names this point and step."""
    if os.environ.get(CRASH_ENV) == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
