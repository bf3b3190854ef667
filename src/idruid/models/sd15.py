"""The UNet layout-to-image model: diffusers ``UNet2DConditionModel`` (SD1.5) + layout adapter + IDM.

Appendix B: IDM sits at the 8x8 mid-block and 16x16 decoder cross-attention layers of SD1.5
(at 512 px, 64x64 latents); every other cross-attention layer is conditioned on the global
prompt only. Here those layers are found by structure, not by size: the mid block's and the
first decoder level with cross-attention's (``idm_layers``), which are exactly SD1.5's two at
any resolution and the 8x8 / 16x16 layers of the tiny 3-level UNet at 32x32.

The calling contract is the MM-DiT's (models/base.py): ``model(x_t, t, cond)`` returns the
predicted noise (the "eps" process: t is the DDPM timestep) and the attention maps for L_dis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from ..config import ModelConfig
from ..diffusion import EpsProcess
from ..errors import ConfigError
from ..model_dirs import CLIP_TOKENIZER, DIFFUSERS_MODEL, SCHEDULER, TRANSFORMERS_MODEL, load_diffusers_model
from .adapter import LayoutAdapter
from .base import Conditioning, LayoutModel
from .processors import LayoutCrossAttnProcessor, PromptAttnProcessor
from .registry import Backbone, BaseFolder
from .text_encoder import CachedTextEncoder, FrozenTextEncoder

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # every attention projection of the UNet


@dataclass
class SD15Network:
    """The sd15 backbone's own settings (``model.network``): the tiny UNet of the embedded world
    (3 levels by default, IDM at the mid block and the first cross-attention decoder level:
    SD1.5's 8x8 and 16x16 layers at 512 px, appendix B); with ``model.base_model`` the UNet of
    that folder is used instead."""

    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # channels per level
    unet_layers_per_block: int = 1
    num_heads: int = 4  # attention heads

    def __post_init__(self) -> None:
        if len(self.unet_channels) < 2:
            raise ConfigError(
                f"model.network.unet_channels needs at least 2 levels, got {self.unet_channels}"
            )


# A stable-diffusion-v1-5 folder (StableDiffusionPipeline's layout; no safety checker needed)
SD15_FOLDER = BaseFolder(
    what="SD1.5 (diffusers layout)",
    pipeline="StableDiffusionPipeline",
    network=(("unet", DIFFUSERS_MODEL), ("scheduler", SCHEDULER)),  # the noise schedule is its own
    codec=(("vae", DIFFUSERS_MODEL),),
    text=(("text_encoder", TRANSFORMERS_MODEL), ("tokenizer", CLIP_TOKENIZER)),  # CLIP-L, no projection
)


def build_unet(
    config: ModelConfig, network: SD15Network, text_dim: int, latent_side: int | None = None
) -> UNet2DConditionModel:
    """The tiny UNet of the embedded world (SD1.5's block pattern at ``unet_channels``), or the
    ``unet`` of a local SD1.5 diffusers folder."""
    if config.base_model is not None:
        return load_diffusers_model(UNet2DConditionModel, Path(config.base_model) / "unet")
    channels = list(network.unet_channels)
    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=config.resolution if latent_side is None else latent_side,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        block_out_channels=channels,
        layers_per_block=network.unet_layers_per_block,
        cross_attention_dim=text_dim,
        attention_head_dim=network.num_heads,  # in diffusers' UNet it sets the number of heads (legacy name)
        norm_num_groups=math.gcd(*channels, 8),
    )


def idm_layers(unet: UNet2DConditionModel) -> dict[str, int]:
    """The cross-attention processors that carry IDM, with each layer's downsampling factor:
    the mid block's and those of the first decoder level that has cross-attention."""
    factor = 2 ** sum(block.downsamplers is not None for block in unet.down_blocks)
    prefixes = {"mid_block.": factor}
    for index, block in enumerate(unet.up_blocks):
        if getattr(block, "attentions", None):
            prefixes[f"up_blocks.{index}."] = factor
            break
        if block.upsamplers is not None:
            factor //= 2
    return {
        name: prefixes[prefix]
        for name in unet.attn_processors
        for prefix in prefixes
        if name.startswith(prefix) and ".attn2." in name
    }


class LayoutUNetModel(LayoutModel):
    """SD1.5 (UNet, DDPM noise prediction) with the layout adapter and IDM where appendix B puts it."""

    backbone_attr = "unet"
    base_text_encoder = staticmethod(FrozenTextEncoder.from_pretrained)  # SD1.5's CLIP-L
    lora_defaults = LORA_TARGETS
    network_class = SD15Network

    def __init__(self, config: ModelConfig, text_encoder: CachedTextEncoder | None = None):
        super().__init__(config, text_encoder)
        self.process = EpsProcess.from_folder(config.base_model) if config.base_model else EpsProcess()
        text_dim = self.text_encoder.hidden_size
        self.unet = build_unet(config, self.network, text_dim, self.latent_shape[-1])
        if self.unet.config.cross_attention_dim != text_dim:
            raise ValueError(
                f"the UNet's cross_attention_dim {self.unet.config.cross_attention_dim} differs from the "
                f"text encoder's width {text_dim} (model.text_encoder must be the base model's)"
            )
        self.adapter = LayoutAdapter(text_dim, text_dim, config.fourier_freqs, self.text_encoder.pooled_size)
        layers = idm_layers(self.unet)
        modules = dict(self.unet.named_modules())
        processors = {}
        for name in self.unet.attn_processors:
            if name not in layers:
                processors[name] = PromptAttnProcessor()
                continue
            attn = modules[name.removesuffix(".processor")]
            processors[name] = LayoutCrossAttnProcessor(
                attn.inner_dim,
                attn.heads,
                text_dim,
                layers[name],
                config.use_idm,
                config.idm_hidden,
                config.geometry_rank,
                config.share_query,
            )
        self.unet.set_attn_processor(processors)
        self._finish_backbone()

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        layout_on: bool = True,
        record_attention: bool = False,
    ) -> tuple[torch.Tensor, list]:
        """Predict the noise in x_t (B, C, H, W) at DDPM timesteps t (B,).

        Returns (eps_pred, attention_maps); attention_maps holds one (attn_pos, attn_neg, grid) of
        (B, N, heads, h * w) maps per IDM layer when ``record_attention`` (for L_dis).
        """
        x_t, cond = self.backbone_inputs(x_t, cond)
        # the input's grid; each IDM layer takes its own view of it (LayoutCondition.at)
        layout = self.layout_condition(cond, x_t.shape[-2:], 1, record_attention) if layout_on else None
        out = self.unet(
            x_t,
            t,
            encoder_hidden_states=cond.prompt_hidden,
            cross_attention_kwargs={"layout": layout},
            return_dict=False,
        )[0]
        return out, (layout.attention_maps if layout is not None else [])


BACKBONE = Backbone(
    name="sd15",
    model_class=LayoutUNetModel,
    # the UNet, and the noise schedule it was trained with
    base_configs=("unet/config.json", "scheduler/scheduler_config.json"),
    base_folder=SD15_FOLDER,
    preset="shapes-sd15",
    folder_presets=("sd15",),
)
