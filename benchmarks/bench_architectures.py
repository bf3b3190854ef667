"""Real-scale architectures: SD3-medium's MM-DiT, SD3.5-medium's and SD3.5-large's, FLUX.1-dev's
transformer and SD1.5's UNet built with random weights on the ``meta`` device (no download, no
memory), their parameter counts, and what idruid's layout adapter + IDM add to each in parameters
and in FLOPs per forward: the MM-DiTs at 1024x1024 (128x128 latents, patch 2: 4096 image tokens,
333 prompt tokens, 10 instances), FLUX.1-dev at 1024x1024 (4096 image tokens after FluxPipeline's
2x2 packing, 512 T5 tokens, 10 instances; one row per ``single_blocks`` setting: none, layout,
idm), the UNet at 512x512 (64x64 latents, 77 prompt tokens, 10 instances; IDM at its 8x8 mid
block and 16x16 decoder). For SD3.5-medium it also counts the rejected alternative of an IDM on
the second, image-only attention (attn2) of its 13 dual-attention blocks too.

    python benchmarks/bench_architectures.py [--threads 2] [--repeats 3] [--device auto|cpu|cuda]
        [--mini-batch 8] [--mini-repeats 30]

FLOPs count matrix products only (2 per multiply-add; linear layers, convolutions, attention),
the convention of ``torch.utils.flop_counter.FlopCounterMode``; elementwise work is left out. The
analytic count (``backbone_flops``, ``branch_flops``, ``flux_backbone_flops``,
``flux_branch_flops``) is checked against FlopCounterMode twice: at full size on the meta device,
and on a smaller model with the real widths (SD3: 2 blocks, FLUX: 1 double- + 1 single-stream
block; 32x32 latents) that really runs (on the CPU, or the GPU if there is one). The script stops
if a count disagrees.

It also times the embedded miniatures (``shapes-flux``, and ``shapes`` for reference) on the CPU:
a forward with the layout branch off and on, at 2, 6 and 10 instances (interleaved, the fastest
of ``--mini-repeats``).

On a GPU it also times a training step at the paper's resolutions (SD3 and FLUX.1-dev: 1024,
SD1.5: 512; bf16 autocast, AdamW) with its peak memory; on the CPU it times the small real-width
SD3 model instead. Results go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import numpy as np
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from idruid.config import ModelConfig, load_config
from idruid.data.shapes import sample_scene, scene_to_layout
from idruid.losses import add_noise, flow_matching_loss, idc_loss
from idruid.models import base, build_model, flux, sd3, sd15
from idruid.models.adapter import LayoutAdapter
from idruid.models.druid_arch import IDM_REDUCTION, SD3_MEDIUM, DruidSD3Transformer, is_layout_key
from idruid.models.processors import LayoutCrossAttnProcessor, LayoutJointAttnProcessor

# transformer/config.json of stabilityai/stable-diffusion-3.5-medium and -3.5-large (the values
# of Stability's release commits "SD3.5 Medium Public Release" 94b13cc and "SD3.5 Large Public
# Release" 4c4df3f; -large has no dual_attention_layers key: none)
SD35_MEDIUM = dict(
    SD3_MEDIUM,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
    pos_embed_max_size=384,
)
SD35_LARGE = dict(
    SD3_MEDIUM,
    num_layers=38,
    num_attention_heads=38,
    caption_projection_dim=2432,
    qk_norm="rms_norm",
)
SD35 = {"SD3.5-medium": SD35_MEDIUM, "SD3.5-large": SD35_LARGE}

# transformer/config.json of black-forest-labs/FLUX.1-dev (diffusers layout; it sets patch_size,
# in_channels, num_layers, num_single_layers, attention_head_dim, num_attention_heads,
# joint_attention_dim, pooled_projection_dim and guidance_embeds; out_channels is left to be
# in_channels and axes_dims_rope to diffusers' default, FLUX's (16, 56, 56): BFL's flux-dev params
# axes_dim). 3072 wide; the 64 input values are a 2x2 block of the 16-channel VAE's latents
FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,  # T5-XXL's token states
    pooled_projection_dim=768,  # CLIP-L's pooled output
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_PROMPT_TOKENS = 512  # T5 at FluxPipeline's max_sequence_length for FLUX.1-dev (the preset's)
FLUX_SINGLE_BLOCKS = ("none", "layout", "idm")  # model.network.single_blocks, the default first

# stable-diffusion-v1-5, unet/config.json
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD3_PROMPT_TOKENS = 77 + 256  # CLIP-L/G padded to 77, then T5 at the pipeline's 256 tokens
SD15_PROMPT_TOKENS = 77
INSTANCES = 10  # the paper's cap
VAE_FACTOR = 8  # pixels per latent side (both VAEs)
TIMESTEP_CHANNELS = 256  # sinusoidal timestep features of SD3's time embedding


class RealTextWidths:
    """Stands in for the text encoder: the instance captions are assumed to be encoded as SD3
    encodes its prompt (token states as wide as joint_attention_dim, pooled CLIP-L + CLIP-G)."""

    hidden_size = SD3_MEDIUM["joint_attention_dim"]
    pooled_size = SD3_MEDIUM["pooled_projection_dim"]


def sd3_transformer(num_layers: int | None = None, arch: dict = SD3_MEDIUM) -> SD3Transformer2DModel:
    """The MM-DiT of ``arch`` (a transformer/config.json), with its first ``num_layers`` blocks."""
    return SD3Transformer2DModel(**{**arch, "num_layers": num_layers or arch["num_layers"]})


def layout_model(
    num_layers: int | None = None, share_query: bool = False, arch: dict = SD3_MEDIUM
) -> sd3.SD3LayoutModel:
    """idruid's model around an MM-DiT of ``arch`` (SD3-medium's by default): the adapter and the
    IDM processors are attached by SD3LayoutModel itself, only the backbone builder is swapped.
    ``share_query``: the presets' setting (the branch reuses the backbone's image queries)."""
    num_layers = num_layers or arch["num_layers"]
    config = ModelConfig(
        resolution=arch["sample_size"] * VAE_FACTOR,
        in_channels=arch["in_channels"],
        share_query=share_query,
        network=dict(
            patch_size=arch["patch_size"],
            num_layers=num_layers,
            num_heads=arch["num_attention_heads"],
            head_dim=arch["attention_head_dim"],
            output="velocity",
        ),
    )
    with (
        mock.patch.object(sd3, "build_transformer", lambda *_: sd3_transformer(num_layers, arch)),
        mock.patch.object(base, "build_codec", lambda _: Latents(arch["in_channels"])),
    ):
        return sd3.SD3LayoutModel(config, text_encoder=RealTextWidths())


def with_idm_in_attn2(model: sd3.SD3LayoutModel) -> sd3.SD3LayoutModel:
    """The rejected alternative on SD3.5-medium: an IDM processor on the image-only attn2 of each
    dual-attention block too (what set_attn_processor on every processor gave), built like the
    joint attention's."""
    first = next(m for m in model.transformer.modules() if isinstance(m, LayoutJointAttnProcessor))
    cfg, config = model.transformer.config, model.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    device = next(first.parameters()).device
    with torch.device(device):
        for i in cfg.dual_attention_layers:
            model.transformer.transformer_blocks[i].attn2.set_processor(
                LayoutJointAttnProcessor(
                    inner,
                    cfg.num_attention_heads,
                    inner,
                    config.use_idm,
                    config.idm_hidden,
                    cfg.patch_size,
                    config.geometry_rank,
                    config.share_query,
                )  # fmt: skip
            )
    return model


