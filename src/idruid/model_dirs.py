"""Checks of local model folders (GroundingDINO, SAM, VLMs, the pieces of diffusers folders) before
transformers or diffusers reads them. Which pieces a backbone's base folder has is its module's
(models/registry.py, ``BaseFolder``).

Offline, transformers reads a path that is not a folder as a hub id and fails with a network
error; checking the files first gives an error that names what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from .errors import ModelFolderError

Loaded = TypeVar("Loaded")

# (what the file is, the names it may have): one entry per required file
RequiredFiles = Sequence[tuple[str, Sequence[str]]]


def missing_files(directory: Path, required: RequiredFiles) -> list[str]:
    """Descriptions of the required files that ``directory`` lacks (empty when none)."""
    return [
        f"{what} (one of {', '.join(names)})" if len(names) > 1 else what
        for what, names in required
        if not any((directory / name).is_file() for name in names)
    ]


# ----------------------------------------------------------------------------- diffusers folders

# A diffusers folder holds one subfolder per component: (subfolder, the files it needs)
Components = Sequence[tuple[str, RequiredFiles]]

_CONFIG = ("config.json", ("config.json",))
DIFFUSERS_MODEL: RequiredFiles = (  # a diffusers model (transformer, unet, vae)
    _CONFIG,
    (
        "weights",
        (
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model.bin",
        ),
    ),
)
TRANSFORMERS_MODEL: RequiredFiles = (  # a transformers model (the text encoders)
    _CONFIG,
    ("weights", ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")),
)
CLIP_TOKENIZER: RequiredFiles = (  # a tokenizer.json holds both the vocabulary and the merges
    ("vocab.json", ("vocab.json", "tokenizer.json")),
    ("merges.txt", ("merges.txt", "tokenizer.json")),
)
T5_TOKENIZER: RequiredFiles = (("tokenizer file", ("tokenizer.json", "spiece.model")),)
SCHEDULER: RequiredFiles = (("scheduler_config.json", ("scheduler_config.json",)),)

def missing_components(root: Path, components: Components) -> list[str]:
    """What ``root`` lacks of ``components``: ``"sub/ (folder)"`` for an absent subfolder, else
    ``"sub/<file>"`` for each missing file (empty when complete)."""
    missing = []
    for subfolder, required in components:
        if not (root / subfolder).is_dir():
            missing.append(f"{subfolder}/ (folder)")
        else:
            missing += [f"{subfolder}/{what}" for what in missing_files(root / subfolder, required)]
    return missing


def check_components(path: str | Path, components: Components, what: str) -> Path:
    """``path`` as a Path if it holds every component, each readable; else FileNotFoundError
    naming all gaps, or ModelFolderError naming the first corrupt file."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {root} does not exist")
    missing = missing_components(root, components)
    if missing:
        raise FileNotFoundError(f"{root} is not a complete {what} folder: missing {'; '.join(missing)}")
    for subfolder, _ in components:
        check_readable(root / subfolder)
    return root


def check_readable(folder: Path) -> None:
    """Open what the loaders would choke on with a traceback: every ``*.json`` must be a UTF-8
    JSON object and every ``*.safetensors`` file must have a header that its size covers (only
    the header is read, so this costs nothing on a 10 GB file)."""
    from safetensors import SafetensorError, safe_open

    from .textfile import read_json_object

    for file in sorted(folder.glob("*.json")):
        read_json_object(file, ModelFolderError)
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelFolderError(f"{file}: unreadable safetensors file ({err})") from None


def load_diffusers_model(model_cls: type[Loaded], folder: Path, **kwargs) -> Loaded:
    """``model_cls.from_pretrained(folder, **kwargs)`` of one component folder (a transformer,
    UNet or VAE), which on a truncated safetensors file or a config.json that is not JSON raises
    an OSError naming no file (the command's exit status 1): a ModelFolderError naming it instead
    (exit status 2), from ``check_readable`` or from what diffusers could still not load."""
    check_readable(folder)
    try:
        return model_cls.from_pretrained(str(folder), **kwargs)
    except OSError as err:
        raise ModelFolderError(f"{folder}: {model_cls.__name__} cannot load it ({err})") from err
