"""The FLUX.1 layout-to-image model: diffusers ``FluxTransformer2DModel`` + layout adapter + IDM.

The calling contract shared with the other backbones (models/base.py): ``model(x_t, sigma, cond)``
takes VAE latents x_t (B, 16, h, w) and returns the velocity v = noise - x_0 (FLUX's scheduler
steps x + (sigma_next - sigma) v, the same flow as SD3's) and the attention maps for L_dis. What
FLUX does differently is kept inside the model, as ``FluxPipeline`` does it:

- each 2x2 block of latent pixels is one token of 4C values (``pack_latents`` /
  ``unpack_latents``, FluxPipeline's ``_pack_latents`` / ``_unpack_latents``), so a token covers
  16x16 image pixels and the IDM's box masks live on that packed grid (patch 2 latent pixels);
- rotary position ids: (0, row, column) per image token, zeros per text token;
- ``timestep=sigma`` (the transformer multiplies it, and the distilled guidance, by 1000);
- the time grid (``FluxProcess``): FluxPipeline's sigmas linspace(1, 1/steps, steps) through the
  folder's scheduler with the resolution-dependent shift mu (``use_dynamic_shifting``);
- FLUX.1-dev's guidance distillation: the sampling setting ``guidance`` reaches the transformer's
  ``guidance`` input through ``Conditioning.guidance`` (one row, cfg 1); schnell has none.

The layout branch sits on every double-stream block (``FluxLayoutJointProcessor``: diffusers'
``FluxAttnProcessor`` with text tokens first, plus the branch on the image part) and, as
``FluxNetwork.single_blocks`` says, on the single-stream blocks, whose one sequence is
[text; image] (``FluxLayoutSingleProcessor`` splits it). The same class builds the miniature of
the embedded world (``FluxNetwork``'s sizes, the shapes-flux presets) or loads the transformer,
scheduler, VAE and text encoders of a local FLUX.1-dev / schnell folder.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from ..config import ModelConfig
from ..diffusion import FLOW_OUTPUTS, FlowProcess, flow_velocity
from ..errors import ConfigError
from ..model_dirs import DIFFUSERS_MODEL, SCHEDULER, load_diffusers_model
from .adapter import LayoutAdapter
from .base import Conditioning, LayoutModel
from .flux_text import CLIP_PARTS, T5_PARTS, FluxTextEncoder
from .idm import LayoutBranch, LayoutCondition
from .registry import Backbone, BaseFolder
from .text_encoder import CachedTextEncoder

__all__ = ["FluxLayoutModel", "FluxNetwork", "FluxProcess", "pack_latents", "unpack_latents", "BACKBONE"]

PACK = 2  # latent pixels per token side (FluxPipeline's 2x2 packing)
SINGLE_BLOCKS = ("idm", "layout", "none")
BRANCH_POSITIONS = ("none", "rotary")
# FLUX.1-dev's scheduler/scheduler_config.json: the miniature's time grid (schnell's turns
# use_dynamic_shifting off, at shift 1)
FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


@dataclass
class FluxNetwork:
    """The flux backbone's own settings (``model.network``). The sizes build the miniature of the
    embedded world; with ``model.base_model`` the transformer of that folder is used instead."""

    num_layers: int = 2  # double-stream (joint attention) blocks; FLUX.1: 19
    num_single_layers: int = 2  # single-stream blocks; FLUX.1: 38
    num_heads: int = 4
    head_dim: int = 32  # split into FLUX's three rotary axes (16, 56, 56 of 128)
    guidance_embeds: bool = False  # the miniature's guidance input (a folder's config decides its own)
    # the layout branch on the single-stream blocks: "idm" (IDM + IDC, as on the double-stream
    # blocks), "layout" (the adapter-only branch) or "none" (diffusers' own attention there).
    # "none": the paper puts IDM on the joint-attention blocks (4.1), which are FLUX's double-stream
    # ones; the 38 single-stream blocks would triple the branch's weights (runs/notes-flux.md)
    single_blocks: str = "none"
    # what the layout branch's image queries know of their position: "none" (the token's features
    # only, as the paper's branch on SD3, whose tokens carry sin-cos positions) or "rotary" (FLUX's
    # own rotary embedding of the token's (0, row, column) id; the instance tokens sit at id 0, as
    # FLUX's text tokens do). FLUX's image tokens carry no absolute position, so an adapter-only
    # branch (use_idm false) needs "rotary" to place anything; IDM gets positions from its box masks
    branch_positions: str = "none"
    # the distilled guidance scale a guidance-embedding transformer gets where the conditioning
    # carries none (stage-1 training; sampling without the setting guidance): FLUX.1-dev's 3.5
    guidance: float = 3.5
    # the backbone's raw output: "velocity" (FLUX's own, real weights) or "x0" (the clean latents,
    # turned into v = (x_t - x0) / sigma: for the miniature's 48 values per token, as sd3's output)
    output: str = "velocity"

    def __post_init__(self) -> None:
        if self.single_blocks not in SINGLE_BLOCKS:
            raise ConfigError(
                f"model.network.single_blocks '{self.single_blocks}': "
                f"expected one of {', '.join(SINGLE_BLOCKS)}"
            )
        if self.branch_positions not in BRANCH_POSITIONS:
            raise ConfigError(
                f"model.network.branch_positions '{self.branch_positions}': "
                f"expected one of {', '.join(BRANCH_POSITIONS)}"
            )
        if self.output not in FLOW_OUTPUTS:
            choices = ", ".join(FLOW_OUTPUTS)
            raise ConfigError(f"model.network.output '{self.output}': expected one of {choices}")
        if self.head_dim < 8 or self.head_dim % 2:
            raise ConfigError(
                f"model.network.head_dim must be even and >= 8 (rotary axes), got {self.head_dim}"
            )


# A FLUX.1-dev / FLUX.1-schnell diffusers folder (FluxPipeline's layout)
FLUX_FOLDER = BaseFolder(
    what="FLUX.1 (diffusers layout)",
    pipeline="FluxPipeline",
    # the scheduler's config gives the time grid (dynamic shift on dev, off on schnell)
    network=(("transformer", DIFFUSERS_MODEL), ("scheduler", SCHEDULER)),
    codec=(("vae", DIFFUSERS_MODEL),),
    text=CLIP_PARTS + T5_PARTS,  # CLIP-L (pooled) and T5: FluxTextEncoder
)

# What LoRA adapts by default: the attention projections of both block kinds (the single-stream
# blocks' attention has to_q / to_k / to_v only, its output goes through the block's proj_out)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


# ----------------------------------------------------------------------------- packing and positions


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, h/2 * w/2, 4C) tokens, row-major over the 2x2 blocks, each
    token's values ordered (channel, row in block, column in block): FluxPipeline's packing."""
    batch, channels, height, width = latents.shape
    if height % PACK or width % PACK:
        raise ValueError(f"FLUX packs 2x2 latent pixels per token: latents of {height}x{width} do not split")
    blocks = latents.view(batch, channels, height // PACK, PACK, width // PACK, PACK)
    return blocks.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * PACK * PACK)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``pack_latents``: (B, h/2 * w/2, 4C) -> (B, C, h, w)."""
    batch, _, values = tokens.shape
    blocks = tokens.view(batch, height // PACK, width // PACK, values // (PACK * PACK), PACK, PACK)
    return blocks.permute(0, 3, 1, 4, 2, 5).reshape(batch, values // (PACK * PACK), height, width)


def image_ids(grid: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(h * w, 3) rotary ids of the packed image tokens: (0, row, column), row-major."""
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], device=device), torch.arange(grid[1], device=device), indexing="ij"
    )
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).flatten(0, 1).to(dtype)


