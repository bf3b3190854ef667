"""idruid model checkpoints: a folder with ``idruid.json`` (format marker + model config)
and ``model.safetensors`` (everything idruid trains; never the frozen text encoder).

The embedded default model ships in ``idruid/assets/shapes-model`` and is produced by
``idruid train --config shapes-full`` (stage 1, then the RL stage; see README).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig, model_config_from_dict

FORMAT = "idruid-checkpoint"
VERSION = 1
EMBEDDED_CHECKPOINT = Path(__file__).parent / "assets" / "shapes-model"


class CheckpointError(ValueError):
    """A checkpoint directory that does not exist or is not an idruid checkpoint."""


def save_checkpoint(model, out_dir: str | Path, extra: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "model": dataclasses.asdict(model.config), **(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "idruid.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def read_checkpoint_meta(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}': directory does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint '{path}': not a directory")
    marker = path / "idruid.json"
    if not marker.is_file() or not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"checkpoint '{path}': not an idruid checkpoint (needs idruid.json and model.safetensors)"
        )
    try:
        meta = json.loads(marker.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint '{path}': idruid.json is malformed ({err.msg})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint '{path}': idruid.json has format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    return meta


def load_checkpoint(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """Load an idruid checkpoint (the embedded default model when ``path`` is None)."""
    from .models.sd3 import LayoutToImageModel

    path = Path(path) if path is not None else EMBEDDED_CHECKPOINT
    meta = read_checkpoint_meta(path)
    config: ModelConfig = model_config_from_dict(meta["model"])
    model = LayoutToImageModel(config)
    _load_weights(model, path)
    return model.to(device).eval()


def load_trained_weights(model, path: str | Path) -> None:
    """Start ``model`` from a checkpoint's weights (``init_from``: e.g. RL fine-tuning of a
    stage-1 model); its model config must be the same as ``model.config``."""
    path = Path(path)
    saved = read_checkpoint_meta(path)["model"]
    wanted = dataclasses.asdict(model.config)
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} vs {wanted.get(k)!r}" for k in differ)
        raise CheckpointError(f"checkpoint '{path}': its model config differs from this run's ({details})")
    _load_weights(model, path)


def _load_weights(model, path: Path) -> None:
    state = load_file(str(path / "model.safetensors"))
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{path}': weights do not match its config "
            f"({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
