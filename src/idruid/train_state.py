"""Crash-safe resumable training state: ``checkpoints/step-NNNNNNN`` folders that are complete or
absent, the newest complete one found on resume, and a log that holds each step once.

A checkpoint is written by ``accelerator.save_state`` into ``step-NNNNNNN.partial``; the main
process then adds ``progress.json`` and ``manifest.json`` (size and SHA-256 of every file) and
renames the folder into place (idruid.atomic). On resume, a folder whose manifest is missing or
disagrees with its files (a kill inside a write, a truncated copy, a full disk) is skipped with
the reason, and the next older one is taken. The model file holds only the trainable state
(``save_trainable_state_only``): never the text encoders or a base folder's frozen backbone.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .atomic import PARTIAL_SUFFIX, partial_path, replace_dir
from .errors import CheckpointError
from .faults import crash_point

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(folder: Path, step: int) -> Path:
    return folder / f"step-{step:07d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def write_manifest(folder: Path, step: int) -> None:
    """Record ``progress.json`` and then the size and hash of every file: the manifest is the
    last file written, so its presence says the rest is there."""
    (folder / PROGRESS).write_text(json.dumps({"step": step}))
    files = {
        name: {"size": path.stat().st_size, "sha256": _sha256(path)}
        for name, path in _files(folder).items()
        if name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1, sort_keys=True))


def incomplete_reason(folder: Path, hashes: bool = True) -> str | None:
    """Why ``folder`` cannot be resumed from (None: complete); ``hashes=False`` checks sizes only."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json (the write was interrupted)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (ValueError, KeyError, TypeError) as err:
        return f"manifest.json is malformed ({err})"
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != record.get("size"):
            return f"{name} has {size} bytes, the manifest records {record.get('size')}"
        if hashes and _sha256(path) != record.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest"
    if _progress_step(folder) is None:
        return "progress.json is malformed"
    return None


