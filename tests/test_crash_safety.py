"""Training survives SIGKILL at any moment: checkpoints are written whole or not at all
(train_state.py, atomic.py), a rerun resumes from the newest complete one and ends on the same
weights as an uninterrupted run, and its log holds each step once."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from idruid.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from idruid.config import load_config
from idruid.faults import CRASH_ENV
from idruid.train import train
from idruid.train_state import find_resumable, trim_log

OVERRIDES = ["steps=6", "checkpoint_every=1", "threads=1"]


def _run(out, crash: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    if crash is not None:
        env[CRASH_ENV] = crash
    command = [sys.executable, "-m", "idruid.cli", "train", "--config", "tiny", "--out", str(out), *OVERRIDES]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def _assert_same_weights(a, b) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_sigkill_inside_and_between_checkpoint_writes_resumes_to_the_same_weights(tmp_path):
    reference = tmp_path / "reference"
    train(load_config("tiny", OVERRIDES), reference, progress=False)

    run = tmp_path / "run"
    # killed inside the write of step 2's checkpoint: only step 1's is complete
    killed = _run(run, "checkpoint-write:2")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (run / "checkpoints" / "step-0000002.partial").is_dir()
    assert find_resumable(run / "checkpoints")[1] == 1
    # resumed from step 1, killed after step 4's log record and before its checkpoint
    killed = _run(run, "before-checkpoint:4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "resuming from" in killed.stdout and "at step 1" in killed.stdout
    assert _steps(run) == [1, 2, 3, 4]
    # resumed from step 3 (step 4's record dropped), killed while exporting model/
    killed = _run(run, "export:6")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "at step 3" in killed.stdout and "dropped 1 log.jsonl record(s) after step 3" in killed.stdout
    assert not (run / "model").exists() and (run / "model.partial").is_dir()
    # the last rerun resumes at the final step and only exports
    done = _run(run, None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "at step 6" in done.stdout
    assert _steps(run) == _steps(reference) == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000005", "step-0000006"]
    assert not (run / "model.partial").exists()
    # bit-identical on CPU: the trained weights, optimiser-stepped, and the exported EMA weights
    last = "checkpoints/step-0000006/model.safetensors"
    _assert_same_weights(run / last, reference / last)
    _assert_same_weights(run / "model" / "model.safetensors", reference / "model" / "model.safetensors")


def test_resume_skips_broken_and_partial_checkpoints_and_says_why(tmp_path, capsys):
    run = tmp_path / "run"
    config = load_config("tiny", ["steps=3", "checkpoint_every=1", "threads=1"])
    train(config, run, progress=False)
    ckpts = run / "checkpoints"
    newest = ckpts / "step-0000003" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    legacy_partial = ckpts / "step-0000009"  # an older idruid's half-written folder: no progress.json
    legacy_partial.mkdir()
    (legacy_partial / "model.safetensors").write_bytes(b"\x00" * 10)
    capsys.readouterr()
    config.steps = 4
    train(config, run, progress=False)
    out = capsys.readouterr().out
    assert f"skipped {legacy_partial}: no manifest.json" in out
    assert f"skipped {ckpts / 'step-0000003'}: model.safetensors has 100 bytes" in out
    assert f"resuming from {ckpts / 'step-0000002'} at step 2" in out
    assert _steps(run) == [1, 2, 3, 4]
    # the broken folders are pruned by the next save
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000003", "step-0000004"]


def test_a_changed_byte_is_caught_by_the_manifest_hash(tmp_path):
    run = tmp_path / "run"
    train(load_config("tiny", ["steps=2", "checkpoint_every=1", "threads=1"]), run, progress=False)
    state = run / "checkpoints" / "step-0000002" / "optimizer.bin"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF
    state.write_bytes(bytes(data))
    path, step, skipped = find_resumable(run / "checkpoints")
    assert step == 1 and path.name == "step-0000001"
    assert skipped == [f"skipped {state.parent}: optimizer.bin does not match its SHA-256 in the manifest"]


def test_trim_log_keeps_each_step_once_and_drops_a_cut_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    assert trim_log(log, 2) == 2
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert trim_log(log, 2) == 0
    assert trim_log(tmp_path / "absent.jsonl", 0) == 0


def test_save_checkpoint_replaces_a_checkpoint_whole_and_refuses_other_folders(tmp_path):
    model = load_checkpoint()
    out = tmp_path / "ckpt"
    (tmp_path / "ckpt.partial").mkdir()  # left by a killed export
    (tmp_path / "ckpt.partial" / "junk").write_text("x")
    save_checkpoint(model, out)
    save_checkpoint(model, out)  # over an earlier checkpoint: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert sorted(p.name for p in out.iterdir()) == ["idruid.json", "model.safetensors"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="holds other files \\(notes.txt\\)"):
        save_checkpoint(model, out)


EPOCH_OVERRIDES = ["steps=4", "checkpoint_every=1", "threads=1", "data_size=8", "warmup_steps=0"]


@pytest.fixture(scope="module")
def epoch_reference(tmp_path_factory):
    """An uninterrupted 4-step run over 2 batches per epoch."""
    run = tmp_path_factory.mktemp("epochs") / "reference"
    train(load_config("tiny", EPOCH_OVERRIDES), run, progress=False)
    return run


@pytest.mark.parametrize("first_steps", [1, 2])  # mid-epoch, and at an epoch boundary
def test_resume_within_and_at_the_end_of_an_epoch_is_bit_identical(tmp_path, epoch_reference, first_steps):
    resumed = tmp_path / "resumed"
    train(load_config("tiny", [*EPOCH_OVERRIDES, f"steps={first_steps}"]), resumed, progress=False)
    train(load_config("tiny", EPOCH_OVERRIDES), resumed, progress=False)
    last = "checkpoints/step-0000004/model.safetensors"
    _assert_same_weights(resumed / last, epoch_reference / last)
