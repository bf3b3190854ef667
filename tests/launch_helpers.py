"""Running idruid's trainer on two CPU processes through accelerate's own launcher, for the tests
that check that P processes at batch B train like one process at P x B.

``accelerate launch --multi_gpu --num_processes 2`` with ``ACCELERATE_USE_CPU=1``: on a machine
without GPUs ``--multi_gpu`` is what makes accelerate start the processes (through torch's
elastic launcher, as torchrun does), and ACCELERATE_USE_CPU is what accelerate's ``--cpu`` flag
sets, so that each process joins a gloo (MULTI_CPU) group. ``--cpu`` alone starts one process:
accelerate leaves multi-CPU process creation to ``mpirun`` (``--mpirun_hostfile``), which this
machine does not have.

A test file launches itself as the script; run as a script it trains with
``RecordingAccelerator``, which saves each rank's trainable weights at every checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

import idruid
import idruid.train as train_module
from idruid.config import load_config


class RecordingAccelerator(Accelerator):
    """An Accelerator that saves this rank's trainable weights whenever a checkpoint is saved."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_save_state_pre_hook(self._save_weights)

    def _save_weights(self, models, weights, output_dir) -> None:
        model = self.unwrap_model(models[0])
        folder = Path(output_dir).parents[1] / "weights"
        folder.mkdir(exist_ok=True)
        state = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
        name = Path(output_dir).name.removesuffix(".partial")  # saved there, then renamed into place
        torch.save(state, folder / f"{name}-rank{self.process_index}.pt")


def train_recording(out: Path, overrides: list[str], preset: str = "tiny") -> None:
    """Train ``preset`` with ``overrides`` into ``out``, recording weights at checkpoints."""
    original, threads = train_module.Accelerator, torch.get_num_threads()
    train_module.Accelerator = RecordingAccelerator
    try:
        train_module.train(load_config(preset, overrides), out, progress=False)
    finally:
        train_module.Accelerator = original
        torch.set_num_threads(threads)


def launch_two(args: list[str], root: Path, extra_env: dict | None = None, timeout: int = 300):
    """``accelerate launch`` on two CPU processes of ``args`` (a script and its arguments, or
    ``-m module ...``); returns the CompletedProcess."""
    src = str(Path(idruid.__file__).parents[1])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")},
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(root / "hf"),  # no default accelerate config of the user's
        # idruid, and this folder for the launched test files' helpers
        "PYTHONPATH": os.pathsep.join([src, str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        *args,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def weights(run: Path, step: int, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(run / "weights" / f"step-{step:07d}-rank{rank}.pt")


def log(run: Path) -> list[dict]:
    """The records of a run's ``log.jsonl`` (or of a probe's ``probe.jsonl``)."""
    path = run / "log.jsonl" if (run / "log.jsonl").is_file() else run / "probe.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Euclidean distance between two sets of weights (all tensors as one vector)."""
    assert a.keys() == b.keys()
    return torch.stack([(a[k].float() - b[k].float()).norm() for k in a]).norm().item()