def _progress_step(folder: Path) -> int | None:
    try:
        step = json.loads((folder / PROGRESS).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def _numbered(folder: Path) -> list[tuple[int, Path]]:
    """The ``step-N`` folders under ``folder``, newest first (partial folders left out)."""
    found = []
    for path in folder.glob("step-*"):
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def find_resumable(folder: Path) -> tuple[Path | None, int, list[str]]:
    """The newest complete checkpoint under ``folder`` and its step (None, 0 when there is none),
    with one line per newer folder that was skipped and why."""
    skipped = []
    for _, path in _numbered(folder):
        reason = incomplete_reason(path)
        if reason is None:
            return path, _progress_step(path), skipped
        skipped.append(f"skipped {path}: {reason}")
    return None, 0, skipped


def save_training_state(accelerator, folder: Path, step: int, keep: int) -> Path:
    """Save the accelerate state of ``step`` crash-safely, then keep only the newest ``keep``
    complete checkpoints (and drop broken or partial folders). Called on every process."""
    crash_point("before-checkpoint", step)
    target = checkpoint_dir(folder, step)
    partial = partial_path(target)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        if partial.exists():  # left by a run killed while writing this same step
            shutil.rmtree(partial)
        partial.mkdir()  # before any rank writes its RNG file into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every rank's RNG file is in before the manifest
    if accelerator.is_main_process:
        crash_point("checkpoint-write", step)
        write_manifest(partial, step)
        replace_dir(partial, target)
        crash_point("checkpoint-rename", step)
        _prune(folder, keep)
    accelerator.wait_for_everyone()
    return target


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, every incomplete one and any
    partial folder left by a killed run."""
    complete = 0
    for _, path in _numbered(folder):
        if incomplete_reason(path, hashes=False) is None and complete < max(1, keep):
            complete += 1
            continue
        shutil.rmtree(path)
    for path in folder.glob(f"*{PARTIAL_SUFFIX}"):
        shutil.rmtree(path)


def trim_log(path: Path, step: int) -> int:
    """Keep only the records of ``log.jsonl`` up to ``step`` (the step training resumes from), so a
    resumed run logs each step once; a line cut short by a kill is dropped too. Returns how many
    lines were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step
        except ValueError:
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        partial = partial_path(path)
        partial.write_text("".join(f"{line}\n" for line in kept))
        partial.replace(path)
    return dropped


def load_training_state(accelerator, folder: Path) -> None:
    """``accelerator.load_state`` of a checkpoint saved with ``save_trainable_state_only`` (its
    model file lacks the frozen weights, hence ``strict=False``; the load hook checks that every
    trainable tensor is there). One that fails to load becomes a CheckpointError naming it."""
    from accelerate.utils import DistributedType

    # DeepSpeed saves its own full state (the hook does not apply) and takes no `strict`
    kwargs = {} if accelerator.distributed_type == DistributedType.DEEPSPEED else {"strict": False}
    try:
        accelerator.load_state(str(folder), **kwargs)
    except CheckpointError:
        raise
    except Exception as err:  # another model config's
        raise CheckpointError(
            f"{folder}: cannot resume from it ({type(err).__name__}: {err}); "
            "move it away to resume from an older one"
        ) from err


def resumed_batches(accelerator, loader, skip: int) -> Iterator:
    """The batches of ``loader`` after its first ``skip``, without the draw from torch's global
    generator that a DataLoader makes when it starts iterating (its worker base seed): the
    uninterrupted run made that draw before its first step, and the RNG state restored from the
    checkpoint already includes it, so making it again would shift every later noise draw. At an
    epoch boundary (``skip`` 0) the uninterrupted run starts a new epoch after its checkpoint and
    makes the draw then: so does this one."""
    return _without_rng_draw(accelerator.skip_first_batches(loader, skip)) if skip else loader


def _without_rng_draw(batches: Iterable) -> Iterator:
    state = torch.get_rng_state()
    iterator = iter(batches)
    try:
        first = next(iterator)  # accelerate's loaders start the underlying DataLoader lazily
    except StopIteration:
        return
    finally:
        torch.set_rng_state(state)
    yield first
    yield from iterator


BASE_RECORD = "base.json"


def save_trainable_state_only(accelerator, model, base: dict | None) -> None:
    """Make resumable checkpoints hold what training changes: the model's trainable state
    (``trainable_state_dict``: never the text encoders, nor a base folder's frozen backbone, which
    the run reloads from the folder), beside the optimiser, EMA, scheduler and RNG. ``base``
    (checkpoint.describe_base of the base folder, or None) is saved as ``base.json`` and a resume
    on a folder with other configs is refused. Resume with ``load_state(dir, strict=False)``."""
    from safetensors import safe_open

    keep = set(model.trainable_state_dict())

    def name(key: str) -> str:
        return key.removeprefix("module.")  # a DDP-wrapped model's keys

    def before_save(models, weights, output_dir) -> None:
        for state in weights:
            for key in [k for k in state if name(k) not in keep]:
                del state[key]
        if base is not None and accelerator.is_main_process:
            (Path(output_dir) / BASE_RECORD).write_text(json.dumps(base, sort_keys=True))

    def before_load(models, input_dir) -> None:
        folder = Path(input_dir)
        if base is not None and (folder / BASE_RECORD).is_file():
            saved = json.loads((folder / BASE_RECORD).read_text())["configs"]
            ours = base["configs"]
            differ = sorted(n for n in ours if saved.get(n, {}).get("sha256") != ours[n]["sha256"])
            if differ:
                raise CheckpointError(
                    f"{folder}: saved on a base folder whose {', '.join(differ)} differ from those of "
                    f"{base['path']} (config sha256 changed); resume on the folder it was trained on"
                )
        weights = folder / "model.safetensors"
        if weights.is_file():
            with safe_open(str(weights), framework="pt") as handle:
                missing = sorted(keep - {name(k) for k in handle.keys()})  # noqa: SIM118 (not a dict)
            if missing:
                raise CheckpointError(
                    f"{weights}: lacks {len(missing)} trainable tensors of this model (e.g. {missing[:2]}); "
                    "was the model config changed?"
                )

    accelerator.register_save_state_pre_hook(before_save)
    accelerator.register_load_state_pre_hook(before_load)