def sd15_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**SD15_UNET)


class SD15TextWidths:
    """Stands in for SD1.5's CLIP-L text encoder (768 wide, pooled = the EOS state)."""

    hidden_size = pooled_size = SD15_UNET["cross_attention_dim"]


class Latents:
    """Stands in for a VAE (SD3's and FLUX's: 16 latent channels, SD1.5's: 4), downsampling 8x."""

    def __init__(self, channels: int):
        self.latent_channels, self.downsample = channels, VAE_FACTOR


def sd15_layout_model() -> sd15.LayoutUNetModel:
    """idruid's model around SD1.5's UNet, the adapter and IDM attached by LayoutUNetModel itself."""
    config = ModelConfig(backbone="sd15", resolution=512, in_channels=SD15_UNET["in_channels"])
    with (
        mock.patch.object(sd15, "build_unet", lambda *_: sd15_unet()),
        mock.patch.object(base, "build_codec", lambda _: Latents(SD15_UNET["in_channels"])),
    ):
        return sd15.LayoutUNetModel(config, text_encoder=SD15TextWidths())


@dataclass(frozen=True)
class TextWidths:
    """Stands in for a text encoder: the widths of its token states and of its pooled output."""

    hidden_size: int
    pooled_size: int


def flux_text(arch: dict = FLUX_DEV) -> TextWidths:
    """FLUX's text encoders (T5-XXL token states, CLIP-L pooled), also assumed for the instance
    captions, as wide as ``arch`` reads them."""
    return TextWidths(arch["joint_attention_dim"], arch["pooled_projection_dim"])


def flux_transformer(arch: dict = FLUX_DEV) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(**arch)


def flux_layout_model(
    single_blocks: str = "none",
    arch: dict = FLUX_DEV,
    latent_side: int = 1024 // VAE_FACTOR,
    transformer: FluxTransformer2DModel | None = None,
) -> flux.FluxLayoutModel:
    """idruid's model around a FLUX.1 transformer of ``arch`` (FLUX.1-dev's by default) with the
    flux-dev preset's settings (share_query, IDM on the double-stream blocks) and ``single_blocks``:
    the adapter and the processors are attached by FluxLayoutModel itself, only the transformer
    builder and the codec are swapped. ``transformer``: this one instead of a new one (its
    processors are replaced)."""
    preset = load_config("flux-dev").model
    config = dataclasses.replace(
        preset,
        resolution=latent_side * VAE_FACTOR,
        in_channels=arch["in_channels"] // flux.PACK**2,
        network={**preset.network, "single_blocks": single_blocks},
    )
    build = (lambda *_: transformer) if transformer is not None else (lambda *_: flux_transformer(arch))
    with (
        mock.patch.object(flux, "build_transformer", build),
        mock.patch.object(base, "build_codec", lambda _: Latents(config.in_channels)),
    ):
        return flux.FluxLayoutModel(config, text_encoder=flux_text(arch))


def freeze_backbone(model) -> None:
    """Freeze the transformer's own weights, as a model on a base folder has them (LayoutModel.
    _finish_backbone): the real-weight presets train the adapter and the processors only."""
    for name, param in model.named_parameters():
        if name.startswith(model.backbone_attr + ".") and ".processor." not in name:
            param.requires_grad_(False)


# ---------------------------------------------------------------------- parameters
def count(parameters) -> int:
    return sum(p.numel() for p in parameters)


@dataclass
class ParamCounts:
    backbone: int
    adapter: int
    branch_per_block: dict[str, int]  # per part of one block's processor
    blocks: int

    @property
    def extra(self) -> int:
        return self.adapter + self.blocks * sum(self.branch_per_block.values())


def param_counts(model: sd3.SD3LayoutModel) -> ParamCounts:
    named = dict(model.transformer.named_parameters())
    backbone = count(p for n, p in named.items() if ".processor." not in n)
    processors = [m for m in model.transformer.modules() if isinstance(m, LayoutJointAttnProcessor)]
    first = processors[0]
    parts = {
        "to_q": count(first.to_q.parameters()) if first.to_q is not None else 0,
        "to_kv": count(first.to_kv.parameters()),
        "idm": count(first.idm.parameters()),
        "geometry": sum(
            count(m.parameters()) for m in (first.to_geometry, first.geometry_gate, first.geometry_out)
        ),
        "to_out": count(first.to_out.parameters()),
    }
    assert sum(parts.values()) == count(first.parameters()), "a processor part is missing from the breakdown"
    assert count(p for m in processors for p in m.parameters()) == len(processors) * count(first.parameters())
    assert isinstance(model.adapter, LayoutAdapter)
    return ParamCounts(backbone, count(model.adapter.parameters()), parts, len(processors))


# ---------------------------------------------------------------------- analytic FLOPs
def backbone_flops(image_tokens: int, text_tokens: int, num_layers: int, arch: dict = SD3_MEDIUM) -> int:
    """Matrix-product FLOPs of one SD3 / SD3.5 MM-DiT forward (batch 1), block by block.

    Every block but the last: AdaLN-zero modulations (6D each stream), q/k/v of both streams,
    one attention over image + text tokens, the output projections and two 4x MLPs. The last
    block is context_pre_only: a 2D modulation of the text stream, no text output or MLP. A
    dual-attention block of SD3.5-medium (among its first ``num_layers``) modulates the image
    stream with 9D and adds an image-only attention (q/k/v, attention, output). The q/k
    rms-norms of SD3.5 are elementwise: no matrix product.
    """
    c = arch
    d, p_img, t = c["num_attention_heads"] * c["attention_head_dim"], image_tokens, text_tokens
    patch_in = c["in_channels"] * c["patch_size"] ** 2
    patch_out = c["out_channels"] * c["patch_size"] ** 2
    s = p_img + t
    embed = 2 * (
        p_img * patch_in * d  # patch embedding (a stride-p convolution)
        + TIMESTEP_CHANNELS * d
        + d * d  # timestep MLP
        + c["pooled_projection_dim"] * d
        + d * d  # pooled text MLP
        + t * c["joint_attention_dim"] * d  # context embedder
    )
    attention = 2 * 3 * (p_img + t) * d * d + 4 * s * s * d + 2 * p_img * d * d  # qkv, softmax(QK)V, out
    block = 2 * 2 * 6 * d * d + attention + 2 * t * d * d + 2 * 2 * 4 * d * d * (p_img + t)
    last = 2 * (6 + 2) * d * d + attention + 2 * 2 * 4 * d * d * p_img
    head = 2 * 2 * d * d + 2 * p_img * d * patch_out  # final AdaLN and projection to patches
    dual = sum(i < num_layers for i in c.get("dual_attention_layers", ()))
    second = 2 * 3 * d * d + 2 * 3 * p_img * d * d + 4 * p_img * p_img * d + 2 * p_img * d * d
    return embed + (num_layers - 1) * block + last + head + dual * second


def two_token_path(model_config: ModelConfig) -> None:
    if model_config.caption_max_length != 0 or not model_config.use_idm:
        raise ValueError("the analytic branch FLOPs count the default two-token IDM path only")


