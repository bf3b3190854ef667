"""Model components: text encoders, layout adapter, attention processors, backbones.

``BACKBONES`` maps ``ModelConfig.backbone`` to the model class; ``build_model`` is what the
trainer, checkpoints and tools call, so a new backbone is one entry here.
"""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import ConfigError


def _sd3():
    from .sd3 import SD3LayoutModel

    return SD3LayoutModel


def _sd15():
    from .sd15 import LayoutUNetModel

    return LayoutUNetModel


def _sd3_druid():
    from .sd3_druid import DruidLayoutModel

    return DruidLayoutModel


BACKBONES = {"sd3": _sd3, "sd15": _sd15, "sd3-druid": _sd3_druid}


def build_model(config: ModelConfig, text_encoder=None):
    """The layout-to-image model of ``config.backbone`` ("sd3": MM-DiT + flow, "sd15": UNet + DDPM,
    "sd3-druid": the I-DRUID authors' released architecture)."""
    if config.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone '{config.backbone}': expected one of {', '.join(BACKBONES)}")
    return BACKBONES[config.backbone]()(config, text_encoder)
