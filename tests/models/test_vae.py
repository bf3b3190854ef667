"""Latent codecs: VaeCodec against the raw AutoencoderKL with scale/shift applied by hand; PixelCodec;
UnshuffleCodec against a loop over pixel blocks."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from tiny_models import tiny_vae

from idruid.models.vae import PixelCodec, UnshuffleCodec, VaeCodec, load_codec

pytestmark = pytest.mark.usefixtures("one_thread")

# (latent channels, scaling_factor, shift_factor, quant convs) of an SD3-like and an SD1.5-like VAE
CONFIGS = {"sd3": (16, 1.5305, 0.0609, False), "sd15": (4, 0.18215, None, True)}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def vae_case(request, tmp_path_factory):
    channels, scale, shift, quant = CONFIGS[request.param]
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp(request.param)
    tiny_vae(channels, scale, shift, quant_conv=quant).save_pretrained(root / "vae")
    return root, channels, scale, shift or 0.0


def images(batch: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


def raw_moments(raw: AutoencoderKL, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance straight from the encoder's output channels."""
    h = raw.encoder(x)
    if raw.quant_conv is not None:
        h = raw.quant_conv(h)
    channels = raw.config.latent_channels
    return h[:, :channels], h[:, channels:]


def test_encode_decode_match_raw_vae(vae_case):
    root, channels, scale, shift = vae_case
    codec = load_codec(str(root))
    raw = AutoencoderKL.from_pretrained(root / "vae")
    assert isinstance(codec, VaeCodec)
    assert (codec.latent_channels, codec.downsample) == (channels, 2)
    assert (codec.scaling_factor, codec.shift_factor) == (scale, shift)
    x = images()
    with torch.no_grad():
        latents = codec.encode(x)
        mean, _ = raw_moments(raw, x)
        assert latents.shape == (2, channels, 8, 8)
        torch.testing.assert_close(latents, (mean - shift) * scale, atol=1e-5, rtol=1e-5)
        decoded = codec.decode(latents)
        z = latents / scale + shift
        if raw.post_quant_conv is not None:
            z = raw.post_quant_conv(z)
        expected = raw.decoder(z).clamp(-1, 1)
    assert decoded.shape == x.shape
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-5)


def test_sampled_encoding_uses_the_generator(vae_case):
    root, channels, scale, shift = vae_case
    codec = load_codec(root, sample=True)
    raw = AutoencoderKL.from_pretrained(root / "vae")
    x = images(batch=1)
    with torch.no_grad():
        latents = codec.encode(x, generator=torch.Generator().manual_seed(3))
        mean, logvar = raw_moments(raw, x)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    expected = (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise - shift) * scale
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        other = codec.encode(x, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(latents, other)


def test_frozen_with_gradients_to_latents(vae_case):
    codec = load_codec(vae_case[0])
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not codec.training and not codec.vae.training
    latents = torch.randn(1, vae_case[1], 4, 4, requires_grad=True)
    codec.decode(latents).sum().backward()  # e.g. a differentiable reward on decoded images
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_standalone_vae_folder(vae_case):
    root = vae_case[0]
    torch.testing.assert_close(load_codec(root / "vae").encode(images()), load_codec(root).encode(images()))


def test_bad_inputs_and_folders(vae_case, tmp_path):
    codec = load_codec(vae_case[0])
    with pytest.raises(ValueError, match="not a multiple of 2"):
        codec.encode(images(size=15))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        codec.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=rf"\(B, {vae_case[1]}, h, w\)"):
        codec.decode(torch.zeros(1, vae_case[1] + 1, 8, 8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_codec(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no vae/ subfolder"):
        load_codec(tmp_path)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(FileNotFoundError, match=r"vae lacks weights \(one of diffusion_pytorch_model"):
        load_codec(tmp_path)


def test_pixel_codec_is_the_identity():
    for codec in (load_codec(None), load_codec("pixels")):
        assert isinstance(codec, PixelCodec)
        assert (codec.latent_channels, codec.downsample) == (3, 1)
        x = images(size=5)
        assert torch.equal(codec.encode(x), x) and torch.equal(codec.decode(x), x)
        outside = torch.tensor([-3.0, -1.0, 0.25, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
        assert codec.decode(outside)[0, 0, 0].tolist() == [-1.0, -1.0, 0.25, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PixelCodec().encode(torch.zeros(3, 8, 8))


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_unshuffle_codec_moves_each_block_into_channels(factor):
    codec = UnshuffleCodec(factor)
    assert (codec.latent_channels, codec.downsample) == (3 * factor**2, factor)
    x = images(batch=2, size=8)
    latents = codec.encode(x)
    expected = torch.empty(2, 3 * factor**2, 8 // factor, 8 // factor)
    for channel in range(3):
        for i in range(factor):
            for j in range(factor):  # latent channel (c, i, j) holds pixel (i, j) of every block
                expected[:, channel * factor**2 + i * factor + j] = x[:, channel, i::factor, j::factor]
    assert torch.equal(latents, expected)
    assert torch.equal(codec.decode(latents), x)  # lossless
    assert codec.decode(latents * 3).abs().max() == 1.0
    with pytest.raises(ValueError, match="not a multiple of 4"):
        UnshuffleCodec(4).encode(images(size=6))
    with pytest.raises(ValueError, match=r"latents must be \(B, 12, h, w\)"):
        UnshuffleCodec(2).decode(torch.zeros(1, 3, 4, 4))


def test_dtype_of_the_vae(vae_case):
    codec = load_codec(vae_case[0], dtype=torch.bfloat16)
    assert codec.vae.dtype == torch.bfloat16
    x = images()
    latents = codec.encode(x)  # the input is cast to the VAE's dtype, the result back to the input's
    assert latents.dtype == torch.float32
    torch.testing.assert_close(latents, load_codec(vae_case[0]).encode(x), atol=0.05, rtol=0.05)