def adapter_flops(instances: int, dim: int, pooled: int, model_config: ModelConfig) -> int:
    """The layout adapter (once per forward): the layout token MLP of each instance's Fourier box
    and pooled caption (``pooled`` wide), and box_proj (run although no caption token uses it)."""
    fourier = 4 * 2 * model_config.fourier_freqs
    return 2 * instances * ((fourier + pooled) * dim + dim * dim + fourier * dim)


def idm_layer_flops(
    image_tokens: int, instances: int, dim: int, patch: int, model_config: ModelConfig
) -> int:
    """One IDM layer (``LayoutBranch._two_token_idm``, tokens [null, layout] per instance) on
    ``image_tokens`` tokens of ``patch`` x ``patch`` latent pixels."""
    d, p, n = dim, image_tokens, instances
    h, r = model_config.idm_hidden, model_config.geometry_rank
    projections = 1 if model_config.share_query else 2  # to_out, and to_q unless the query is shared
    return (
        2
        * (
            projections * p * d * d  # to_q on the image tokens (unless shared), to_out
            + 2 * n * d * 3 * d  # keys, values and refined keys of the 2 tokens of each instance
            + p * d * n  # each pixel's logit for each instance's layout token
            + n * p * d  # the global feature's mean inside each box
            + (n + 1) * (3 * d * h + h * h + 3 * h * h + h * h + h * d)  # IDM: describe, interact, alpha
            + p * 2 * n * d  # composing the instance values with the masks
            + n * d * r
            + n * p * 6 * patch * patch * r
            + p * r * d  # pixel geometry, gated
        )
        + 4 * (n + 1) ** 2 * h
    )  # IDM's self-attention over the n + 1 features


def adapter_only_layer_flops(image_tokens: int, instances: int, dim: int, model_config: ModelConfig) -> int:
    """One adapter-only branch (``LayoutBranch._adapter_only``: ablation row 1, FLUX's
    ``single_blocks: layout``): one attention of the image tokens to the 2 tokens of every instance."""
    d, p, n = dim, image_tokens, instances
    projections = 1 if model_config.share_query else 2
    return 2 * (
        projections * p * d * d  # to_q (unless shared), to_out
        + 2 * n * d * 2 * d  # keys and values of the 2 tokens of each instance
        + 2 * p * 2 * n * d  # softmax(QK)V over the 2n tokens
    )


def branch_flops(
    image_tokens: int, instances: int, num_layers: int, model_config: ModelConfig, arch: dict = SD3_MEDIUM
) -> int:
    """Matrix-product FLOPs the layout adapter + IDM add to one forward of an SD3-family MM-DiT
    (batch 1; tokens [null, layout] per instance, the default two-token path of LayoutBranch);
    ``num_layers`` counts the IDM layers."""
    two_token_path(model_config)
    d = arch["num_attention_heads"] * arch["attention_head_dim"]
    adapter = adapter_flops(instances, d, RealTextWidths.pooled_size, model_config)
    return adapter + num_layers * idm_layer_flops(
        image_tokens, instances, d, arch["patch_size"], model_config
    )


def flux_backbone_flops(image_tokens: int, text_tokens: int, arch: dict = FLUX_DEV) -> int:
    """Matrix-product FLOPs of one FLUX.1 transformer forward (batch 1), block by block.

    Embeddings: the packed image tokens (x_embedder), the timestep MLP and (guidance_embeds,
    FLUX.1-dev) the distilled guidance's, both from 256 sinusoidal features, the pooled CLIP MLP
    and the context embedder on the T5 tokens. A double-stream block: AdaLN-zero modulations (6D
    each stream), q/k/v of both streams, one attention over text + image tokens, both output
    projections and two 4x MLPs (every block has them: FLUX has no context_pre_only block). A
    single-stream block over the S = text + image tokens: a 3D modulation, q/k/v, attention, the
    MLP's input projection (4D) and proj_out from the concatenated attention and MLP (5D -> D).
    The head: a 2D modulation and the projection to the packed latents. The rotary embedding and
    the q/k RMS norms are elementwise: no matrix product.
    """
    c = arch
    d, p, t = c["num_attention_heads"] * c["attention_head_dim"], image_tokens, text_tokens
    s = p + t
    patch_out = (c.get("out_channels") or c["in_channels"]) * c["patch_size"] ** 2
    time_mlps = 2 if c["guidance_embeds"] else 1
    embed = 2 * (
        p * c["in_channels"] * d
        + time_mlps * (TIMESTEP_CHANNELS * d + d * d)
        + c["pooled_projection_dim"] * d
        + d * d
        + t * c["joint_attention_dim"] * d
    )
    attention = 4 * s * s * d  # softmax(QK)V
    double = 2 * 2 * 6 * d * d + 2 * 3 * s * d * d + attention + 2 * s * d * d + 2 * 2 * 4 * d * d * s
    single = 2 * 3 * d * d + 2 * 3 * s * d * d + attention + 2 * s * d * 4 * d + 2 * s * 5 * d * d
    head = 2 * 2 * d * d + 2 * p * d * patch_out
    return embed + c["num_layers"] * double + c["num_single_layers"] * single + head


def flux_branch_flops(
    image_tokens: int, instances: int, model_config: ModelConfig, single_blocks: str, arch: dict = FLUX_DEV
) -> int:
    """Matrix-product FLOPs the layout adapter + branch add to one FLUX.1 forward (batch 1): an
    IDM layer on each double-stream block, and on each single-stream block as ``single_blocks``
    says (nothing, an adapter-only branch or an IDM layer); the IDM's box geometry per pixel of
    a packed token's 2x2 latent pixels."""
    two_token_path(model_config)
    d = arch["num_attention_heads"] * arch["attention_head_dim"]
    idm = idm_layer_flops(image_tokens, instances, d, flux.PACK, model_config)
    single = {
        "none": 0,
        "layout": adapter_only_layer_flops(image_tokens, instances, d, model_config),
        "idm": idm,
    }[single_blocks]
    adapter = adapter_flops(instances, d, arch["pooled_projection_dim"], model_config)
    return adapter + arch["num_layers"] * idm + arch["num_single_layers"] * single


# ---------------------------------------------------------------------- measured FLOPs
def inputs(
    image_side: int,
    text_tokens: int,
    instances: int,
    device,
    dtype=torch.float32,
    text=None,
    channels: int = SD3_MEDIUM["in_channels"],
):
    """Latents (1, 16, side, side), sigma and a Conditioning with instances boxes in a row;
    ``text``: the text encoder's widths (SD3's by default; ``flux_text``)."""
    latents = torch.randn(1, channels, image_side, image_side, device=device, dtype=dtype)
    sigma = torch.full((1,), 0.7, device=device)
    x0s = torch.arange(instances, dtype=torch.float32) / instances
    boxes = torch.stack([x0s, x0s * 0.5, x0s + 1.0 / instances, x0s * 0.5 + 0.5], dim=-1)[None]
    text = text or RealTextWidths
    width, pooled = text.hidden_size, text.pooled_size
    cond = sd3.Conditioning(
        prompt_hidden=torch.randn(1, text_tokens, width),
        prompt_pooled=torch.randn(1, pooled),
        caption_hidden=torch.zeros(1, instances, 0, width),
        caption_pooled=torch.randn(1, instances, pooled),
        caption_mask=torch.zeros(1, instances, 0, dtype=torch.bool),
        boxes=boxes,
        valid=torch.ones(1, instances, dtype=torch.bool),
        enabled=torch.ones(1),
    )
    return latents, sigma, cond.to(device)  # on the meta device: shapes only (guidance stays None)