def text_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, 3) rotary ids of the text tokens: all zeros (FluxPipeline's text_ids)."""
    return torch.zeros(length, 3, device=device, dtype=dtype)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX's split of a head into rotary axes (index, row, column), 16 / 56 / 56 of 128: each even."""
    side = (head_dim - head_dim // 8) // 2 // 2 * 2
    return head_dim - 2 * side, side, side


# ----------------------------------------------------------------------------- time grid


class FluxProcess(FlowProcess):
    """Rectified flow on FluxPipeline's time grid: sigmas linspace(1, 1/steps, steps) through the
    folder's ``FlowMatchEulerDiscreteScheduler``, whose exponential time shift with
    mu = calculate_shift(image tokens) (``use_dynamic_shifting``: FLUX.1-dev) is SD3's shift
    s t / (1 + (s - 1) t) at s = exp(mu). The sampling setting ``shift`` is an extra shift on top
    of it: shifts compose by multiplying, so shift s gives the grid of exp(mu) * s (1: FluxPipeline's
    own grid)."""

    def __init__(self, scheduler_config: dict, image_tokens: int):
        self.scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        self.image_tokens = image_tokens

    @property
    def mu(self) -> float:
        """The resolution-dependent shift of FluxPipeline for this many image tokens (its own rule;
        imported here, not with the module: every checkpoint opening imports each backbone's module)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler_config
        return calculate_shift(
            self.image_tokens,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )

    @property
    def base_shift(self) -> float:
        """The shift s of the folder's grid: exp(mu) when it shifts by resolution, else its own."""
        if self.scheduler_config.get("use_dynamic_shifting"):
            return math.exp(self.mu)
        return float(self.scheduler_config.get("shift", 1.0))

    def make_scheduler(self, shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
        """The folder's scheduler; with an extra ``shift``, the static scheduler of the composed
        shift (the grid is then base_shift * shift's)."""
        config = dict(self.scheduler_config)
        if shift != 1.0:
            config.update(use_dynamic_shifting=False, shift=self.base_shift * shift)
        with torch.device("cpu"):
            return FlowMatchEulerDiscreteScheduler.from_config(config)

    def scheduler_times(self, scheduler, steps: int) -> torch.Tensor:
        """(steps + 1,) sigmas of ``scheduler`` set as FluxPipeline sets it, ending at 0."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=self.mu)
        return scheduler.sigmas.float().clone()


# ----------------------------------------------------------------------------- attention


def flux_attention(
    attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None, rotary
) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' ``FluxAttnProcessor`` up to its output projections: q / k RMS norms, text tokens
    (``encoder_hidden_states``, double-stream blocks) first, rotary embedding on the whole sequence.
    Returns (features (B, S, C) of [text; image] before any output projection, queries
    (B, heads, S_own, d) of ``hidden_states``' tokens after the q-norm and before the rotary
    embedding: the position-free queries a shared-query layout branch reads)."""
    if getattr(attn, "fused_projections", False):
        raise NotImplementedError("IDM on a FLUX attention with fused projections (unfuse_qkv_projections)")

    def heads(x):  # (B, S, C) -> (B, S, heads, d)
        return x.unflatten(-1, (-1, attn.head_dim))

    query = attn.norm_q(heads(attn.to_q(hidden_states)))
    key = attn.norm_k(heads(attn.to_k(hidden_states)))
    value = heads(attn.to_v(hidden_states))
    own_query = query.transpose(1, 2)
    if encoder_hidden_states is not None:
        text_query = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
        text_key = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
        text_value = heads(attn.add_v_proj(encoder_hidden_states))
        query, key, value = (
            torch.cat(pair, dim=1) for pair in ((text_query, query), (text_key, key), (text_value, value))
        )
    if rotary is not None:
        query = apply_rotary_emb(query, rotary, sequence_dim=1)
        key = apply_rotary_emb(key, rotary, sequence_dim=1)
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2).flatten(2).to(query.dtype), own_query


def _add_branch(
    branch: _FluxBranchProcessor, hidden, features, out, layout: LayoutCondition, query, rotary
) -> torch.Tensor:
    """``out`` (B, P, C) plus the layout branch, for the samples whose layout is on. ``rotary``:
    the image tokens' (cos, sin), the last P rows of the rotary embedding diffusers passes."""
    place = None
    if branch.rotate_queries:
        image_rotary = tuple(part[-hidden.shape[1] :] for part in rotary)

        def place(queries: torch.Tensor) -> torch.Tensor:  # (B, h, P, d), FLUX's rotation
            return apply_rotary_emb(queries, image_rotary, sequence_dim=2)

    added = branch.instance_branch(hidden, features, layout, query, place)
    return out + layout.enabled.to(added.dtype)[:, None, None] * added


class _FluxBranchProcessor(LayoutBranch):
    """What both FLUX layout processors share: the call diffusers makes, and where the branch's
    image queries get their positions (``FluxNetwork.branch_positions``)."""

    def __init__(self, *args, rotate_queries: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.rotate_queries = rotate_queries

    # diffusers passes a joint_attention_kwargs entry (``layout``) to a processor only if its
    # __call__ names it
    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        image_rotary_emb=None,
        layout=None,
    ):
        return super().__call__(
            attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, layout
        )


class FluxLayoutJointProcessor(_FluxBranchProcessor):
    """A double-stream block's joint attention + the layout branch on its image part."""

    def forward(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        image_rotary_emb=None,
        layout=None,
    ):
        if attention_mask is not None or encoder_hidden_states is None:
            raise NotImplementedError("a FLUX double-stream block passes text tokens and no attention mask")
        features, query = flux_attention(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        text = encoder_hidden_states.shape[1]
        image = features[:, text:]  # e_{n+1}: the prompt-enhanced image features
        image_out = attn.to_out[1](attn.to_out[0](image.contiguous()))
        if layout is not None:
            image_out = _add_branch(self, hidden_states, image, image_out, layout, query, image_rotary_emb)
        return image_out, attn.to_add_out(features[:, :text].contiguous())


class FluxLayoutSingleProcessor(_FluxBranchProcessor):
    """A single-stream block's attention over [text; image] + the layout branch on the image
    tokens, the last h * w of the sequence; the block's proj_out projects the sum (its attention
    has no output projection of its own).

    ``record_maps`` False: an adapter-only branch beside IDM branches records no attention maps,
    which L_dis would average in as constant terms (R+ = R- there), diluting the IDM layers'."""

    def __init__(self, *args, record_maps: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.record_maps = record_maps

    def forward(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        image_rotary_emb=None,
        layout=None,
    ):
        if attention_mask is not None or encoder_hidden_states is not None:
            raise NotImplementedError("a FLUX single-stream block passes one sequence and no attention mask")
        features, query = flux_attention(attn, hidden_states, None, image_rotary_emb)
        if layout is None:
            return features
        text = features.shape[1] - layout.grid[0] * layout.grid[1]
        image = features[:, text:]
        view = layout if self.record_maps else replace(layout, record_attention=False, attention_maps=[])
        image = _add_branch(
            self, hidden_states[:, text:], image, image, view, query[:, :, text:], image_rotary_emb
        )
        return torch.cat([features[:, :text], image], dim=1)


class FluxPlainProcessor(FluxAttnProcessor):
    """diffusers' own attention for the single-stream blocks without a layout branch; it names
    ``layout`` so that the layout passed to every block is dropped without a warning."""

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        image_rotary_emb=None,
        layout=None,
    ):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


# ----------------------------------------------------------------------------- the model


def build_transformer(
    config: ModelConfig, network: FluxNetwork, text_dim: int, pooled_dim: int
) -> FluxTransformer2DModel:
    """The miniature of ``network``'s sizes, or the transformer of a local FLUX.1 folder."""
    if config.base_model is not None:
        return load_diffusers_model(FluxTransformer2DModel, Path(config.base_model) / "transformer")
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=config.in_channels * PACK * PACK,  # one token per 2x2 latent pixels
        num_layers=network.num_layers,
        num_single_layers=network.num_single_layers,
        attention_head_dim=network.head_dim,
        num_attention_heads=network.num_heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=network.guidance_embeds,
        axes_dims_rope=rope_axes(network.head_dim),
    )


def scheduler_config(config: ModelConfig) -> dict:
    """The base folder's scheduler config, or FLUX.1-dev's for the miniature."""
    if config.base_model is None:
        return dict(FLUX_SCHEDULER)
    return json.loads((Path(config.base_model) / "scheduler" / "scheduler_config.json").read_text())


class FluxLayoutModel(LayoutModel):
    """FLUX.1 (double- and single-stream MM-DiT, rectified flow) with the layout adapter and the
    layout branch on its double-stream blocks (and single-stream ones: ``single_blocks``)."""

    backbone_attr = "transformer"
    base_text_encoder = staticmethod(FluxTextEncoder.from_pretrained)
    lora_defaults = LORA_TARGETS
    network_class = FluxNetwork

    def __init__(self, config: ModelConfig, text_encoder: CachedTextEncoder | None = None):
        super().__init__(config, text_encoder)
        network, side = self.network, self.latent_shape[-1]
        if side % PACK:
            raise ConfigError(
                f"model.resolution {config.resolution} gives {side}x{side} latents; FLUX packs 2x2 latent "
                f"pixels per token: use a multiple of {PACK * self.codec.downsample}"
            )
        if network.single_blocks == "idm" and not config.use_idm:
            raise ConfigError("model.network.single_blocks=idm needs model.use_idm=true (or 'layout')")
        if not config.use_idm and network.branch_positions == "none":
            warnings.warn(
                "an adapter-only layout branch on FLUX with model.network.branch_positions=none "
                "cannot place instances (FLUX's image tokens carry no absolute position): "
                "set it to rotary",
                UserWarning,
                stacklevel=2,
            )
        text_dim, pooled_dim = self.text_encoder.hidden_size, self.text_encoder.pooled_size
        self.transformer = build_transformer(config, network, text_dim, pooled_dim)
        self._check_text_widths(text_dim, pooled_dim)
        self.process = FluxProcess(scheduler_config(config), image_tokens=(side // PACK) ** 2)
        # FLUX.1-dev takes the distilled guidance scale as an input (and true CFG, as FluxPipeline's
        # true_cfg_scale); schnell and the miniature take two-row CFG only
        self.guidance = ("cfg", "distilled") if self.transformer.config.guidance_embeds else ("cfg",)
        inner = self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
        self.adapter = LayoutAdapter(text_dim, inner, config.fourier_freqs, pooled_dim)
        self.transformer.set_attn_processor(self._processors(inner))
        self._finish_backbone()

    def _check_text_widths(self, text_dim: int, pooled_dim: int) -> None:
        own = self.transformer.config
        if (own.joint_attention_dim, own.pooled_projection_dim) != (text_dim, pooled_dim):
            raise ConfigError(
                f"the FLUX transformer reads text {own.joint_attention_dim} wide (pooled "
                f"{own.pooled_projection_dim}) but the text encoder gives {text_dim} ({pooled_dim}): "
                "model.text_encoder must be the base model's (base)"
            )

    def _processors(self, inner: int) -> dict:
        """Every attention's processor: the layout branch on the double-stream blocks, and on the
        single-stream ones as ``single_blocks`` says."""
        config, heads = self.config, self.transformer.config.num_attention_heads

        rotate = self.network.branch_positions == "rotary"

        def branch(kind: type, use_idm: bool, **extra) -> LayoutBranch:
            sizes = (inner, heads, inner, use_idm, config.idm_hidden, PACK, config.geometry_rank)
            return kind(*sizes, config.share_query, rotate_queries=rotate, **extra)

        single = self.network.single_blocks
        single_idm = single == "idm"
        processors = {}
        for name in self.transformer.attn_processors:
            if name.startswith("transformer_blocks."):
                processors[name] = branch(FluxLayoutJointProcessor, config.use_idm)
            elif single == "none":
                processors[name] = FluxPlainProcessor()
            else:  # maps only from branches of the double-stream blocks' kind (L_dis reads IDM maps)
                record = single_idm == config.use_idm
                processors[name] = branch(FluxLayoutSingleProcessor, single_idm, record_maps=record)
        return processors

    @property
    def backbone_channels(self) -> int:
        """The latent channels of a token's 2x2 block: the transformer's in_channels / 4."""
        return self.transformer.config.in_channels // (PACK * PACK)

    @property
    def token_grid(self) -> tuple[int, int]:
        side = self.latent_shape[-1] // PACK
        return side, side

    # ------------------------------------------------------------------ prediction
    def forward(
        self,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        layout_on: bool = True,
        record_attention: bool = False,
    ) -> tuple[torch.Tensor, list]:
        """Predict the velocity for latents x_t (B, C, h, w) at noise levels sigma (B,).

        Returns (v_pred, attention_maps); attention_maps holds one (attn_pos, attn_neg, grid) of
        (B, N, heads, h/2 * w/2) maps per IDM layer when ``record_attention``, else it is empty.
        """
        x_t, cond = self.backbone_inputs(x_t, cond)
        height, width = x_t.shape[-2:]
        grid = (height // PACK, width // PACK)
        layout = self.layout_condition(cond, grid, PACK, record_attention) if layout_on else None
        out = self.transformer(
            hidden_states=pack_latents(x_t),
            encoder_hidden_states=cond.prompt_hidden,
            pooled_projections=cond.prompt_pooled,
            timestep=sigma,  # FluxPipeline passes t / 1000 = sigma; the transformer multiplies by 1000
            img_ids=image_ids(grid, x_t.device, x_t.dtype),
            txt_ids=text_ids(cond.prompt_hidden.shape[1], x_t.device, x_t.dtype),
            guidance=self._guidance(cond, len(x_t), x_t.device),
            joint_attention_kwargs=None if layout is None else {"layout": layout},
            return_dict=False,
        )[0]
        out = unpack_latents(out, height, width)
        return self._velocity(out, x_t, sigma), (layout.attention_maps if layout is not None else [])

    def _guidance(self, cond: Conditioning, batch: int, device) -> torch.Tensor | None:
        """The transformer's guidance input (B,): the conditioning's distilled scale, else the
        network's default; None for a transformer without a guidance embedding."""
        if not self.transformer.config.guidance_embeds:
            if cond.guidance is not None:
                raise ValueError(
                    "this FLUX transformer has no guidance embedding (schnell): give no guidance"
                )
            return None
        if cond.guidance is None:
            return torch.full((batch,), self.network.guidance, device=device)
        return cond.guidance.float()

    def _velocity(self, out: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The backbone output as a velocity (idruid.diffusion.flow_velocity, by ``output``)."""
        return flow_velocity(self.network.output, out, x_t, sigma)


BACKBONE = Backbone(
    name="flux",
    model_class=FluxLayoutModel,
    # the transformer's config, and the scheduler's: the time grid depends on it
    base_configs=("transformer/config.json", "scheduler/scheduler_config.json"),
    base_folder=FLUX_FOLDER,
    preset="shapes-flux",
    folder_presets=("flux-dev", "flux-schnell"),
)
