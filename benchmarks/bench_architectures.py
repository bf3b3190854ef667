"""Real-scale architectures: SD3-medium's MM-DiT, SD3.5-medium's and SD3.5-large's, and SD1.5's UNet
built with random weights on the ``meta`` device (no download, no memory), their parameter counts,
and what idruid's layout adapter + IDM add to each in parameters and in FLOPs per forward: the
MM-DiTs at 1024x1024 (128x128 latents, patch 2: 4096 image tokens, 333 prompt tokens, 10
instances), the UNet at 512x512 (64x64 latents, 77 prompt tokens, 10 instances; IDM at its 8x8
mid block and 16x16 decoder). For SD3.5-medium it also counts the rejected alternative of an IDM
on the second, image-only attention (attn2) of its 13 dual-attention blocks too.

    python benchmarks/bench_architectures.py [--threads 2] [--repeats 3] [--device auto|cpu|cuda]

FLOPs count matrix products only (2 per multiply-add; linear layers, convolutions, attention),
the convention of ``torch.utils.flop_counter.FlopCounterMode``; elementwise work is left out. The
analytic count (``backbone_flops``, ``branch_flops``) is checked against FlopCounterMode twice:
at full size on the meta device, and on a smaller model with the real widths (2 blocks, 32x32
latents) that really runs (on the CPU, or the GPU if there is one). The script stops if a count
disagrees.

On a GPU it also times a training step at the paper's resolutions (SD3: 1024, SD1.5: 512; bf16
autocast, AdamW) with its peak memory; on the CPU it times the small real-width model instead.
Results go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import torch
from diffusers import SD3Transformer2DModel, UNet2DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from idruid.config import ModelConfig
from idruid.losses import add_noise, flow_matching_loss, idc_loss
from idruid.models import base, sd3, sd15
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
    """Stands in for a VAE (SD3's: 16 latent channels, SD1.5's: 4), downsampling 8x."""

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


def branch_flops(
    image_tokens: int, instances: int, num_layers: int, model_config: ModelConfig, arch: dict = SD3_MEDIUM
) -> int:
    """Matrix-product FLOPs the layout adapter + IDM add to one forward (batch 1; tokens
    [null, layout] per instance, the default two-token path of LayoutBranch); ``num_layers``
    counts the IDM layers."""
    if model_config.caption_max_length != 0 or not model_config.use_idm:
        raise ValueError("branch_flops counts the default two-token IDM path only")
    d = arch["num_attention_heads"] * arch["attention_head_dim"]
    p, n, h, r = image_tokens, instances, model_config.idm_hidden, model_config.geometry_rank
    fourier = 4 * 2 * model_config.fourier_freqs
    pixels_per_token = arch["patch_size"] ** 2
    adapter = 2 * n * ((fourier + RealTextWidths.pooled_size) * d + d * d + fourier * d)
    projections = 1 if model_config.share_query else 2  # to_out, and to_q unless the query is shared
    per_block = (
        2
        * (
            projections * p * d * d  # to_q on the image tokens (unless shared), to_out
            + 2 * n * d * 3 * d  # keys, values and refined keys of the 2 tokens of each instance
            + p * d * n  # each pixel's logit for each instance's layout token
            + n * p * d  # the global feature's mean inside each box
            + (n + 1) * (3 * d * h + h * h + 3 * h * h + h * h + h * d)  # IDM: describe, interact, alpha
            + p * 2 * n * d  # composing the instance values with the masks
            + n * d * r
            + n * p * 6 * pixels_per_token * r
            + p * r * d  # pixel geometry, gated
        )
        + 4 * (n + 1) ** 2 * h
    )  # IDM's self-attention over the n + 1 features
    return adapter + num_layers * per_block


# ---------------------------------------------------------------------- measured FLOPs
def inputs(image_side: int, text_tokens: int, instances: int, device, dtype=torch.float32):
    """Latents (1, 16, side, side), sigma and a Conditioning with instances boxes in a row."""
    latents = torch.randn(1, SD3_MEDIUM["in_channels"], image_side, image_side, device=device, dtype=dtype)
    sigma = torch.full((1,), 0.7, device=device)
    x0s = torch.arange(instances, dtype=torch.float32) / instances
    boxes = torch.stack([x0s, x0s * 0.5, x0s + 1.0 / instances, x0s * 0.5 + 0.5], dim=-1)[None]
    width, pooled = RealTextWidths.hidden_size, RealTextWidths.pooled_size
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
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
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

    if device != "cuda":
        print("\nNo GPU: training steps at 1024 / 512 and peak memory are not measured.")
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


if __name__ == "__main__":
    main()
