"""idruid model checkpoints: a folder with ``idruid.json`` (format marker + model config)
and ``model.safetensors`` (everything idruid trains; never the frozen text encoder).

A model built on a base folder (``ModelConfig.base_model``, a local SD3 or SD1.5 diffusers folder) keeps
the backbone's weights out of ``model.safetensors``: idruid.json records the folder's path and a
SHA-256 of each config the model reads from it, and loading refuses a folder whose config differs.

The embedded default model ships in ``idruid/assets/shapes-model`` and is produced by
``idruid train --config shapes-full`` (stage 1, then the RL stage; see README).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import partial_path, replace_dir
from .config import ModelConfig, SamplingSettings, model_config_from_dict
from .errors import CheckpointError
from .faults import crash_point
from .models import build_model
from .models.registry import backbone as registered_backbone
from .models.registry import own_format, resolve_network
from .textfile import read_json_object

FORMAT = "idruid-checkpoint"
VERSION = 1
EMBEDDED_CHECKPOINT = Path(__file__).parent / "assets" / "shapes-model"
CHECKPOINT_FILES = ("idruid.json", "model.safetensors")
# diffusers bookkeeping left out of the hash: they change when a folder is re-saved by another
# diffusers version, copied or loaded with defaults filled in, never what the weights mean.
# "_class_name" stays: another class is another model.
BOOKKEEPING_KEYS = ("_diffusers_version", "_name_or_path", "_use_default_values")


def base_config(folder: str | Path, name: str) -> dict:
    """The config ``name`` (e.g. ``transformer/config.json``) of a base folder without diffusers'
    bookkeeping keys: what a checkpoint records and compares."""
    file = Path(folder) / name
    if not file.is_file():
        raise CheckpointError(f"base model '{folder}': no {name} (expected a diffusers folder)")
    config = read_json_object(file, CheckpointError, f"base model '{folder}': {name}")
    return {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}


def config_sha256(config: dict) -> str:
    """SHA-256 of a config's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def describe_base(folder: str | Path, backbone: str = ModelConfig.backbone) -> dict:
    """What idruid.json records about a base folder: its absolute path and, per config file the
    model reads (the backbone's ``base_configs``), the canonical config and its SHA-256."""
    configs = {}
    for name in registered_backbone(backbone).base_configs:
        config = base_config(folder, name)
        configs[name] = {"sha256": config_sha256(config), "config": config}
    return {"path": str(Path(folder).resolve()), "configs": configs}


