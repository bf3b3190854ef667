"""What both layout-to-image backbones share: the frozen text encoder, the layout adapter's
inputs, the conditioning (``idruid.conditioning.Conditioning``: text, boxes, masks), optional LoRA and the
bookkeeping of what idruid trains and saves.

A backbone model (models/sd3.py, models/sd15.py) subclasses ``LayoutModel`` and provides
``forward(x_t, t, cond, layout_on, record_attention) -> (prediction, attention_maps)`` and a
``process`` (idruid.diffusion) whose ``prediction_type`` names what the prediction is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from ..conditioning import Conditioning
from ..config import ModelConfig
from ..errors import ConfigError
from ..layout import Layout, boxes_tensor
from .adapter import CAPTION_TOKEN_MODULES, LayoutAdapter
from .idm import LayoutCondition
from .registry import NoSettings, resolve_network
from .text_encoder import CachedTextEncoder, load_text_encoder
from .vae import LatentCodec, PixelCodec, UnshuffleCodec, VaeCodec


def lora_modules(
    backbone: nn.Module, targets: Sequence[str] | None, defaults: Sequence[str] = ()
) -> list[str]:
    """Full names of the backbone modules that LoRA adapts: those whose name ends with a target,
    never a module of the IDM processors (they have their own ``to_q`` / ``to_out``, trained whole).
    ``targets`` None takes the ``defaults`` that the backbone has; a given target must match."""
    names = [name for name, _ in backbone.named_modules() if name and "processor" not in name.split(".")]

    def matches(target: str) -> list[str]:
        return [name for name in names if name == target or name.endswith("." + target)]

    if targets is None:
        found = [name for target in defaults for name in matches(target)]
        if not found:
            raise ConfigError(f"model.lora_targets: the backbone has none of {', '.join(defaults)}")
        return sorted(found)
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"model.lora_targets must be a non-empty list of module names, got {targets!r}")
    found = set()
    for target in targets:
        hit = matches(target)
        if not hit:
            raise ConfigError(
                f"model.lora_targets: '{target}' matches no module of the backbone "
                f"(the attention projections are {', '.join(defaults)})"
            )
        found.update(hit)
    return sorted(found)


def add_lora(backbone: nn.Module, config: ModelConfig, defaults: Sequence[str] = ()) -> list[str]:
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
    modules = lora_modules(backbone, config.lora_targets, defaults)
    backbone.add_adapter(
        LoraConfig(r=config.lora_rank, lora_alpha=alpha, init_lora_weights=True, target_modules=modules)
    )
    return modules


CODECS = ("pixels", "unshuffle", "vae")
FROZEN = ("text_encoder.", "codec.")  # parameters idruid neither trains nor saves


def build_codec(config: ModelConfig) -> LatentCodec:
    """The frozen map between images and what the backbone denoises (``ModelConfig.codec``)."""
    if config.codec == "pixels":
        return PixelCodec()
    if config.codec == "unshuffle":
        return UnshuffleCodec(2)
    if config.codec == "vae":
        if config.base_model is None:
            raise ConfigError("model.codec=vae loads the VAE of model.base_model, which is not set")
        return VaeCodec.from_pretrained(config.base_model)
    raise ConfigError(f"model.codec '{config.codec}': expected one of {', '.join(CODECS)}")


class LayoutModel(nn.Module):
    """A diffusers backbone (the attribute named ``backbone_attr``) conditioned on layouts, on the
    latents of a frozen codec (``codec``: images <-> latents)."""

    backbone_attr = "backbone"  # where the subclass keeps its diffusers model
    lora_defaults: tuple[str, ...] = ()  # modules LoRA adapts when model.lora_targets is None
    # the text encoder(s) of the backbone's base folder (model.text_encoder=base), declared by its
    # module: folder -> encoder; None tells them from the folder's contents (load_text_encoder)
    base_text_encoder: Callable[[Path], CachedTextEncoder] | None = None
    network_class: type = NoSettings  # the dataclass of the backbone's own settings (model.network)
    # the guidance the network takes: "cfg" (two rows, conditional and unconditional, combined
    # with the sampling setting cfg), "distilled" (a guidance-distilled network, FLUX.1-dev,
    # given the sampling setting guidance as an input: one row, Conditioning.guidance), and
    # "skip-layer" (forward takes ``skip_layers``: the sampling setting of that name); a model
    # whose backbone decides at load time sets it on the instance
    guidance: tuple[str, ...] = ("cfg",)
    # the layout branch's step count from layout_fraction * steps (idruid.sampling.layout_steps):
    # "ceil" (idruid: 6 / 9 / 15 of 20 / 28 / 50 steps at 0.3) or "floor" (the authors': 6 / 8 / 15)
    layout_rounding: str = "ceil"

    def __init__(self, config: ModelConfig, text_encoder: CachedTextEncoder | None = None):
        """``text_encoder`` None loads ``config.text_encoder``: "embedded", "base" (the base
        folder's), an SD3 folder (CLIP-L, CLIP-G and T5) or an SD1.5 / CLIP folder
        (models/text_encoder.py, load_text_encoder)."""
        super().__init__()
        self.config = config
        self.network = resolve_network(config, type(self))  # typed; config.network filled in
        if text_encoder is None:
            spec, own = config.text_encoder, type(self).base_text_encoder
            if spec == "base":
                if config.base_model is None:
                    raise ConfigError("model.text_encoder=base reads model.base_model, which is not set")
                spec = config.base_model
            if own is not None and config.text_encoder == "base":
                text_encoder = own(Path(spec))
            else:
                text_encoder = load_text_encoder(spec)
        self.text_encoder = text_encoder
        self.codec = build_codec(config)
        if config.resolution % self.codec.downsample:
            raise ConfigError(
                f"model.resolution {config.resolution} is not a multiple of the codec's "
                f"downsampling factor {self.codec.downsample}"
            )

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.backbone_attr)

    @property
    def _no_split_modules(self) -> list[str]:
        """The block classes FSDP's transformer-based wrap shards one by one (accelerate reads this
        attribute of the prepared model): the backbone's, as diffusers declares them (SD3's
        JointTransformerBlock, FLUX's two block kinds, the UNet's transformer, resnet and up
        blocks), so the launch files name none and fit every backbone; the layout processors sit
        inside these blocks."""
        return list(getattr(self.backbone, "_no_split_modules", None) or [])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of what the backbone denoises for a ``config.resolution`` image."""
        side = self.config.resolution // self.codec.downsample
        return self.codec.latent_channels, side, side

    def backbone_inputs(
        self, x_t: torch.Tensor, cond: Conditioning
    ) -> tuple[torch.Tensor, Conditioning]:
        """Check x_t's shape, and cast x_t and the conditioning's float tensors to the weights'
        dtype when the whole model was cast (DeepSpeed's bf16 and fp16 engines hold bf16 / fp16
        weights and feed them what the data loader gives; under autocast the weights stay float32
        and nothing changes here)."""
        if x_t.ndim != 4 or x_t.shape[1] != self.codec.latent_channels:
            raise ValueError(
                f"x_t has shape {tuple(x_t.shape)}, expected (B, {self.codec.latent_channels}, h, w)"
            )
        dtype = self.weight_dtype
        if x_t.dtype == dtype and cond.prompt_hidden.dtype == dtype:
            return x_t, cond
        cast = {
            f.name: value.to(dtype) if value is not None and value.is_floating_point() else value
            for f in fields(cond)
            for value in [getattr(cond, f.name)]
        }
        return x_t.to(dtype), Conditioning(**cast)

    @property
    def device(self) -> torch.device:
        """Where the weights are (diffusers' pipelines read ``device`` and ``dtype`` of components)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.weight_dtype

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of idruid's own weights (what the inputs are cast to when the model was cast)."""
        return self.adapter.null_token.dtype

    @property
    def backbone_from_folder(self) -> bool:
        """Whether the backbone's own weights come from a folder, so checkpoints leave them out."""
        return self.config.base_model is not None

    def layout_condition(
        self, cond: Conditioning, grid: Sequence[int], patch: int, record_attention: bool
    ) -> LayoutCondition:
        """The layout branch's input for a batch: the adapter's instance tokens of the used
        instance slots, on a token grid of ``grid`` cells of ``patch`` x ``patch`` latent pixels."""
        cond = cond.trimmed()
        inst = self.adapter(
            cond.boxes, cond.valid, cond.caption_hidden, cond.caption_pooled, cond.caption_mask
        )
        return LayoutCondition(
            tokens=inst.tokens,
            token_mask=inst.token_mask,
            boxes=cond.boxes,
            valid=cond.valid,
            enabled=cond.enabled,
            grid=(int(grid[0]), int(grid[1])),
            patch=patch,
            record_attention=record_attention,
        )

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents x_0 (B, C, h, w) for the training losses."""
        return self.codec.encode(images)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1]."""
        return self.codec.decode(latents)

    @property
    def prediction_type(self) -> str:
        return self.process.prediction_type

    @property
    def backbone_channels(self) -> int:
        """The latent channels the backbone takes (its ``in_channels``; FLUX packs 2x2 latent pixels
        into one token of 4x as many)."""
        return self.backbone.config.in_channels

    def _finish_backbone(self) -> None:
        """After the processors are set: LoRA (which must not adapt them) and freezing. Real
        weights, and any backbone under LoRA, stay frozen; idruid trains adapter + IDM (+ LoRA).
        This also undoes peft's freezing of everything but LoRA, which would catch the processors."""
        backbone_channels = self.backbone_channels
        if backbone_channels != self.codec.latent_channels:
            raise ConfigError(
                f"the backbone takes {backbone_channels} input channels but model.codec "
                f"'{self.config.codec}' gives {self.codec.latent_channels} "
                "(set model.in_channels or model.codec)"
            )
        if self.config.lora_rank:
            add_lora(self.backbone, self.config, self.lora_defaults)
        if self.config.base_model is not None or self.config.lora_rank:
            prefix = self.backbone_attr + "."
            for name, param in self.named_parameters():
                if name.startswith(prefix):
                    param.requires_grad_(not self._is_base_weight(name))
        for name, param in self.named_parameters():
            if name.startswith(self.unused_prefixes):
                param.requires_grad_(False)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(
        self,
        layouts: Sequence[Layout],
        drop_prompt: torch.Tensor | None = None,
        drop_layout: torch.Tensor | None = None,
    ) -> Conditioning:
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
        length = self.config.prompt_max_length
        # the length the prompt is read at: FLUX's T5 runs at it (FluxPipeline's max_sequence_length)
        prompt = self.text_encoder.encode(prompts, length=length)
        boxes, valid = boxes_tensor(layouts, cap)
        captions = [c for layout in layouts for c in layout.captions[:cap]]
        where = valid.nonzero(as_tuple=True)  # (b, n) of every kept instance, in order
        dim, tokens = self.text_encoder.hidden_size, self.config.caption_max_length
        # only the tokens the adapter reads: at caption_max_length=0 SD3 skips T5 for captions
        words = self.text_encoder.encode(captions, length=tokens) if captions else None
        caption_hidden = torch.zeros(batch, cap, tokens, dim)
        caption_pooled = torch.zeros(batch, cap, self.text_encoder.pooled_size)
        caption_mask = torch.zeros(batch, cap, tokens, dtype=torch.bool)
        if words is not None:
            caption_hidden[where] = words.hidden.float()
            caption_pooled[where] = words.pooled.float()
            caption_mask[where] = words.mask
        enabled = (~(drop_prompt | drop_layout)).float()
        return Conditioning(
            prompt_hidden=prompt.hidden[:, :length].float(),
            prompt_pooled=prompt.pooled.float(),
            caption_hidden=caption_hidden,
            caption_pooled=caption_pooled,
            caption_mask=caption_mask,
            boxes=boxes,
            valid=valid,
            enabled=enabled,
        )

    def unconditional(
        self, cond: Conditioning, negative_prompts: Sequence[str] | None = None
    ) -> Conditioning:
        """The classifier-free-guidance partner of ``cond``: empty prompt, no layout;
        ``negative_prompts`` (one per row) in place of the empty prompt (diffusers' negative prompt)."""
        batch = len(cond)
        if negative_prompts is not None and len(negative_prompts) != batch:
            raise ValueError(f"{len(negative_prompts)} negative prompts for a batch of {batch}")
        texts = [""] if negative_prompts is None else list(negative_prompts)
        empty = self.text_encoder.encode(texts, length=cond.prompt_hidden.shape[1])
        device = cond.prompt_hidden.device
        return Conditioning(
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
            guidance=cond.guidance,  # both rows of true CFG get the distilled scale, as FluxPipeline's
        )

    # ------------------------------------------------------------------ parameters
    def _is_base_weight(self, name: str) -> bool:
        """A weight of the backbone itself (not of the IDM processors set into its attention),
        which comes from the base folder when ``config.base_model`` is set."""
        own = name.startswith(self.backbone_attr + ".") and ".processor." not in name
        return own and "lora_" not in name  # LoRA adapters on the backbone are idruid's (peft names)

    @property
    def unused_prefixes(self) -> tuple[str, ...]:
        """Name prefixes of parameters that no output depends on, so they never get a gradient:
        the adapter's caption-token modules when ``caption_max_length`` is 0 (6.3 M parameters at
        SD3-medium size). They stay frozen at their initial values, unsaved."""
        if self.config.caption_max_length or not isinstance(getattr(self, "adapter", None), LayoutAdapter):
            return ()  # sd3-druid has no LayoutAdapter
        return tuple(f"adapter.{module}." for module in CAPTION_TOKEN_MODULES)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What an idruid checkpoint stores: everything but the frozen text encoder and the unused
        parameters, and without the backbone's own weights when they come from a base folder (they
        are loaded from it). LoRA weights (``lora_`` keys) are always stored; a LoRA model without a
        base folder also stores its frozen backbone, which nothing else could rebuild."""
        based, skip = self.backbone_from_folder, FROZEN + self.unused_prefixes
        return {
            k: v
            for k, v in self.state_dict().items()
            if not k.startswith(skip) and not (based and self._is_base_weight(k))
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: never the frozen or unused parameters (``unused_prefixes``)."""
        return [p for n, p in self.named_parameters() if not n.startswith(FROZEN) and p.requires_grad]