@contextmanager
def untrimmed():
    """On the meta device no value can be read, so the batch cannot be trimmed to its used
    instance slots; here every slot is used, so trimming would change nothing."""
    with mock.patch.object(sd3.Conditioning, "trimmed", lambda self: self):
        yield


@contextmanager
def counting():
    """FlopCounterMode with attention on its math backend: FlopCounterMode has no formula for the
    fused CPU attention kernel (it would count 0 FLOPs for softmax(QK)V there)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        yield counter


def measured_flops(model, latents, sigma, cond, layout_on: bool) -> int:
    with counting() as counter:
        model(latents, sigma, cond, layout_on=layout_on)
    return counter.get_total_flops()


def plain_flops(transformer: SD3Transformer2DModel, latents, sigma, cond) -> int:
    """FLOPs of diffusers' MM-DiT with its default attention processors."""
    with counting() as counter:
        transformer(
            hidden_states=latents,
            encoder_hidden_states=cond.prompt_hidden,
            pooled_projections=cond.prompt_pooled,
            timestep=sigma * 1000.0,
        )
    return counter.get_total_flops()


def flux_plain_flops(transformer: FluxTransformer2DModel, latents, sigma, cond) -> int:
    """FLOPs of diffusers' FLUX transformer with its default attention processors, given what
    FluxPipeline gives it (packed latents, rotary ids, the distilled guidance)."""
    grid = (latents.shape[-2] // flux.PACK, latents.shape[-1] // flux.PACK)
    guidance = torch.full((1,), 3.5, device=latents.device) if transformer.config.guidance_embeds else None
    with counting() as counter:
        transformer(
            hidden_states=flux.pack_latents(latents),
            encoder_hidden_states=cond.prompt_hidden,
            pooled_projections=cond.prompt_pooled,
            timestep=sigma,
            img_ids=flux.image_ids(grid, latents.device),
            txt_ids=flux.text_ids(cond.prompt_hidden.shape[1], latents.device),
            guidance=guidance,
        )
    return counter.get_total_flops()


def check(name: str, analytic: int, measured: int) -> None:
    status = "ok" if analytic == measured else "MISMATCH"
    print(f"  {name:<44} analytic {analytic / 1e9:10.3f} GFLOP, counted {measured / 1e9:10.3f}  {status}")
    if analytic != measured:
        raise SystemExit(f"{name}: analytic FLOPs {analytic} != FlopCounterMode {measured}")


# ---------------------------------------------------------------------- timing
def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def sd3_steps(model, latents, sigma, cond, layout_on: bool, autocast_dtype) -> dict[str, Callable]:
    """A forward and a training step (L_ldm, + L_dis with the branch on; AdamW) to time."""
    device = latents.device
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
    noise = torch.randn_like(latents)
    x_t = add_noise(latents, noise, sigma)

    def forward():
        with torch.no_grad(), torch.autocast(device.type, autocast_dtype, enabled=autocast_dtype is not None):
            model(x_t, sigma, cond, layout_on=layout_on)

    def train_step():
        with torch.autocast(device.type, autocast_dtype, enabled=autocast_dtype is not None):
            v, maps = model(x_t, sigma, cond, layout_on=layout_on, record_attention=layout_on)
        loss = flow_matching_loss(v, latents, noise)
        if layout_on:
            loss = loss + idc_loss(maps, cond.boxes, cond.valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"forward": forward, "train step": train_step}


def fastest(calls: dict[str, Callable], repeats: int, device) -> dict[str, float]:
    """Seconds of each call: the fastest of `repeats` after a warm-up, the calls interleaved so
    that the load of a shared machine falls on all of them alike (it only ever adds time)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            sync(device)
            start = time.perf_counter()
            call()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def time_sd15_gpu(repeats: int) -> tuple[float, float]:
    """(training-step seconds, peak GiB) of the SD1.5 UNet at 512x512 (noise prediction, bf16)."""
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        unet = sd15_unet()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    side = 512 // VAE_FACTOR
    latents = torch.randn(1, 4, side, side, device="cuda")
    text = torch.randn(1, SD15_PROMPT_TOKENS, SD15_UNET["cross_attention_dim"], device="cuda")
    timestep = torch.tensor([500], device="cuda")

    def train_step():
        with torch.autocast("cuda", torch.bfloat16):
            out = unet(latents, timestep, encoder_hidden_states=text).sample
        loss = torch.nn.functional.mse_loss(out.float(), latents)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = fastest({"train step": train_step}, repeats, "cuda")["train step"]
    return seconds, torch.cuda.max_memory_allocated() / 2**30


@dataclass
class StepTimes:
    """Seconds per forward (no_grad) and per training step, and the peak memory (GiB, CUDA only)
    of one configuration; ``error`` when it did not run (out of memory)."""

    name: str
    forward: float | None = None
    train_step: float | None = None
    peak_gib: float | None = None
    error: str | None = None

    def line(self, resolution: int) -> str:
        parts = [f"forward {self.forward:.3f} s" if self.forward is not None else None,
                 f"train step {self.train_step:.3f} s" if self.train_step is not None else None,
                 f"peak {self.peak_gib:.1f} GiB" if self.peak_gib is not None else None,
                 self.error]  # fmt: skip
        return f"  {self.name:<44} {resolution}: " + ", ".join(p for p in parts if p)


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


def flux_step_times(
    arch: dict, latent_side: int, text_tokens: int, repeats: int, device, dtype=torch.bfloat16
) -> list[StepTimes]:
    """FLUX.1 + idruid as the flux-dev preset trains it: the transformer frozen (real weights),
    gradient checkpointing, autocast to ``dtype`` over float32 weights (accelerate's mixed
    precision), AdamW over the adapter and the branches (L_ldm + L_dis); batch 1, 10 instances.
    For each single_blocks setting a forward and a training step with the branch on; for the
    transformer alone a forward only (none of its weights train). A configuration that runs out
    of memory is reported as such and the next one still runs."""
    rows = []
    for single_blocks in FLUX_SINGLE_BLOCKS:
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        named = {f"+ adapter + IDM, single_blocks {single_blocks}": True}
        if single_blocks == FLUX_SINGLE_BLOCKS[0]:
            named = {"transformer alone (branch off)": False, **named}
        model = calls = None
        try:
            torch.manual_seed(0)
            with torch.device(device):
                model = flux_layout_model(single_blocks, arch, latent_side)
            freeze_backbone(model)
            model.transformer.enable_gradient_checkpointing()
            latents, sigma, cond = inputs(latent_side, text_tokens, INSTANCES, device, text=flux_text(arch),
                                          channels=arch["in_channels"] // flux.PACK**2)  # fmt: skip
            calls = {}
            for name, layout_on in named.items():
                steps = sd3_steps(model, latents, sigma, cond, layout_on, dtype)
                calls[f"{name}|forward"] = steps["forward"]
                if layout_on:  # the branch off, nothing would get a gradient
                    calls[f"{name}|train step"] = steps["train step"]
            seconds = fastest(calls, repeats, device)
            peak = peak_gib(device)
            for name in named:
                rows.append(
                    StepTimes(name, seconds[f"{name}|forward"], seconds.get(f"{name}|train step"), peak)
                )
        except torch.OutOfMemoryError:
            rows += [StepTimes(name, peak_gib=peak_gib(device), error="out of memory") for name in named]
        del model, calls
    return rows


MINIATURES = {"shapes-flux": "FLUX miniature", "shapes": "MM-DiT miniature (SD3)"}
INSTANCE_COUNTS = (2, 6, 10)


def miniature_times(batch: int, repeats: int) -> dict[tuple[str, int, bool], float]:
    """Seconds per forward (no_grad) of the embedded miniatures (``MINIATURES``' presets, their
    own resolution) with the layout branch off and on, for batches of ``batch`` shapes layouts of
    each of ``INSTANCE_COUNTS`` instances: all of them interleaved, the fastest of ``repeats``."""
    calls = {}
    for preset in MINIATURES:
        torch.manual_seed(0)
        model = build_model(load_config(preset).model).eval()
        x_t = torch.randn(batch, *model.latent_shape)
        sigma = torch.full((batch,), 0.5)
        for instances in INSTANCE_COUNTS:
            rng = np.random.default_rng(instances)
            layouts = [scene_to_layout(sample_scene(rng, instances), "detailed", rng) for _ in range(batch)]
            cond = model.encode_text(layouts)
            assert cond.valid.sum(1).tolist() == [instances] * batch
            for layout_on in (False, True):

                def forward(model=model, x_t=x_t, sigma=sigma, cond=cond, layout_on=layout_on):
                    with torch.no_grad():
                        model(x_t, sigma, cond, layout_on=layout_on)

                calls[preset, instances, layout_on] = forward
    return fastest(calls, repeats, "cpu")


def print_header(columns: list[str]) -> None:
    """The header and rule of a markdown table (each report prints its rows)."""
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))


def miniature_report(batch: int, repeats: int) -> None:
    seconds = miniature_times(batch, repeats)
    threads = torch.get_num_threads()
    print(f"\n## The miniatures' forward, layout branch off / on, by instance count (CPU, "
          f"{threads} thread(s), batch {batch}, fastest of {repeats}, interleaved)")  # fmt: skip
    columns = ["instances"]
    for preset, name in MINIATURES.items():
        columns += [f"{name} (`{preset}`) off ms", "on ms", "on / off"]
    print_header(columns)
    for instances in INSTANCE_COUNTS:
        cells = [str(instances)]
        for preset in MINIATURES:
            off, on = seconds[preset, instances, False], seconds[preset, instances, True]
            cells += [f"{off * 1e3:.1f}", f"{on * 1e3:.1f}", f"{on / off:.2f}x"]
        print("| " + " | ".join(cells) + " |")


def druid_branch_flops(image_tokens: int, slots: int, num_layers: int) -> int:
    """Matrix-product FLOPs of the I-DRUID authors' layout branch (models/druid_arch.py) in one
    forward (batch 1): position_net once, then per block norm1_bbox's modulation (6D, 2D on the
    last block), the fuser's q/k/v for image and layout tokens, one attention over the N + K
    tokens (the layout rows are computed, then dropped, as theirs), the ip keys / values and
    attention, the IDM's pooling and 1x1 convolutions, ip_adapter, to_out.0 and bbox_forward."""
    d, n, k = SD3_MEDIUM["num_attention_heads"] * SD3_MEDIUM["attention_head_dim"], image_tokens, slots
    caption = SD3_MEDIUM["pooled_projection_dim"]
    position_net = 2 * k * (caption * d + d * d + (d + 64) * (d // 2) + (d // 2) * d)
    per_block = (
        2 * 3 * n * d * d  # to_q, to_k, to_v
        + 2 * 3 * k * d * d  # add_q_proj, add_k_proj, add_v_proj
        + 4 * (n + k) ** 2 * d  # softmax(QK)V over image + layout tokens
        + 2 * 2 * k * d * d  # add_k_proj_ip, add_v_proj_ip
        + 4 * n * k * d  # the ip attention
        + 2 * n * d
        + 2 * 2 * d * (d // IDM_REDUCTION)  # IDM pooling, fc1, fc2
        + 2 * 3 * n * d * d  # ip_adapter, to_out.0, bbox_forward
    )
    modulation = 2 * d * 6 * d * (num_layers - 1) + 2 * d * 2 * d
    return position_net + num_layers * per_block + modulation


def druid_report(image_tokens: int) -> None:
    """Parameters and FLOPs (meta device) of the authors' layout branch on SD3-medium, beside
    idruid's adapter + IDM above."""
    with torch.device("meta"):
        druid = DruidSD3Transformer(max_boxes=INSTANCES, **SD3_MEDIUM)
    branch = count(p for n, p in druid.named_parameters() if is_layout_key(n))
    backbone = count(p for n, p in druid.named_parameters() if not is_layout_key(n))
    print("\n## The I-DRUID authors' released architecture (sd3-druid) on SD3-medium")
    print(f"  parameters: backbone {backbone:,} (= SD3-medium's); layout branch {branch:,} = "
          f"{branch / backbone:.1%} of the MM-DiT")  # fmt: skip
    side = int(image_tokens**0.5)
    latents = torch.empty(1, SD3_MEDIUM["in_channels"], side * 2, side * 2, device="meta")
    args = (
        latents,
        torch.empty(1, SD3_PROMPT_TOKENS, SD3_MEDIUM["joint_attention_dim"], device="meta"),
        torch.empty(1, SD3_MEDIUM["pooled_projection_dim"], device="meta"),
        torch.empty(1, device="meta"),
    )
    layout = {
        "boxes": torch.empty(1, INSTANCES, 4, device="meta"),
        "positive_embeddings": torch.empty(1, INSTANCES, SD3_MEDIUM["pooled_projection_dim"], device="meta"),
        "masks": torch.empty(1, INSTANCES, device="meta"),
    }
    masks = torch.empty(1, INSTANCES, side, side, device="meta")
    flops = {}
    for scale in (1.0, 0.0):
        with counting() as counter:
            druid(*args, layout=layout, spatial_mask=masks, bbox_scale=scale)
        flops[scale] = counter.get_total_flops()
    added = flops[1.0] - flops[0.0]
    analytic = druid_branch_flops(image_tokens, INSTANCES, SD3_MEDIUM["num_layers"])
    check("authors' layout branch (1024 px, 10 slots)", analytic, added)
    print(f"  FLOPs: backbone {flops[0.0] / 1e9:.1f} GFLOP; their layout branch adds {added / 1e9:.1f} GFLOP "
          f"= {added / flops[0.0]:.1%} per forward with the branch on (first 30% of the steps)")  # fmt: skip


@dataclass
class SD3Row:
    """One MM-DiT of the SD3 family with idruid's adapter + IDM at 1024 px (batch 1)."""

    name: str
    backbone_params: int
    idm_layers: int
    extra_params: int  # adapter + IDM, share_query (the presets)
    extra_params_own_q: int  # adapter + IDM with the branch's own to_q
    backbone_flops: int
    branch_flops: int

    def markdown(self) -> str:
        return (
            f"| {self.name} | {self.backbone_params / 1e9:.3f} B | {self.idm_layers} | "
            f"{self.extra_params / 1e6:.1f} M ({self.extra_params / self.backbone_params:.1%}) | "
            f"{self.extra_params_own_q / 1e6:.1f} M ({self.extra_params_own_q / self.backbone_params:.1%}) | "
            f"{self.backbone_flops / 1e9:.1f} | {self.branch_flops / 1e9:.1f} "
            f"({self.branch_flops / self.backbone_flops:.1%}) | {self.idm_layers} |"
        )


def sd3_family_row(name: str, arch: dict, side: int, idm_in_attn2: bool = False) -> SD3Row:
    """Parameters and FLOPs (meta device) of ``arch`` + adapter + IDM, the analytic FLOPs checked
    against FlopCounterMode; ``idm_in_attn2``: SD3.5-medium's rejected alternative."""
    tokens = (side // arch["patch_size"]) ** 2
    layers = arch["num_layers"]

    def build(share_query: bool) -> sd3.SD3LayoutModel:
        with torch.device("meta"):
            model = layout_model(share_query=share_query, arch=arch)
            return with_idm_in_attn2(model) if idm_in_attn2 else model

    with torch.device("meta"):
        plain = sd3_transformer(arch=arch)
    model, own = build(True), build(False)
    params, own_params = param_counts(model), param_counts(own)
    assert params.backbone == count(plain.parameters())  # attaching idruid leaves the backbone as it is
    idm_layers = layers + (len(arch.get("dual_attention_layers", ())) if idm_in_attn2 else 0)
    assert params.blocks == idm_layers
    analytic = backbone_flops(tokens, SD3_PROMPT_TOKENS, layers, arch)
    branch = branch_flops(tokens, INSTANCES, idm_layers, model.config, arch)
    latents, sigma, cond = inputs(side, SD3_PROMPT_TOKENS, INSTANCES, "meta")
    with untrimmed():
        if not idm_in_attn2:
            check(f"{name}, diffusers' attention", analytic, plain_flops(plain, latents, sigma, cond))
            check(f"{name}, layout branch off", analytic, measured_flops(model, latents, sigma, cond, False))
        check(
            f"{name}, adapter + IDM on", analytic + branch, measured_flops(model, latents, sigma, cond, True)
        )
    return SD3Row(name, params.backbone, idm_layers, params.extra, own_params.extra, analytic, branch)


def sd35_report(side: int, device) -> None:
    """The SD3 family at 1024 px in one table (SD3-medium for reference), and a real run of an
    SD3.5-medium-width model (2 blocks, the first a dual-attention block) that checks the
    dual-attention FLOP count on real tensors."""
    print(f"\n## The SD3 family + adapter + IDM, 1024x1024 ({(side // 2) ** 2} image tokens, "
          f"{SD3_PROMPT_TOKENS} text, {INSTANCES} instances; FLOPs checked on the meta device)")  # fmt: skip
    rows = [sd3_family_row("SD3-medium", SD3_MEDIUM, side)]
    rows.append(sd3_family_row("SD3.5-medium", SD35_MEDIUM, side))
    rows.append(sd3_family_row("SD3.5-medium + IDM on attn2 (rejected)", SD35_MEDIUM, side, True))
    rows.append(sd3_family_row("SD3.5-large", SD35_LARGE, side))
    small_layers, small_side = 2, 32
    small_arch = {**SD35_MEDIUM, "dual_attention_layers": (0,)}
    torch.manual_seed(0)
    small = layout_model(small_layers, share_query=True, arch=small_arch).to(device)
    latents, sigma, cond = inputs(small_side, SD3_PROMPT_TOKENS, INSTANCES, device)
    small_tokens = (small_side // small_arch["patch_size"]) ** 2
    small_backbone = backbone_flops(small_tokens, SD3_PROMPT_TOKENS, small_layers, small_arch)
    small_branch = branch_flops(small_tokens, INSTANCES, small_layers, small.config, small_arch)
    check("SD3.5-medium width, 2 blocks (real tensors)", small_backbone,
          measured_flops(small, latents, sigma, cond, False))  # fmt: skip
    check("  + adapter + IDM (real tensors)", small_backbone + small_branch,
          measured_flops(small, latents, sigma, cond, True))  # fmt: skip
    del small
    columns = [
        "backbone",
        "MM-DiT params",
        "IDM layers",
        "adapter + IDM params (share_query, the presets)",
        "(own to_q)",
        "MM-DiT GFLOP / forward",
        "+ adapter + IDM GFLOP",
        "L_dis map sets / forward",
    ]
    print_header(columns)
    for row in rows:
        print(row.markdown())


@dataclass
class FluxParams:
    backbone: int
    adapter: int
    double_branch: int  # one double-stream block's processor (IDM)
    single_branch: int  # one single-stream block's (0: diffusers' own attention)
    double_layers: int
    single_layers: int  # single-stream blocks with a branch
    unused: int  # the adapter's caption-token modules: unused at caption_max_length 0, never trained

    @property
    def branches(self) -> int:
        return self.double_layers * self.double_branch + self.single_layers * self.single_branch

    @property
    def extra(self) -> int:
        return self.adapter + self.branches


def flux_param_counts(model: flux.FluxLayoutModel) -> FluxParams:
    named = dict(model.transformer.named_parameters())
    backbone = count(p for n, p in named.items() if ".processor." not in n)
    per_kind = []
    for kind in (flux.FluxLayoutJointProcessor, flux.FluxLayoutSingleProcessor):
        sizes = [count(m.parameters()) for m in model.transformer.modules() if isinstance(m, kind)]
        assert len(set(sizes)) <= 1, f"{kind.__name__}s of different sizes"
        per_kind.append((sizes[0] if sizes else 0, len(sizes)))
    (double, doubles), (single, singles) = per_kind
    assert doubles == model.transformer.config.num_layers
    assert singles in (0, model.transformer.config.num_single_layers)
    unused = count(p for n, p in model.named_parameters() if n.startswith(model.unused_prefixes))
    adapter = count(model.adapter.parameters())
    params = FluxParams(backbone, adapter, double, single, doubles, singles, unused)
    assert backbone + params.branches == count(named.values()), "a processor is missing from the count"
    return params


@dataclass
class FluxRow:
    """FLUX.1-dev + idruid at 1024 px (batch 1) with one ``single_blocks`` setting."""

    single_blocks: str
    params: FluxParams
    map_sets: int  # attention map sets L_dis reads per forward
    backbone_flops: int
    branch_flops: int

    def markdown(self) -> str:
        p = self.params
        single = f"{p.single_layers} x {p.single_branch / 1e6:.1f} M" if p.single_layers else "-"
        return (
            f"| {self.single_blocks} | {p.backbone / 1e9:.3f} B | {p.adapter / 1e6:.1f} M | "
            f"{p.double_layers} x {p.double_branch / 1e6:.1f} M | {single} | "
            f"{p.extra / 1e9:.3f} B ({p.extra / p.backbone:.1%}) | {(p.extra - p.unused) / 1e9:.3f} B | "
            f"{self.backbone_flops / 1e9:.1f} | "
            f"{self.branch_flops / 1e9:.1f} ({self.branch_flops / self.backbone_flops:.1%}) | "
            f"{self.map_sets} |"
        )


def flux_row(single_blocks: str, latent_side: int, plain_params: int) -> FluxRow:
    """Parameters and FLOPs (meta device) of FLUX.1-dev + adapter + branch with ``single_blocks``,
    the analytic FLOPs checked against FlopCounterMode with the branch off and on."""
    with torch.device("meta"):
        model = flux_layout_model(single_blocks, latent_side=latent_side)
    params = flux_param_counts(model)
    assert params.backbone == plain_params  # attaching idruid leaves the transformer as it is
    tokens = (latent_side // flux.PACK) ** 2
    backbone = flux_backbone_flops(tokens, FLUX_PROMPT_TOKENS)
    branch = flux_branch_flops(tokens, INSTANCES, model.config, single_blocks)
    latents, sigma, cond = inputs(latent_side, FLUX_PROMPT_TOKENS, INSTANCES, "meta", text=flux_text())
    with untrimmed():
        name = f"FLUX.1-dev {single_blocks}"
        check(f"{name}, branch off", backbone, measured_flops(model, latents, sigma, cond, False))
        check(
            f"{name}, adapter + branch on",
            backbone + branch,
            measured_flops(model, latents, sigma, cond, True),
        )
        with torch.no_grad():
            maps = model(latents, sigma, cond, layout_on=True, record_attention=True)[1]
    return FluxRow(single_blocks, params, len(maps), backbone, branch)


def flux_small_check(device, layers: int = 1, latent_side: int = 32) -> None:
    """The FLUX counts on real tensors: a transformer at FLUX.1-dev's width with ``layers``
    double- and single-stream blocks, under every single_blocks setting (one transformer, its
    processors replaced)."""
    arch = {**FLUX_DEV, "num_layers": layers, "num_single_layers": layers}
    tokens = (latent_side // flux.PACK) ** 2
    torch.manual_seed(0)
    started = time.perf_counter()
    transformer = flux_transformer(arch).to(device)
    latents, sigma, cond = inputs(latent_side, FLUX_PROMPT_TOKENS, INSTANCES, device, text=flux_text(arch))
    backbone = flux_backbone_flops(tokens, FLUX_PROMPT_TOKENS, arch)
    check(f"FLUX.1-dev width, {layers} + {layers} blocks (real tensors)", backbone,
          flux_plain_flops(transformer, latents, sigma, cond))  # fmt: skip
    for single_blocks in FLUX_SINGLE_BLOCKS:
        model = flux_layout_model(single_blocks, arch, latent_side, transformer).to(device)
        if single_blocks == FLUX_SINGLE_BLOCKS[0]:
            check("  idruid model, branch off (real tensors)", backbone,
                  measured_flops(model, latents, sigma, cond, False))  # fmt: skip
        branch = flux_branch_flops(tokens, INSTANCES, model.config, single_blocks, arch)
        check(f"  + adapter + branch, single_blocks {single_blocks}", backbone + branch,
              measured_flops(model, latents, sigma, cond, True))  # fmt: skip
    print(f"  built and counted in {time.perf_counter() - started:.1f} s")


def flux_report(device) -> None:
    """FLUX.1-dev + idruid at 1024 px, one row per single_blocks setting (meta device), and the
    counts checked on real tensors at FLUX.1-dev's width."""
    side = 1024 // VAE_FACTOR
    tokens = (side // flux.PACK) ** 2
    print(f"\n## FLUX.1-dev + adapter + IDM, 1024x1024 ({tokens} image tokens after 2x2 packing, "
          f"{FLUX_PROMPT_TOKENS} T5 tokens, {INSTANCES} instances; share_query as flux-dev)")  # fmt: skip
    with torch.device("meta"):
        plain = flux_transformer()
    latents, sigma, cond = inputs(side, FLUX_PROMPT_TOKENS, INSTANCES, "meta", text=flux_text())
    check("FLUX.1-dev, diffusers' attention (meta)", flux_backbone_flops(tokens, FLUX_PROMPT_TOKENS),
          flux_plain_flops(plain, latents, sigma, cond))  # fmt: skip
    rows = [flux_row(single_blocks, side, count(plain.parameters())) for single_blocks in FLUX_SINGLE_BLOCKS]
    flux_small_check(device)
    columns = [
        "single_blocks",
        "transformer params",
        "adapter",
        "double-stream branches (IDM)",
        "single-stream branches",
        "adapter + branches (% of transformer)",
        "trained (no caption-token modules)",
        "transformer GFLOP / forward",
        "+ adapter + branches GFLOP",
        "L_dis map sets / forward",
    ]
    print_header(columns)
    for row in rows:
        print(row.markdown())


def sd15_report(latent_side: int) -> None:
    """Parameters and FLOPs (FlopCounterMode, meta device) that the adapter + IDM add to SD1.5."""
    with torch.device("meta"):
        model = sd15_layout_model()
    unet_params = count(p for n, p in model.unet.named_parameters() if ".processor." not in n)
    processors = [m for m in model.unet.modules() if isinstance(m, LayoutCrossAttnProcessor)]
    extra = count(model.adapter.parameters()) + count(p for m in processors for p in m.parameters())
    layers = ", ".join(f"{latent_side // m.downsample}x{latent_side // m.downsample}" for m in processors)
    print(f"\n## SD1.5 + adapter + IDM ({len(processors)} IDM layers: {layers})")
    print(f"  parameters: UNet {unet_params:,}; adapter + IDM {extra:,} = "
          f"{extra / unet_params:.1%} of the UNet")  # fmt: skip
    width = SD15_UNET["cross_attention_dim"]
    x0s = torch.arange(INSTANCES, dtype=torch.float32) / INSTANCES
    cond = sd3.Conditioning(
        prompt_hidden=torch.empty(1, SD15_PROMPT_TOKENS, width, device="meta"),
        prompt_pooled=torch.empty(1, width, device="meta"),
        caption_hidden=torch.empty(1, INSTANCES, 0, width, device="meta"),
        caption_pooled=torch.empty(1, INSTANCES, width, device="meta"),
        caption_mask=torch.empty(1, INSTANCES, 0, dtype=torch.bool, device="meta"),
        boxes=torch.stack([x0s, x0s * 0.5, x0s + 1.0 / INSTANCES, x0s * 0.5 + 0.5], -1)[None].to("meta"),
        valid=torch.empty(1, INSTANCES, dtype=torch.bool, device="meta"),
        enabled=torch.empty(1, device="meta"),
    )
    latents = torch.empty(1, SD15_UNET["in_channels"], latent_side, latent_side, device="meta")
    timestep = torch.full((1,), 500.0, device="meta")
    with untrimmed():
        off = measured_flops(model, latents, timestep, cond, layout_on=False)
        on = measured_flops(model, latents, timestep, cond, layout_on=True)
    print(f"  FLOPs: UNet {off / 1e9:.1f} GFLOP; adapter + IDM add {(on - off) / 1e9:.1f} GFLOP = "
          f"{(on - off) / off:.1%}")  # fmt: skip


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mini-batch", type=int, default=8, help="batch of the miniatures' forward")
    parser.add_argument("--mini-repeats", type=int, default=30, help="runs of the miniatures' forward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    # ------------------------------------------------------------ parameters (meta device)
    with torch.device("meta"):
        plain = sd3_transformer()
        model = layout_model()
        shared_model = layout_model(share_query=True)
        unet = sd15_unet()
    params = param_counts(model)
    shared = param_counts(shared_model)
    assert params.backbone == count(plain.parameters())  # attaching idruid leaves the backbone as it is
    print("## Parameters")
    print(f"SD3-medium MM-DiT: {params.backbone:,}")
    print(f"SD1.5 UNet:        {count(unet.parameters()):,}")
    print(f"idruid adapter:    {params.adapter:,}")
    for part, n in params.branch_per_block.items():
        print(f"  per block {part:<9} {n:>12,}  x {params.blocks} = {n * params.blocks:,}")
    print(f"adapter + IDM:     {params.extra:,}  = {params.extra / params.backbone:.1%} of the MM-DiT")
    print(f"  share_query (the sd3-medium preset: no to_q, the backbone's queries): {shared.extra:,}"
          f"  = {shared.extra / shared.backbone:.1%} of the MM-DiT")  # fmt: skip

    # ------------------------------------------------------------ FLOPs at 1024x1024 (meta device)
    side = 1024 // VAE_FACTOR
    tokens = (side // SD3_MEDIUM["patch_size"]) ** 2
    full_backbone = backbone_flops(tokens, SD3_PROMPT_TOKENS, SD3_MEDIUM["num_layers"])
    full_branch = branch_flops(tokens, INSTANCES, SD3_MEDIUM["num_layers"], model.config)
    print(f"\n## FLOPs per forward, 1024x1024: {tokens} image tokens, {SD3_PROMPT_TOKENS} text, "
          f"{INSTANCES} instances")  # fmt: skip
    latents, sigma, cond = inputs(side, SD3_PROMPT_TOKENS, INSTANCES, "meta")
    with untrimmed():
        check("SD3-medium, diffusers' attention (meta)", full_backbone,
              plain_flops(plain, latents, sigma, cond))  # fmt: skip
        check("idruid model, layout branch off (meta)", full_backbone,
              measured_flops(model, latents, sigma, cond, layout_on=False))  # fmt: skip
        check("idruid model, adapter + IDM on (meta)", full_backbone + full_branch,
              measured_flops(model, latents, sigma, cond, layout_on=True))  # fmt: skip
        shared_branch = branch_flops(tokens, INSTANCES, SD3_MEDIUM["num_layers"], shared_model.config)
        check("idruid model, share_query, adapter + IDM on (meta)", full_backbone + shared_branch,
              measured_flops(shared_model, latents, sigma, cond, layout_on=True))  # fmt: skip
    share = full_branch / full_backbone
    print(
        f"  adapter + IDM add {full_branch / 1e9:.1f} GFLOP = {share:.1%} of the backbone; "
        f"with share_query {shared_branch / 1e9:.1f} GFLOP = {shared_branch / full_backbone:.1%}"
    )
    unet_side = 512 // VAE_FACTOR
    with counting() as counter:
        unet(
            torch.empty(1, 4, unet_side, unet_side, device="meta"),
            torch.tensor([500], device="meta"),
            encoder_hidden_states=torch.empty(1, SD15_PROMPT_TOKENS, 768, device="meta"),
        )
    unet_flops = counter.get_total_flops()
    print(f"  SD1.5 UNet, 512x512 ({unet_side}x{unet_side} latents, {SD15_PROMPT_TOKENS} text tokens): "
          f"{unet_flops / 1e9:.1f} GFLOP (FlopCounterMode, meta)")  # fmt: skip
    sd15_report(unet_side)
    druid_report(tokens)
    sd35_report(side, device)
    flux_report(device)

    # ------------------------------------------------------------ a real run at the real widths (CPU)
    small_layers, small_side = 2, 32
    small_tokens = (small_side // SD3_MEDIUM["patch_size"]) ** 2
    print(f"\n## Real-width check on {device}: {small_layers} blocks, {small_side}x{small_side} latents "
          f"({small_tokens} image tokens), {SD3_PROMPT_TOKENS} text, {INSTANCES} instances")  # fmt: skip
    torch.manual_seed(0)
    started = time.perf_counter()
    small = layout_model(small_layers).to(device)
    latents, sigma, cond = inputs(small_side, SD3_PROMPT_TOKENS, INSTANCES, device)
    small_backbone = backbone_flops(small_tokens, SD3_PROMPT_TOKENS, small_layers)
    small_branch = branch_flops(small_tokens, INSTANCES, small_layers, small.config)
    check("backbone (real tensors)", small_backbone, measured_flops(small, latents, sigma, cond, False))
    check("backbone + adapter + IDM (real tensors)", small_backbone + small_branch,
          measured_flops(small, latents, sigma, cond, True))  # fmt: skip
    print(f"  built and counted in {time.perf_counter() - started:.1f} s")

    autocast = torch.bfloat16 if device == "cuda" else None
    calls = {}
    for layout_on, branch in ((False, "backbone"), (True, "idm")):
        for name, call in sd3_steps(small, latents, sigma, cond, layout_on, autocast).items():
            calls[f"{name} {branch}"] = call
    seconds = fastest(calls, args.repeats, device)
    fwd_base, fwd_idm = seconds["forward backbone"], seconds["forward idm"]
    step_base, step_idm = seconds["train step backbone"], seconds["train step idm"]
    flop_ratio = (small_backbone + small_branch) / small_backbone
    print(f"  forward    backbone {fwd_base:.3f} s, + adapter + IDM {fwd_idm:.3f} s "
          f"({fwd_idm / fwd_base:.2f}x; FLOP ratio {flop_ratio:.2f}x)")  # fmt: skip
    print(f"  train step backbone {step_base:.3f} s, + adapter + IDM + L_dis {step_idm:.3f} s "
          f"({step_idm / step_base:.2f}x)")  # fmt: skip
    del small
    miniature_report(args.mini_batch, args.mini_repeats)

    if device != "cuda":
        print("\nNo GPU: training steps at 1024 (SD3, FLUX.1-dev) / 512 and peak memory are not measured.")
        return
    # ------------------------------------------------------------ GPU: the paper's resolutions
    print("\n## GPU training steps (bf16 autocast, AdamW, batch 1)")
    for layout_on in (False, True):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.device("cuda"):
            full = layout_model()
        latents, sigma, cond = inputs(side, SD3_PROMPT_TOKENS, INSTANCES, "cuda")
        steps = sd3_steps(full, latents, sigma, cond, layout_on, torch.bfloat16)
        seconds = fastest(steps, args.repeats, "cuda")
        fwd, step = seconds["forward"], seconds["train step"]
        peak = torch.cuda.max_memory_allocated() / 2**30
        name = "SD3 + adapter + IDM + L_dis" if layout_on else "SD3-medium backbone"
        print(f"  {name:<28} 1024: forward {fwd:.3f} s, train step {step:.3f} s, peak {peak:.1f} GiB")
        del full, steps
    step, peak = time_sd15_gpu(args.repeats)
    print(f"  {'SD1.5 UNet':<28} 512: train step {step:.3f} s, peak {peak:.1f} GiB")
    print("\n## FLUX.1-dev + idruid on the GPU (frozen transformer, gradient checkpointing, bf16 autocast, "
          "AdamW over adapter + branches, batch 1)")  # fmt: skip
    for row in flux_step_times(FLUX_DEV, side, FLUX_PROMPT_TOKENS, args.repeats, "cuda"):
        print(row.line(side * VAE_FACTOR))


if __name__ == "__main__":
    main()
