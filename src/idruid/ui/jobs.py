"""Generation jobs for the page: run off the request thread, report step k of n, keep results apart.

Each job holds its own layout, settings, progress and PNG, under an unguessable id. Worker
threads take jobs from a pool, and one lock around the model lets a single job sample at a
time, whatever the pool size: the fast tokenizers refuse concurrent use ("Already borrowed")
and two samplers would only fight over the same cores or GPU memory. Progress comes from a
step function that wraps the sampler's own (``counting_step``), so sampling is unchanged; the
same wrapper stops a job that was cancelled or ran past its timeout at its next step.

Memory stays bounded: at most ``max_pending`` jobs wait or run (``submit`` raises QueueFull
beyond that) and at most ``keep`` finished ones are remembered.
"""

from __future__ import annotations

import io
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..layout import Layout
from ..sampling import SamplingSettings, StepFn, generate
from .limits import JOB_TIMEOUT, KEEP_FINISHED, MAX_QUEUE
from .payload import GenerateRequest


class QueueFull(RuntimeError):
    """As many jobs wait or run as the server allows; ``retry_after`` is a guess in seconds."""

    def __init__(self, pending: int, retry_after: int):
        super().__init__(f"the queue is full ({pending} jobs waiting or running); retry in {retry_after} s")
        self.retry_after = retry_after


class JobStopped(Exception):
    """Raised from a job's step function to stop its sampler: cancelled, or past its timeout."""


def counting_step(on_step: Callable[[int], None], step_fn: StepFn) -> StepFn:
    """``step_fn`` that calls ``on_step(k)`` after its k-th step (k = 1, 2, ...); ``on_step`` may
    raise JobStopped to end sampling there."""
    done = 0

    def step(prediction, x_t, t, t_next):
        nonlocal done
        x_next = step_fn(prediction, x_t, t, t_next)
        done += 1
        on_step(done)
        return x_next

    return step


@dataclass
class Job:
    id: str
    layout: Layout
    steps: int
    cfg: float
    status: str = "queued"  # queued -> running -> done | failed | cancelled
    step: int = 0  # sampling steps finished
    png: bytes | None = None
    size: tuple[int, int] | None = None  # (width, height) of the image
    error: str | None = None
    created: float = field(default_factory=time.time)
    seconds: float | None = None  # sampling time once done
    cancel_requested: bool = False  # set by cancel(); the sampler stops at its next step

    def snapshot(self) -> dict:
        """What the polling endpoint reports."""
        return {
            "id": self.id,
            "status": self.status,
            "step": self.step,
            "steps": self.steps,
            "cfg": self.cfg,
            "layout": self.layout.to_dict(),
            "size": list(self.size) if self.size else None,
            "error": self.error,
            "seconds": self.seconds,
        }


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file contents."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


FINISHED = ("done", "failed", "cancelled")


class JobRunner:
    """Queue of generation jobs on one model; ``max_pending`` bounds the jobs waiting or running,
    ``keep`` the finished ones remembered, ``timeout`` (seconds) the sampling time of one job."""

    def __init__(
        self,
        model,
        settings: SamplingSettings,  # the checkpoint's; each job sets steps and cfg
        device: str = "cpu",
        workers: int = 1,
        keep: int = KEEP_FINISHED,
        step_fn: StepFn | None = None,  # None: the model's own deterministic step
        max_pending: int = MAX_QUEUE,
        timeout: float = JOB_TIMEOUT,
    ):
        self.model = model
        self.settings = settings
        self.device = device
        self.keep = keep
        self.max_pending = max_pending
        self.timeout = timeout
        self._job_seconds = 1.0  # running mean of a job's sampling time, for the retry hint
        self.totals = dict.fromkeys(("accepted", "rejected", *FINISHED), 0)  # since start-up
        self.step_fn = step_fn
        self.model_lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # insertion order = age
        self._jobs_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="idruid-ui-job")

    def submit(self, request: GenerateRequest) -> Job:
        """Queue a job, or raise QueueFull when ``max_pending`` jobs already wait or run."""
        job = Job(uuid.uuid4().hex, request.layout, request.steps, request.cfg)
        with self._jobs_lock:
            pending = self._pending()
            if pending >= self.max_pending:
                self.totals["rejected"] += 1
                raise QueueFull(pending, max(1, math.ceil(self._job_seconds * pending)))
            self.totals["accepted"] += 1
            self._jobs[job.id] = job
            self._forget_old()
        self._pool.submit(self._run, job)
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, a running one at its next sampling step (None: unknown)."""
        with self._jobs_lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status not in FINISHED:
                job.cancel_requested = True
                if job.status == "queued":
                    job.status, job.error = "cancelled", "cancelled before it started"
                    self.totals["cancelled"] += 1
        return job

    def counts(self) -> dict[str, int]:
        """How many jobs are held in each state now (for /api/health)."""
        with self._jobs_lock:
            counts = dict.fromkeys(("queued", "running", *FINISHED), 0)
            for job in self._jobs.values():
                counts[job.status] += 1
            return counts

    def _finish(self, job: Job, status: str) -> None:
        with self._jobs_lock:
            job.status = status
            self.totals[status] += 1

    def _pending(self) -> int:
        return sum(job.status not in FINISHED for job in self._jobs.values())

    def get(self, job_id: str) -> Job | None:
        with self._jobs_lock:
            return self._jobs.get(job_id)

    def __len__(self) -> int:
        with self._jobs_lock:
            return len(self._jobs)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.status in FINISHED]
        for job_id in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job_id]

    def _run(self, job: Job) -> None:
        started = time.perf_counter()

        def on_step(k: int) -> None:
            job.step = k
            if job.cancel_requested:
                raise JobStopped("cancelled")
            if time.perf_counter() - started > self.timeout:
                raise JobStopped(f"stopped after {self.timeout:g} s (the server's --job-timeout)")

        try:
            with self.model_lock:
                with self._jobs_lock:
                    if job.status == "cancelled":
                        return
                    job.status = "running"
                started = time.perf_counter()
                image = generate(
                    self.model,
                    [job.layout],
                    self.settings.override(steps=job.steps, cfg=job.cfg),
                    seed=job.layout.seed,
                    progress=False,
                    device=self.device,
                    step_fn=counting_step(on_step, self.step_fn or self.model.process.step),
                )[0]
                job.seconds = time.perf_counter() - started
                self._job_seconds = 0.8 * self._job_seconds + 0.2 * job.seconds
            job.png = png_bytes(image)
            job.size = (image.shape[1], image.shape[0])
            self._finish(job, "done")
        except JobStopped as stop:
            job.error = str(stop)
            self._finish(job, "cancelled" if job.cancel_requested else "failed")
        except Exception as err:  # reported to the page; the worker lives on
            job.error = f"{type(err).__name__}: {err}"
            self._finish(job, "failed")
