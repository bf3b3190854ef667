"""Generation jobs for the page: run off the request thread, report step k of n, keep results apart.

Each job holds its own layout, settings, progress and PNG, under an unguessable id. Worker
threads take jobs from a pool, and one lock around the model lets a single job sample at a
time, whatever the pool size: the fast tokenizers refuse concurrent use ("Already borrowed")
and two samplers would only fight over the same cores or GPU memory. Progress comes from a
step function that wraps the sampler's own (``counting_step``), so sampling is unchanged.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..layout import Layout
from ..sampling import StepFn, generate
from .payload import GenerateRequest


def counting_step(on_step: Callable[[int], None], step_fn: StepFn) -> StepFn:
    """``step_fn`` that calls ``on_step(k)`` after its k-th step (k = 1, 2, ...)."""
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
    status: str = "queued"  # queued -> running -> done | failed
    step: int = 0  # sampling steps finished
    png: bytes | None = None
    size: tuple[int, int] | None = None  # (width, height) of the image
    error: str | None = None
    created: float = field(default_factory=time.time)
    seconds: float | None = None  # sampling time once done

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


class JobRunner:
    """Queue of generation jobs on one model; ``keep`` bounds how many finished jobs stay."""

    def __init__(
        self,
        model,
        layout_fraction: float,
        shift: float,
        device: str = "cpu",
        workers: int = 1,
        keep: int = 64,
        step_fn: StepFn | None = None,  # None: the model's own deterministic step
    ):
        self.model = model
        self.layout_fraction = layout_fraction
        self.shift = shift
        self.device = device
        self.keep = keep
        self.step_fn = step_fn
        self.model_lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # insertion order = age
        self._jobs_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="idruid-ui-job")

    def submit(self, request: GenerateRequest) -> Job:
        job = Job(uuid.uuid4().hex, request.layout, request.steps, request.cfg)
        with self._jobs_lock:
            self._jobs[job.id] = job
            self._forget_old()
        self._pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._jobs_lock:
            return self._jobs.get(job_id)

    def __len__(self) -> int:
        with self._jobs_lock:
            return len(self._jobs)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.status in ("done", "failed")]
        for job_id in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job_id]

    def _run(self, job: Job) -> None:
        def on_step(k: int) -> None:
            job.step = k

        try:
            with self.model_lock:
                job.status = "running"
                started = time.perf_counter()
                image = generate(
                    self.model,
                    [job.layout],
                    progress=False,
                    steps=job.steps,
                    cfg=job.cfg,
                    seed=job.layout.seed,
                    layout_fraction=self.layout_fraction,
                    shift=self.shift,
                    device=self.device,
                    step_fn=counting_step(on_step, self.step_fn or self.model.process.step),
                )[0]
                job.seconds = time.perf_counter() - started
            job.png = png_bytes(image)
            job.size = (image.shape[1], image.shape[0])
            job.status = "done"
        except Exception as err:  # reported to the page; the worker lives on
            job.error = f"{type(err).__name__}: {err}"
            job.status = "failed"
