"""Latent codecs: the map between images in [-1, 1] and the space the backbone denoises.

The embedded shapes world denoises pixels (``PixelCodec``, the identity) or their lossless
space-to-depth rearrangement (``UnshuffleCodec``). SD3 and SD1.5 denoise the
latents of their AutoencoderKL (``VaeCodec``), normalised by the VAE config's ``shift_factor`` and
``scaling_factor`` as their diffusers pipelines do:

    latents = (z - shift_factor) * scaling_factor      z = latents / scaling_factor + shift_factor

with z the posterior mean (or a sample) of the VAE encoder. SD3's VAE has 16 channels, scaling
1.5305 and shift 0.0609; SD1.5's has 4 channels, scaling 0.18215 and no shift (0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from idruid.model_dirs import DIFFUSERS_MODEL, check_readable, load_diffusers_model, missing_files

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


class LatentCodec(nn.Module):
    """Frozen images <-> latents map; subclasses set ``latent_channels`` and ``downsample``
    (image side / latent side) and implement ``encode`` and ``decode``."""

    latent_channels: int
    downsample: int

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """images (B, 3, H, W) in [-1, 1] -> latents (B, latent_channels, H / downsample, W / downsample)."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """latents -> images (B, 3, H, W) clamped to [-1, 1]."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> LatentCodec:
        """Always eval mode (frozen): ``train()`` is a no-op."""
        return super().train(False)

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.downsample or width % self.downsample:
            raise ValueError(f"image size {height}x{width} is not a multiple of {self.downsample}")


class PixelCodec(LatentCodec):
    """The pixel-space world: latents are the images themselves."""

    latent_channels = 3
    downsample = 1

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_images(images)
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents.clamp(-1.0, 1.0)


class VaeCodec(LatentCodec):
    """A frozen diffusers AutoencoderKL with its config's scaling and shift (SD3, SD1.5)."""

    def __init__(self, vae: AutoencoderKL, sample: bool = False):
        """sample: encode draws z from the posterior (with ``encode``'s generator) instead of taking
        its mean."""
        super().__init__()
        self.vae = vae
        self.sample = sample
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)  # SD1.5: None
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)  # as diffusers' vae_scale_factor
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype | None = None, sample: bool = False
    ) -> VaeCodec:
        """Load ``<path>/vae`` of a diffusers folder, or ``path`` itself if it is a VAE folder."""
        from diffusers import AutoencoderKL

        vae_dir = _vae_dir(Path(path))
        kwargs = {} if dtype is None else {"torch_dtype": dtype}
        return cls(load_diffusers_model(AutoencoderKL, vae_dir, **kwargs), sample=sample)

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_images(images)
        posterior = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        z = posterior.sample(generator) if self.sample else posterior.mean
        return ((z - self.shift_factor) * self.scaling_factor).to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, {self.latent_channels}, h, w), got shape {tuple(latents.shape)}"
            )
        z = latents.to(self.vae.device, self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.clamp(-1.0, 1.0).to(latents.dtype)


def _vae_dir(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"base model folder {path} does not exist")
    vae_dir = path / "vae"
    if not vae_dir.is_dir():
        config = path / "config.json"
        if config.is_file():
            check_readable(path)  # a config.json that is not a JSON object is named
        if config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderKL":
            vae_dir = path  # a standalone VAE folder
        else:
            raise FileNotFoundError(
                f"{path} has no vae/ subfolder (diffusers layout) and is not an AutoencoderKL folder itself"
            )
    missing = missing_files(vae_dir, DIFFUSERS_MODEL)
    if missing:
        raise FileNotFoundError(f"VAE folder {vae_dir} lacks {'; '.join(missing)}")
    return vae_dir


def load_codec(base_model: str | Path | None, **kwargs) -> LatentCodec:
    """The codec of a base model: None (or "pixels") -> PixelCodec; a local SD3 / SD1.5 diffusers
    folder (or a VAE folder) -> VaeCodec (kwargs: dtype, sample)."""
    if base_model is None or str(base_model) in ("pixel", "pixels"):
        return PixelCodec()
    return VaeCodec.from_pretrained(base_model, **kwargs)


class UnshuffleCodec(LatentCodec):
    """A lossless stand-in for a VAE in the embedded world: each ``factor`` x ``factor`` pixel
    block becomes ``3 * factor**2`` channels of one latent cell (``pixel_unshuffle``). The UNet
    preset denoises these 16x16x12 latents of the 32x32 images, so its mid block and first
    cross-attention decoder level sit at 8x8 and 16x16, as SD1.5's IDM layers do at 512 px."""

    def __init__(self, factor: int = 2):
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.downsample = factor
        self.latent_channels = 3 * factor * factor

    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        self._check_images(images)
        return torch.nn.functional.pixel_unshuffle(images, self.downsample)

    def decode(self, latents: Tensor) -> Tensor:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be (B, {self.latent_channels}, h, w), got shape {tuple(latents.shape)}"
            )
        return torch.nn.functional.pixel_shuffle(latents, self.downsample).clamp(-1.0, 1.0)
