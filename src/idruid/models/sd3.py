"""The MM-DiT layout-to-image model: diffusers ``SD3Transformer2DModel`` + layout adapter + IDM.

The calling contract shared with the UNet (models/base.py): ``model(x_t, sigma, cond)`` returns
the velocity v = noise - x_0 ("flow" process, t = sigma, 1 = noise) and the attention maps for
L_dis. The same class builds the tiny embedded backbone or loads the transformer of a local SD3,
SD3.5-medium or SD3.5-large diffusers folder (``ModelConfig.base_model``; presets sd3-medium,
sd35-medium, sd35-large). IDM sits on every joint-attention block (4.1), one per block: the
second, image-only attention of SD3.5-medium's first blocks (``attn2``, MMDiT-X) keeps diffusers'
own attention (``ImageAttnProcessor``), since its output attended to no prompt token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import Attention

from ..config import ModelConfig
from ..diffusion import FLOW_OUTPUTS, FlowProcess, flow_velocity
from ..errors import ConfigError
from ..model_dirs import DIFFUSERS_MODEL, load_diffusers_model
from .adapter import LayoutAdapter
from .base import Conditioning, LayoutModel
from .processors import ImageAttnProcessor, LayoutJointAttnProcessor
from .registry import Backbone, BaseFolder
from .sd3_text import CLIP_PARTS, T5_PARTS, SD3TextEncoder
from .text_encoder import CachedTextEncoder

__all__ = [
    "SD3LayoutModel",
    "SD3Network",
    "Conditioning",
    "build_transformer",
    "joint_attention_processors",
    "LORA_TARGETS",
    "BACKBONE",
]



@dataclass
class SD3Network:
    """The sd3 backbone's own settings (``model.network``). The sizes build the tiny MM-DiT of the
    embedded world; with ``model.base_model`` the transformer of that folder is used instead."""

    patch_size: int = 4  # latent pixels per token side
    num_layers: int = 4  # MM-DiT blocks
    num_heads: int = 4  # attention heads
    head_dim: int = 32
    # what the backbone's raw output is; the model always returns a velocity. "velocity": SD3's own
    # parameterisation (real weights). "x0": the clean image, turned into v = (x_t - x0) / sigma,
    # for pixel space with big patches (4x4x3 = 48 values per token into a 128-wide network), where
    # a velocity output has to copy the noise through the network (Li & He 2025, "JiT")
    output: str = "velocity"

    def __post_init__(self) -> None:
        if self.output not in FLOW_OUTPUTS:
            choices = ", ".join(FLOW_OUTPUTS)
            raise ConfigError(f"model.network.output '{self.output}': expected one of {choices}")


# A stable-diffusion-3-medium-diffusers folder (StableDiffusion3Pipeline's layout)
SD3_FOLDER = BaseFolder(
    what="SD3 (diffusers layout)",
    pipeline="StableDiffusion3Pipeline",
    network=(("transformer", DIFFUSERS_MODEL),),  # the flow grid is idruid's (shift: a sampling setting)
    codec=(("vae", DIFFUSERS_MODEL),),
    text=CLIP_PARTS + T5_PARTS,  # CLIP-L, CLIP-G (with projections) and T5: SD3TextEncoder
)


def build_transformer(
    config: ModelConfig, network: SD3Network, text_dim: int, pooled_dim: int, latent_side: int | None = None
) -> SD3Transformer2DModel:
    """The tiny MM-DiT of the embedded world, or the transformer of a local SD3 folder."""
    if config.base_model is not None:
        return load_diffusers_model(SD3Transformer2DModel, Path(config.base_model) / "transformer")
    return SD3Transformer2DModel(**transformer_kwargs(config, network, text_dim, pooled_dim, latent_side))


def transformer_kwargs(
    config: ModelConfig, network: SD3Network, text_dim: int, pooled_dim: int, latent_side: int | None = None
) -> dict:
    """The ``SD3Transformer2DModel`` config of a backbone built from ``network``'s sizes."""
    inner = network.num_heads * network.head_dim
    side = config.resolution if latent_side is None else latent_side  # what the backbone sees
    tokens_per_side = side // network.patch_size
    return dict(
        sample_size=side,
        patch_size=network.patch_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        num_layers=network.num_layers,
        attention_head_dim=network.head_dim,
        num_attention_heads=network.num_heads,
        joint_attention_dim=text_dim,
        caption_projection_dim=inner,  # diffusers' SD3 transformer needs heads * head_dim here
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=max(tokens_per_side, 8),
    )


