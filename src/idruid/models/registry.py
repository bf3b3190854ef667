"""The one seam for backbones: what idruid needs to know about each, and the registry of them.

A backbone is one module that declares a ``Backbone`` (models/sd3.py, sd15.py, sd3_druid.py, flux.py) and
one line of ``REGISTRY`` naming that module; everything outside models/ asks ``backbone(name)``
or ``own_format(path)`` instead of branching on a name or a checkpoint format. Entries are module
paths so that the CLI's start-up imports no diffusers model; ``register`` adds a ``Backbone``
object directly (a plug-in, or a test's throwaway backbone).

What a backbone module declares, and where:

- its ``Backbone`` (below): the model class, the base-folder configs hashed into checkpoints, the
  base folder's pieces (``BaseFolder``: checked at build, naming every missing file), the embedded
  preset, an own checkpoint format;
- on its model class (a models.base.LayoutModel): ``network_class``, the dataclass of its own
  settings (``ModelConfig.network``, read by ``network_settings``); ``process``, its time grid,
  shift and prediction (idruid.diffusion); ``guidance``, the guidance it takes; ``layout_rounding``,
  how the layout branch's step count is rounded; ``base_text_encoder``, its text encoders;
  ``lora_defaults``; the codec comes from ``ModelConfig.codec`` (its VAE's factors from the base
  folder).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from ..config import FLAT_NETWORK_KEYS, ModelConfig, SamplingSettings, parse_setting
from ..errors import ConfigError
from ..model_dirs import Components, check_components


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
class BaseFolder:
    """The pieces of a backbone's base folder (``ModelConfig.base_model``, diffusers layout) that
    idruid reads: the network's always, the VAE's at ``model.codec=vae``, the text encoders' at
    ``model.text_encoder=base``."""

    what: str  # how errors name the folder: "SD3 (diffusers layout)"
    # the diffusers pipeline whose folder it is: model_index.json's _class_name (a folder of
    # another pipeline is refused before anything loads, naming the backbone that reads it)
    pipeline: str
    network: Components  # the transformer / UNet, and the scheduler its time grid comes from
    codec: Components = ()
    text: Components = ()

    def components(self, config: ModelConfig | None = None) -> Components:
        """The pieces ``config`` reads (every piece when None: the whole folder)."""
        codec = config is None or config.codec == "vae"
        text = config is None or config.text_encoder == "base"
        return (*self.network, *(self.codec if codec else ()), *(self.text if text else ()))

    def check(self, path: str | Path, config: ModelConfig | None = None) -> Path:
        """``path`` if it holds what ``config`` reads; FileNotFoundError naming every missing
        file otherwise (before diffusers or transformers reads anything)."""
        return check_components(path, self.components(config), self.what)


@dataclass(frozen=True)
class Backbone:
    """Everything about a backbone that idruid reads outside its module."""

    name: str  # ModelConfig.backbone
    model_class: type  # a models.base.LayoutModel subclass: model_class(config, text_encoder)
    # files of a base folder (ModelConfig.base_model) whose configs the weights depend on: hashed
    # into a checkpoint's idruid.json, and compared when it loads
    base_configs: tuple[str, ...]
    # the pieces of a base folder, checked when a model is built on one (None: not checked)
    base_folder: BaseFolder | None = None
    preset: str | None = None  # the embedded world's preset of `idruid train --backbone NAME`
    folder_presets: tuple[str, ...] = ()  # the presets that take a base folder of it (model.base_model)
    checkpoint_format: CheckpointFormat | None = None

    def build(self, config: ModelConfig, text_encoder=None):
        """The layout-to-image model of ``config``, after the check of its base folder."""
        if config.base_model is not None and self.base_folder is not None:
            self.check_base(config)
        return self.model_class(config, text_encoder)

    def check_base(self, config: ModelConfig) -> None:
        """Refuse a base folder of another pipeline (naming the backbone and presets that read
        it), then one that lacks a piece ``config`` reads (naming every missing file)."""
        found = pipeline_of(config.base_model)
        wanted = self.base_folder.pipeline
        if found is not None and found != wanted:
            readers = [b for b in map(backbone, names()) if b.base_folder and b.base_folder.pipeline == found]
            if readers:
                presets = [p for b in readers for p in b.folder_presets] or [b.name for b in readers]
                fits = f"; use the {' or '.join(presets)} preset (model.backbone={readers[0].name})"
            else:
                fits = "; no registered backbone reads it"
            raise ConfigError(
                f"model.base_model '{config.base_model}' is a {found} folder, not the {wanted} folder "
                f"the {self.name} backbone reads{fits}"
            )
        self.base_folder.check(config.base_model, config)


def pipeline_of(folder: str | Path) -> str | None:
    """The diffusers pipeline class a folder was saved by (model_index.json's ``_class_name``),
    or None where the folder has no readable model_index.json (a folder of single components)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return None
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (ValueError, AttributeError):
        return None  # the component check below names what is wrong with the folder
    return name if isinstance(name, str) else None


@dataclass
class NoSettings:
    """The ``network_class`` of a backbone without settings of its own."""


def network_settings(network_class: type, config: ModelConfig, declared: object = None) -> Any:
    """``config.network`` as an instance of the backbone's ``network_class`` (a dataclass): text
    (from a ``key=value`` override) read by the setting's type, other values checked against it,
    an unknown key refused. A setting of an older config (``FLAT_NETWORK_KEYS``) that this
    backbone does not have is ignored at the value the backbone declares for it as an attribute
    of ``declared`` (e.g. the authors' layout_rounding "floor"), or, where it declares none, at
    the setting's old default."""
    hints = typing.get_type_hints(network_class)
    names = [f.name for f in dataclasses.fields(network_class)]
    values = {}
    for key, value in config.network.items():
        where = f"model.network.{key}"
        if key in names:
            values[key] = parse_setting(hints[key], value, where) if isinstance(value, str) else value
            _check_type(hints[key], values[key], where)
        elif key in FLAT_NETWORK_KEYS and value == getattr(declared, key, FLAT_NETWORK_KEYS[key]):
            continue
        else:
            known = ", ".join(names) or "none"
            raise ConfigError(
                f"{where}: not a setting of the {config.backbone} backbone (its settings: {known})"
            )
    return network_class(**values)


def resolve_network(config: ModelConfig, model_class: type | None = None) -> Any:
    """The backbone's typed settings of ``config``, written back into ``config.network`` whole
    (every setting, defaults included, nothing else), so saved configs and checkpoints list them."""
    model_class = model_class or backbone(config.backbone).model_class
    settings = network_settings(model_class.network_class, config, model_class)
    config.network = dataclasses.asdict(settings)
    return settings


def _check_type(kind: Any, value: Any, where: str) -> None:
    """Refuse a value of the wrong type from a config file (an override's text is parsed by type)."""
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    plain = tuple(typing.get_origin(o) or o for o in options)
    if value is None and type(None) in plain:
        return
    if isinstance(value, bool) and bool not in plain:
        raise ConfigError(f"{where} takes {_type_words(plain)}, got {value!r}")
    if isinstance(value, int) and float in plain:
        return
    if not isinstance(value, tuple(p for p in plain if p is not type(None))):
        raise ConfigError(f"{where} takes {_type_words(plain)}, got {value!r}")


def _type_words(plain: tuple) -> str:
    return " or ".join("none" if p is type(None) else p.__name__ for p in plain)


# name -> the module that declares BACKBONE (imported when first asked), or a registered Backbone
REGISTRY: dict[str, str | Backbone] = {
    "sd3": "idruid.models.sd3",
    "sd15": "idruid.models.sd15",
    "sd3-druid": "idruid.models.sd3_druid",
    "flux": "idruid.models.flux",
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

