"""The MM-DiT layout-to-image model: diffusers ``SD3Transformer2DModel`` + layout adapter + IDM.

One calling contract for sampling, losses and (later) RL: ``model(x_t, sigma, cond)`` returns
the prediction named by ``model.prediction_type`` ("flow": the velocity v = noise - x_0).
Text encoding is separate (``encode_text``) because the text encoder is frozen and its outputs
are reused across all sampling steps. The same class builds the tiny embedded backbone or loads
the transformer of a local SD3 diffusers folder (``ModelConfig.base_model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from torch import nn

from ..config import ConfigError, ModelConfig
from ..layout import Layout, boxes_tensor
from .adapter import LayoutAdapter
from .idm import LayoutCondition, LayoutJointAttnProcessor
from .text_encoder import FrozenTextEncoder, load_embedded_text_encoder


@dataclass
class TextConditioning:
    """Frozen-text-encoder outputs and layout tensors for a batch of layouts."""

    prompt_hidden: torch.Tensor  # (B, Lp, Dt)
    prompt_pooled: torch.Tensor  # (B, Dt)
    caption_hidden: torch.Tensor  # (B, N, T, Dt)
    caption_pooled: torch.Tensor  # (B, N, Dt)
    caption_mask: torch.Tensor  # (B, N, T) bool
    boxes: torch.Tensor  # (B, N, 4)
    valid: torch.Tensor  # (B, N) bool
    enabled: torch.Tensor  # (B,) float: 0 drops the layout (classifier-free guidance, dropout)

    def to(self, device) -> TextConditioning:
        return TextConditioning(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @staticmethod
    def cat(parts: Sequence[TextConditioning]) -> TextConditioning:
        return TextConditioning(
            **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])}
        )

    def trimmed(self) -> TextConditioning:
        """Drop instance slots and caption tokens that no sample of the batch uses.

        Padding to 10 instances keeps shapes fixed, but every padded slot costs attention;
        the outputs are unchanged because padded slots and tokens are masked out anyway.
        """
        num = max(int(self.valid.sum(1).max()), 1)
        tokens = max(int(self.caption_mask.sum(-1).max()), 1)
        return TextConditioning(
            prompt_hidden=self.prompt_hidden,
            prompt_pooled=self.prompt_pooled,
            caption_hidden=self.caption_hidden[:, :num, :tokens],
            caption_pooled=self.caption_pooled[:, :num],
            caption_mask=self.caption_mask[:, :num, :tokens],
            boxes=self.boxes[:, :num],
            valid=self.valid[:, :num],
            enabled=self.enabled,
        )

    def __len__(self) -> int:
        return self.prompt_hidden.shape[0]


def build_transformer(config: ModelConfig, text_dim: int, pooled_dim: int) -> SD3Transformer2DModel:
    """The tiny MM-DiT of the embedded world, or the transformer of a local SD3 folder."""
    if config.base_model is not None:
        path = Path(config.base_model)
        if not (path / "transformer" / "config.json").is_file():
            raise FileNotFoundError(
                f"base_model '{path}': no transformer/config.json (expected an SD3 diffusers folder)"
            )
        return SD3Transformer2DModel.from_pretrained(path, subfolder="transformer")
    inner = config.num_heads * config.head_dim
    tokens_per_side = config.resolution // config.patch_size
    return SD3Transformer2DModel(
        sample_size=config.resolution,
        patch_size=config.patch_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        num_layers=config.num_layers,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=text_dim,
        caption_projection_dim=inner,  # must equal heads * head_dim (STACK.md)
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=max(tokens_per_side, 8),
    )


# What LoRA adapts by default: the attention projections of diffusers' SD3 blocks (image stream
# to_q / to_k / to_v / to_out.0, text stream add_*_proj / to_add_out; the last block has no to_add_out)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def lora_modules(transformer: nn.Module, targets: Sequence[str] | None) -> list[str]:
    """Full names of the backbone modules that LoRA adapts: those whose name ends with a target,
    never a module of the IDM processors (they have their own ``to_q`` / ``to_out``, trained whole).
    ``targets`` None takes LORA_TARGETS that the backbone has; a given target must match."""
    names = [name for name, _ in transformer.named_modules() if name and "processor" not in name.split(".")]

    def matches(target: str) -> list[str]:
        return [name for name in names if name == target or name.endswith("." + target)]

    if targets is None:
        found = [name for target in LORA_TARGETS for name in matches(target)]
        if not found:
            raise ConfigError(f"model.lora_targets: the backbone has none of {', '.join(LORA_TARGETS)}")
        return sorted(found)
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"model.lora_targets must be a non-empty list of module names, got {targets!r}")
    found = set()
    for target in targets:
        hit = matches(target)
        if not hit:
            raise ConfigError(
                f"model.lora_targets: '{target}' matches no module of the backbone "
                f"(the attention projections are {', '.join(LORA_TARGETS)})"
            )
        found.update(hit)
    return sorted(found)


def add_lora(transformer: SD3Transformer2DModel, config: ModelConfig) -> list[str]:
    """Inject LoRA layers (peft, through diffusers' ``add_adapter``) into the backbone's
    ``lora_targets``; B starts at zero, so the model's predictions are unchanged. Returns the
    adapted modules' names. The attention processors set on the backbone stay where they are."""
    if config.lora_rank < 0:
        raise ConfigError(f"model.lora_rank must be >= 0 (0 = no LoRA), got {config.lora_rank}")
    alpha = config.lora_rank if config.lora_alpha is None else config.lora_alpha
    if alpha <= 0:
        raise ConfigError(f"model.lora_alpha must be > 0, got {config.lora_alpha}")
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError(
            f"model.lora_rank={config.lora_rank} needs peft: pip install 'idruid[lora]'"
        ) from None
    modules = lora_modules(transformer, config.lora_targets)
    transformer.add_adapter(
        LoraConfig(r=config.lora_rank, lora_alpha=alpha, init_lora_weights=True, target_modules=modules)
    )
    return modules


SIGMA_FLOOR = 0.05  # smallest sigma an x0 output is divided by
OUTPUTS = ("velocity", "x0")


class LayoutToImageModel(nn.Module):
    prediction_type = "flow"

    def __init__(self, config: ModelConfig, text_encoder: FrozenTextEncoder | None = None):
        super().__init__()
        if config.output not in OUTPUTS:
            raise ValueError(f"model.output '{config.output}': expected one of {', '.join(OUTPUTS)}")
        self.config = config
        if text_encoder is None:
            text_encoder = (
                load_embedded_text_encoder()
                if config.text_encoder == "embedded"
                else FrozenTextEncoder.from_pretrained(config.text_encoder)
            )
        self.text_encoder = text_encoder
        text_dim = text_encoder.hidden_size
        self.transformer = build_transformer(config, text_dim, text_encoder.pooled_size)
        inner = self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim
        self.adapter = LayoutAdapter(text_dim, inner, config.fourier_freqs, text_encoder.pooled_size)
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
                )
                for name in self.transformer.attn_processors
            }
        )
        if config.lora_rank:
            add_lora(self.transformer, config)  # after the processors: they must not be adapted
        # real weights, and any backbone under LoRA, stay frozen; idruid trains adapter + IDM (+ LoRA).
        # This also undoes peft's freezing of everything but LoRA, which would catch the processors
        if config.base_model is not None or config.lora_rank:
            for name, param in self.named_parameters():
                if name.startswith("transformer."):
                    param.requires_grad_(not self._is_base_weight(name))

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(
        self,
        layouts: Sequence[Layout],
        drop_prompt: torch.Tensor | None = None,
        drop_layout: torch.Tensor | None = None,
    ) -> TextConditioning:
        """Encode prompts and captions with the frozen text encoder.

        drop_prompt / drop_layout: (B,) bool. A dropped prompt becomes "" and drops the layout
        too (the unconditional branch of classifier-free guidance).
        """
        batch, cap = len(layouts), self.config.max_instances
        drop_prompt = torch.zeros(batch, dtype=torch.bool) if drop_prompt is None else drop_prompt.cpu()
        drop_layout = torch.zeros(batch, dtype=torch.bool) if drop_layout is None else drop_layout.cpu()
        prompts = [
            "" if drop else layout.prompt for layout, drop in zip(layouts, drop_prompt.tolist(), strict=True)
        ]
        prompt = self.text_encoder.encode(prompts)
        length = self.config.prompt_max_length
        boxes, valid = boxes_tensor(layouts, cap)
        captions = [c for layout in layouts for c in layout.captions[:cap]]
        where = valid.nonzero(as_tuple=True)  # (b, n) of every kept instance, in order
        words = self.text_encoder.encode(captions) if captions else None
        dim, tokens = self.text_encoder.hidden_size, self.config.caption_max_length
        caption_hidden = torch.zeros(batch, cap, tokens, dim)
        caption_pooled = torch.zeros(batch, cap, self.text_encoder.pooled_size)
        caption_mask = torch.zeros(batch, cap, tokens, dtype=torch.bool)
        if words is not None:
            caption_hidden[where] = words.hidden[:, :tokens].float()
            caption_pooled[where] = words.pooled.float()
            caption_mask[where] = words.mask[:, :tokens]
        enabled = (~(drop_prompt | drop_layout)).float()
        return TextConditioning(
            prompt_hidden=prompt.hidden[:, :length].float(),
            prompt_pooled=prompt.pooled.float(),
            caption_hidden=caption_hidden,
            caption_pooled=caption_pooled,
            caption_mask=caption_mask,
            boxes=boxes,
            valid=valid,
            enabled=enabled,
        )

    def unconditional(self, cond: TextConditioning) -> TextConditioning:
        """The classifier-free-guidance partner of ``cond``: empty prompt, no layout."""
        empty = self.text_encoder.encode([""])
        batch = len(cond)
        device = cond.prompt_hidden.device
        return TextConditioning(
            prompt_hidden=empty.hidden[:, : cond.prompt_hidden.shape[1]]
            .float()
            .to(device)
            .expand(batch, -1, -1),
            prompt_pooled=empty.pooled.float().to(device).expand(batch, -1),
            caption_hidden=cond.caption_hidden,
            caption_pooled=cond.caption_pooled,
            caption_mask=cond.caption_mask,
            boxes=cond.boxes,
            valid=cond.valid,
            enabled=torch.zeros_like(cond.enabled),
        )

    # ------------------------------------------------------------------ prediction
    @property
    def token_grid(self) -> tuple[int, int]:
        side = self.config.resolution // self.transformer.config.patch_size
        return side, side

    def forward(
        self,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        cond: TextConditioning,
        layout_on: bool = True,
        record_attention: bool = False,
    ) -> tuple[torch.Tensor, list]:
        """Predict the velocity for x_t (B, C, H, W) at noise levels sigma (B,).

        Returns (v_pred, attention_maps); attention_maps holds one (attn_pos, attn_neg) pair of
        (B, N, heads, HW) per block when ``record_attention`` (for L_dis), else it is empty.
        """
        if x_t.ndim != 4 or x_t.shape[1] != self.config.in_channels:
            raise ValueError(
                f"x_t has shape {tuple(x_t.shape)}, expected (B, {self.config.in_channels}, H, W)"
            )
        kwargs = None
        layout = None
        if layout_on:
            cond = cond.trimmed()
            inst = self.adapter(
                cond.boxes, cond.valid, cond.caption_hidden, cond.caption_pooled, cond.caption_mask
            )
            layout = LayoutCondition(
                tokens=inst.tokens,
                token_mask=inst.token_mask,
                boxes=cond.boxes,
                valid=cond.valid,
                enabled=cond.enabled,
                grid=(
                    x_t.shape[-2] // self.transformer.config.patch_size,
                    x_t.shape[-1] // self.transformer.config.patch_size,
                ),
                patch=self.transformer.config.patch_size,
                record_attention=record_attention,
            )
            kwargs = {"layout": layout}
        out = self.transformer(
            hidden_states=x_t,
            encoder_hidden_states=cond.prompt_hidden,
            pooled_projections=cond.prompt_pooled,
            timestep=sigma * 1000.0,  # diffusers' SD3 takes sigma * 1000 (STACK.md)
            joint_attention_kwargs=kwargs,
            return_dict=False,
        )[0]
        return self._velocity(out, x_t, sigma), (layout.attention_maps if layout is not None else [])

    def _velocity(self, out: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The backbone output as a velocity: as is, or v = (x_t - x0) / sigma for an x0 output
        (sigma floored at SIGMA_FLOOR so that the last steps stay finite)."""
        if self.config.output == "velocity":
            return out
        return (x_t - out) / sigma.clamp(min=SIGMA_FLOOR).view(-1, *([1] * (x_t.ndim - 1))).to(out.dtype)

    # ------------------------------------------------------------------ parameters
    def _is_base_weight(self, name: str) -> bool:
        """A weight of the backbone itself (not of the IDM processors set into its attention),
        which comes from the base folder when ``config.base_model`` is set."""
        own = name.startswith("transformer.") and ".processor." not in name
        return own and "lora_" not in name  # LoRA adapters on the backbone are idruid's (peft names)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What an idruid checkpoint stores: everything but the frozen text encoder, and without the
        backbone's own weights when they come from a base folder (they are loaded from it). LoRA
        weights (``lora_`` keys) are always stored; a LoRA model without a base folder also stores
        its frozen backbone, which nothing else could rebuild."""
        based = self.config.base_model is not None
        return {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith("text_encoder.") and not (based and self._is_base_weight(k))
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [
            p for n, p in self.named_parameters() if not n.startswith("text_encoder.") and p.requires_grad
        ]