def save_checkpoint(model, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write the checkpoint whole or not at all: into ``<out_dir>.partial``, then renamed over
    ``out_dir`` (which may hold only an earlier checkpoint's two files, never anything else)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"checkpoint '{out}': exists and is not a folder")
    others = sorted(p.name for p in out.iterdir() if p.name not in CHECKPOINT_FILES) if out.exists() else []
    if others:
        raise CheckpointError(
            f"checkpoint '{out}': the folder holds other files ({', '.join(others)}); refusing to replace it"
        )
    meta = {"format": FORMAT, "version": VERSION, "model": dataclasses.asdict(model.config), **(extra or {})}
    if model.config.base_model is not None:
        meta["base"] = describe_base(model.config.base_model, model.config.backbone)
    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    partial = partial_path(out)
    if partial.exists():  # left by a process killed while writing
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    save_file(state, str(partial / "model.safetensors"))
    (partial / "idruid.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    crash_point("export", int(meta.get("train_steps", 0)))
    replace_dir(partial, out)
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
    meta = read_json_object(marker, CheckpointError, f"checkpoint '{path}': idruid.json")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint '{path}': idruid.json has format {meta.get('format')!r}, expected {FORMAT!r}"
        )
    return meta


def checkpoint_sampling(path: str | Path | None = None) -> SamplingSettings:
    """The sampling settings a checkpoint was saved with (the embedded model's when ``path`` is
    None); SamplingSettings' defaults for those it does not record."""
    return SamplingSettings.from_dict(read_checkpoint_meta(path or EMBEDDED_CHECKPOINT).get("sampling"))


def load_checkpoint(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    base_model: str | Path | None = None,
):
    """Load an idruid checkpoint (the embedded default model when ``path`` is None).

    A checkpoint trained on a base folder loads it from the path it recorded, or from
    ``base_model`` when the folder has moved; either must match the recorded config hash.
    """
    path = Path(path) if path is not None else EMBEDDED_CHECKPOINT
    return model_from_meta(path, read_checkpoint_meta(path), device, base_model)


def model_from_meta(
    path: Path,
    meta: dict,
    device: str | torch.device = "cpu",
    base_model: str | Path | None = None,
):
    """The model of the checkpoint at ``path`` whose idruid.json is ``meta`` (read once by the
    caller), on its recorded base folder or ``base_model``, checked against the recorded hash."""
    config: ModelConfig = model_config_from_dict(meta["model"])
    record = _base_record(path, meta)
    if record is None:
        if base_model is not None:
            raise CheckpointError(
                f"checkpoint '{path}': it holds its whole backbone (no base model), "
                f"so base_model='{base_model}' does not apply"
            )
    else:
        folder = Path(base_model) if base_model is not None else Path(record["path"])
        check_base(path, record, folder)
        config.base_model = str(folder)
    model = build_model(config)
    _load_weights(model, path)
    return model.to(device).eval()


def load_trained_weights(model, path: str | Path) -> None:
    """Start ``model`` from a checkpoint's weights (``init_from``: e.g. RL fine-tuning of a
    stage-1 model); its model config must be the same as ``model.config``. A checkpoint folder of
    a backbone's own format (the I-DRUID authors' one) loads into a model of that backbone."""
    path = Path(path)
    own = own_format(path)
    if own is not None:  # e.g. the I-DRUID authors' checkpoint: their whole transformer
        if model.config.backbone != own.name:
            raise CheckpointError(
                f"checkpoint '{path}' is {own.checkpoint_format.what}: it needs model.backbone={own.name}, "
                f"not {model.config.backbone}"
            )
        own.checkpoint_format.load_into(model, path)
        return
    meta = read_checkpoint_meta(path)
    # keys an older checkpoint lacks (e.g. lora_rank) take their defaults, as load_checkpoint does
    recorded = model_config_from_dict(meta["model"])
    resolve_network(recorded)  # the backbone's settings in full, as model.config's
    saved, wanted = _settings(recorded), _settings(model.config)
    # the base folder may have moved: it is compared by its config hash below, not by its path
    differ = sorted(
        k for k in set(saved) | set(wanted) if k != "base_model" and saved.get(k) != wanted.get(k)
    )
    if differ:
        details = ", ".join(f"{k}: {saved.get(k)!r} vs {wanted.get(k)!r}" for k in differ)
        raise CheckpointError(f"checkpoint '{path}': its model config differs from this run's ({details})")
    record = _base_record(path, meta)
    ours = model.config.base_model
    if (record is None) != (ours is None):
        theirs = "no base model" if record is None else f"base model '{record['path']}'"
        mine = "none" if ours is None else f"'{ours}'"
        raise CheckpointError(f"checkpoint '{path}': trained with {theirs}, this run's base model is {mine}")
    if record is not None:
        check_base(path, record, Path(ours))
    _load_weights(model, path)


def _settings(config: ModelConfig) -> dict:
    """A model config as one level of settings, the backbone's own as ``network.KEY``."""
    flat = {k: v for k, v in dataclasses.asdict(config).items() if k != "network"}
    return flat | {f"network.{k}": v for k, v in config.network.items()}


def check_base(path: Path, record: dict, folder: Path) -> None:
    """Refuse a base folder that is missing or whose configs differ from those the checkpoint
    at ``path`` was trained on (``record``: its idruid.json "base" entry)."""
    if not folder.is_dir():
        raise CheckpointError(
            f"checkpoint '{path}': base model folder '{folder}' does not exist; pass the folder it "
            "lives in now with load_checkpoint(path, base_model=DIR)"
        )
    for name, recorded in record["configs"].items():
        found = base_config(folder, name)
        digest = config_sha256(found)
        if digest == recorded["sha256"]:
            continue
        saved = recorded["config"]
        differ = sorted(k for k in set(saved) | set(found) if saved.get(k) != found.get(k))
        details = (
            ", ".join(f"{k}: {saved.get(k)!r} recorded vs {found.get(k)!r} found" for k in differ)
            if differ
            else "no top-level key differs, so idruid.json's recorded config or hash was edited"
        )
        raise CheckpointError(
            f"checkpoint '{path}': base model '{folder}' is not the one it was trained on: "
            f"{folder / name} has config sha256 {digest}, {path / 'idruid.json'} records "
            f"{recorded['sha256']} (of {Path(record['path']) / name}); differing keys: {details}"
        )


def _base_record(path: Path, meta: dict) -> dict | None:
    """idruid.json's "base" entry (None for a model that holds its whole backbone), checked."""
    record = meta.get("base")
    if record is None:
        if meta["model"].get("base_model") is not None:
            raise CheckpointError(
                f"checkpoint '{path}': its model config names base model '{meta['model']['base_model']}' "
                "but idruid.json records no config hash of it (saved by an older idruid); re-save it"
            )
        return None
    well_formed = (
        isinstance(record, dict)
        and isinstance(record.get("path"), str)
        and isinstance(record.get("configs"), dict)
        and all(isinstance(c, dict) and {"sha256", "config"} <= set(c) for c in record["configs"].values())
    )
    if not well_formed:
        raise CheckpointError(
            f"checkpoint '{path}': idruid.json's \"base\" entry is malformed "
            "(expected path and configs: {file: {sha256, config}})"
        )
    return record


def _load_weights(model, path: Path) -> None:
    file = path / "model.safetensors"
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:  # truncated, or not a safetensors file at all
        raise CheckpointError(f"{file}: unreadable safetensors file ({err})") from None
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
