"""idruid: layout-to-image generation with instance-disentangled representations (I-DRUID)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``idruid.IDruidPipeline`` on first use: importing diffusers would slow every command."""
    if name == "IDruidPipeline":
        from .pipeline import IDruidPipeline

        return IDruidPipeline
    raise AttributeError(f"module 'idruid' has no attribute '{name}'")
