"""The one loader: ``open_model`` opens whatever checkpoint folder a user names, ready to sample.

It owns the format check (an idruid checkpoint folder, a folder in a backbone's own format such
as the I-DRUID authors' release, or the embedded default model when no path is given) so that
the CLI, the pipeline and the UI open models the same way and never branch on a format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import EMBEDDED_CHECKPOINT, model_from_meta, read_checkpoint_meta
from .config import SamplingSettings
from .errors import ConfigError
from .models.registry import backbone, names, own_format


def open_model(
    path: str | Path | None = None,
    base: str | Path | None = None,
    device: str | torch.device = "cpu",
    benchmark: str | None = None,
    **options,
) -> tuple[torch.nn.Module, SamplingSettings]:
    """The model of ``path`` (None: the embedded model) in eval mode on ``device``, and the
    sampling settings it was saved with. ``base``: the base folder (where a checkpoint's recorded
    one lives now, or the one a backbone's own format needs); ``benchmark``: what the images are
    for, for formats whose settings depend on it; ``options`` (None: not given) only the format
    that declares them takes (the authors' ``mask_rows``)."""
    given = {name: value for name, value in options.items() if value is not None}
    own = own_format(path) if path is not None else None
    if own is not None:
        fmt = own.checkpoint_format
        unknown = sorted(set(given) - set(fmt.options))
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: not an option of {fmt.what}")
        return fmt.open(Path(path), base, device, benchmark=benchmark, **given)
    if given:
        raise ConfigError(f"--{'/'.join(given).replace('_', '-')} applies to {_owners(given)} only")
    folder = Path(path) if path is not None else EMBEDDED_CHECKPOINT
    meta = read_checkpoint_meta(folder)
    model = model_from_meta(folder, meta, device, base)
    return model, SamplingSettings.from_dict(meta.get("sampling"))


def _owners(options: dict) -> str:
    """The formats that take any of ``options``, for the error naming them."""
    formats = (backbone(name).checkpoint_format for name in names())
    owners = [f.what for f in formats if f is not None and set(options) & set(f.options)]
    return " or ".join(owners) or "no checkpoint format"
