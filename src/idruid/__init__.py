"""idruid: layout-to-image generation with instance-disentangled representations (I-DRUID)."""

__version__ = "0.1.0"