# What LoRA adapts by default: the attention projections of diffusers' SD3 blocks (image stream
# to_q / to_k / to_v / to_out.0, text stream add_*_proj / to_add_out; the last block has no to_add_out)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def joint_attention_processors(transformer: SD3Transformer2DModel) -> list[str]:
    """The processor names of the joint attentions (those that also take the prompt tokens: one
    per block), where IDM goes; SD3.5-medium's image-only ``attn2`` is not one of them."""
    return [
        f"{name}.processor"
        for name, module in transformer.named_modules()
        if isinstance(module, Attention) and module.added_kv_proj_dim is not None
    ]


def sd3_text_encoders(folder: Path) -> CachedTextEncoder:
    """SD3's three text encoders (CLIP-L, CLIP-G, T5) from its diffusers folder."""
    return SD3TextEncoder.from_pretrained(folder)


class SD3LayoutModel(LayoutModel):
    """SD3 / SD3.5 (MM-DiT, rectified flow) with the layout adapter and IDM on every joint-attention
    block; any other attention (SD3.5-medium's ``attn2``) stays diffusers' own."""

    backbone_attr = "transformer"
    base_text_encoder = staticmethod(sd3_text_encoders)
    lora_defaults = LORA_TARGETS
    network_class = SD3Network
    # two-row CFG, and skip-layer guidance (the sampling setting skip_layers: the conditional row
    # again with some blocks left out, StableDiffusion3Pipeline's skip_guidance_layers)
    guidance = ("cfg", "skip-layer")

    def __init__(self, config: ModelConfig, text_encoder: CachedTextEncoder | None = None):
        super().__init__(config, text_encoder)
        self.process = FlowProcess()
        text_dim = self.text_encoder.hidden_size
        self.transformer = build_transformer(
            config, self.network, text_dim, self.text_encoder.pooled_size, self.latent_shape[-1]
        )
        inner = self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
        self.adapter = LayoutAdapter(text_dim, inner, config.fourier_freqs, self.text_encoder.pooled_size)
        joint = set(joint_attention_processors(self.transformer))
        self.transformer.set_attn_processor(
            {
                name: LayoutJointAttnProcessor(
                    inner,
                    self.transformer.config.num_attention_heads,
                    inner,
                    config.use_idm,
                    config.idm_hidden,
                    self.transformer.config.patch_size,
                    config.geometry_rank,
                    config.share_query,
                )
                if name in joint
                else ImageAttnProcessor()
                for name in self.transformer.attn_processors
            }
        )
        self._finish_backbone()

    # ------------------------------------------------------------------ prediction
    @property
    def token_grid(self) -> tuple[int, int]:
        side = self.latent_shape[-1] // self.transformer.config.patch_size
        return side, side

    def forward(
        self,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        layout_on: bool = True,
        record_attention: bool = False,
        skip_layers: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, list]:
        """Predict the velocity for x_t (B, C, H, W) at noise levels sigma (B,).

        Returns (v_pred, attention_maps); attention_maps holds one (attn_pos, attn_neg, grid) of
        (B, N, heads, HW) maps per block when ``record_attention`` (for L_dis), else it is empty.
        ``skip_layers``: transformer blocks to leave out (skip-layer guidance, the sampling
        setting ``skip_layers``; diffusers' ``skip_layers``).
        """
        x_t, cond = self.backbone_inputs(x_t, cond)
        patch = self.transformer.config.patch_size
        grid = (x_t.shape[-2] // patch, x_t.shape[-1] // patch)
        layout = self.layout_condition(cond, grid, patch, record_attention) if layout_on else None
        out = self.transformer(
            hidden_states=x_t,
            encoder_hidden_states=cond.prompt_hidden,
            pooled_projections=cond.prompt_pooled,
            timestep=sigma * 1000.0,  # diffusers' SD3 transformer takes the timestep as sigma * 1000
            joint_attention_kwargs=None if layout is None else {"layout": layout},
            return_dict=False,
            skip_layers=None if skip_layers is None else list(skip_layers),
        )[0]
        return self._velocity(out, x_t, sigma), (layout.attention_maps if layout is not None else [])

    def _velocity(self, out: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The backbone output as a velocity (idruid.diffusion.flow_velocity, by ``output``)."""
        return flow_velocity(self.network.output, out, x_t, sigma)


BACKBONE = Backbone(
    name="sd3",
    model_class=SD3LayoutModel,
    base_configs=("transformer/config.json",),
    base_folder=SD3_FOLDER,
    preset="shapes",
    folder_presets=("sd3-medium", "sd35-medium", "sd35-large"),
)
