"""The one seam for backbones: what idruid needs to know about each, and the registry of them.

A backbone is one module that declares a ``Backbone`` (models/sd3.py, sd15.py, sd3_druid.py) and
one line of ``REGISTRY`` naming that module; everything outside models/ asks ``backbone(name)``
or ``own_format(path)`` instead of branching on a name or a checkpoint format. Entries are module
paths so that the CLI's start-up imports no diffusers model; ``register`` adds a ``Backbone``
object directly (a plug-in, or a test's throwaway backbone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from ..config import ModelConfig, SamplingSettings
from ..errors import ConfigError


@dataclass(frozen=True)
class CheckpointFormat:
    """A checkpoint folder of a backbone's own format (not idruid.json), e.g. the authors' release."""

    what: str  # how errors name it: "the I-DRUID authors' model"
    recognise: Callable[[Path], bool]  # whether a folder is of this format (cheap: reads a config)
    # (folder, base folder or None, device, format options) -> (model, its sampling settings)
    open: Callable[..., tuple[Any, SamplingSettings]]
    load_into: Callable[[Any, Path], None]  # its weights into a model of this backbone (init_from)
    options: tuple[str, ...] = ()  # open_model's options only this format takes (e.g. "mask_rows")


@dataclass(frozen=True)
class Backbone:
    """Everything about a backbone that idruid reads outside its module."""

    name: str  # ModelConfig.backbone
    model_class: type  # a models.base.LayoutModel subclass: model_class(config, text_encoder)
    # files of a base folder (ModelConfig.base_model) whose configs the weights depend on: hashed
    # into a checkpoint's idruid.json, and compared when it loads
    base_configs: tuple[str, ...]
    # the folder check of a base folder, naming every missing file (None: no base folder check)
    check_folder: Callable[[str | Path], Path] | None = None
    preset: str | None = None  # the embedded world's preset of `idruid train --backbone NAME`
    checkpoint_format: CheckpointFormat | None = None

    def build(self, config: ModelConfig, text_encoder=None):
        """The layout-to-image model of ``config``."""
        return self.model_class(config, text_encoder)


# name -> the module that declares BACKBONE (imported when first asked), or a registered Backbone
REGISTRY: dict[str, str | Backbone] = {
    "sd3": "idruid.models.sd3",
    "sd15": "idruid.models.sd15",
    "sd3-druid": "idruid.models.sd3_druid",
}


def register(entry: Backbone) -> Backbone:
    """Add (or replace) a backbone under its name."""
    REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove a backbone added with ``register`` (a test's throwaway one)."""
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered backbone names, in registration order (no module is imported)."""
    return tuple(REGISTRY)


def backbone(name: str) -> Backbone:
    """The backbone registered as ``name``; a ConfigError naming the registered ones otherwise."""
    if name not in REGISTRY:
        raise ConfigError(f"model.backbone '{name}': expected one of {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    if isinstance(entry, str):
        entry = import_module(entry).BACKBONE
    return entry


def own_format(path: str | Path) -> Backbone | None:
    """The backbone whose own checkpoint format ``path`` is in, or None (an idruid checkpoint,
    or no checkpoint at all)."""
    for name in REGISTRY:
        entry = backbone(name)
        if entry.checkpoint_format is not None and entry.checkpoint_format.recognise(Path(path)):
            return entry
    return None

