"""Model components: text encoders, layout adapter, attention processors, backbones.

``build_model`` is what the trainer, checkpoints and tools call; it asks the backbone registry
(models/registry.py), so a new backbone is one module and one registry line.
"""

from __future__ import annotations

from ..config import ModelConfig
from .registry import backbone


def build_model(config: ModelConfig, text_encoder=None):
    """The layout-to-image model of ``config.backbone`` ("sd3": MM-DiT + flow, "sd15": UNet + DDPM,
    "sd3-druid": the I-DRUID authors' released architecture, or any registered backbone)."""
    return backbone(config.backbone).build(config, text_encoder)
