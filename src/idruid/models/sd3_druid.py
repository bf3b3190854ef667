"""The I-DRUID authors' released model (``sd3-druid``) behind idruid's model contract.

``model(x_t, sigma, cond, layout_on)`` returns the velocity of their transformer
(models/druid_arch.py), so idruid's one sampling loop, evaluation and RL stage run it unchanged.
What their pipeline does, done here from idruid's ``Conditioning``:

- layout tokens from each instance's pooled CLIP-L + CLIP-G caption embedding (``caption_pooled``)
  and its box, in ``max_instances`` (10) slots; a row with ``enabled`` 0 (the unconditional row of
  classifier-free guidance, or a dropped layout in training) gets 10 null tokens;
- the layout branch runs in every row while ``layout_on``, with bbox_scale 1, and is skipped after;
- their binary floor-index box masks on the token grid, given to the rows ``druid_mask_rows`` names:
  "unconditional" (their code: the row with null tokens), "conditional" (the paper), or "both"; the
  other rows get all-zero masks, as their conditional row does;
- on CUDA, bf16 autocast around the float32 transformer (``druid_autocast``).

The backbone's own 683 tensors are frozen; idruid trains the layout branch (and optional LoRA on
the backbone's attention). With ``druid_weights`` set they come from that folder and idruid
checkpoints leave them out. L_dis has no attention maps to work on here: train with lambda_dis=0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from ..config import ModelConfig, SamplingSettings, TrainConfig, load_config
from ..diffusion import FlowProcess
from ..errors import ConfigError
from .base import Conditioning, LayoutModel
from .druid_arch import DruidSD3Transformer, box_grid_masks, is_layout_key
from .druid_weights import is_druid_folder, load_into, load_transformer, read_config
from .registry import Backbone, CheckpointFormat
from .sd3 import SD3_FOLDER, SD3Network, sd3_text_encoders, transformer_kwargs
from .text_encoder import CachedTextEncoder

MASK_ROWS = ("unconditional", "conditional", "both")
PRESET = "sd3-druid"  # their inference settings (configs/sd3-druid.yaml)
DRUID_CFG = {"coco-mig": 7.0, "layoutsam-eval": 7.5}  # their guidance scale per benchmark
# LoRA on the backbone's own joint attention only, never on the layout branch's fuser (trained whole)
DRUID_LORA_TARGETS = tuple(
    f"attn.{name}"
    for name in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
)


@dataclasses.dataclass
class DruidNetwork:
    """The sd3-druid backbone's own settings (``model.network``)."""

    # their checkpoint folder (config.json + safetensors), whose backbone stays frozen and is never
    # saved in idruid checkpoints; None builds their architecture at the sizes below, random
    druid_weights: str | None = None
    # which classifier-free-guidance rows get the binary box masks of their IDM: "unconditional"
    # (their code, reproduces their images), "conditional" (the paper) or "both"
    druid_mask_rows: str = "unconditional"
    druid_autocast: bool = True  # on CUDA: bf16 autocast around the fp32 transformer, as theirs
    # their transformer's sizes when druid_weights is None (SD3's meaning: models/sd3.py)
    patch_size: int = SD3Network.patch_size
    num_layers: int = SD3Network.num_layers
    num_heads: int = SD3Network.num_heads
    head_dim: int = SD3Network.head_dim

    def __post_init__(self) -> None:
        if self.druid_mask_rows not in MASK_ROWS:
            rows, value = ", ".join(MASK_ROWS), self.druid_mask_rows
            raise ConfigError(f"model.network.druid_mask_rows '{value}': expected one of {rows}")


def spatial_masks(cond: Conditioning, mask_rows: str, grid: tuple[int, int]) -> torch.Tensor:
    """(B, K, h, w) binary box masks in the rows ``mask_rows`` names ("unconditional": rows with
    ``enabled`` 0, "conditional": rows with 1, "both"), all zeros in the others."""
    if mask_rows not in MASK_ROWS:
        rows = ", ".join(MASK_ROWS)
        raise ConfigError(f"model.network.druid_mask_rows '{mask_rows}': expected one of {rows}")
    enabled = cond.enabled > 0
    rows = {"unconditional": ~enabled, "conditional": enabled, "both": torch.ones_like(enabled)}[mask_rows]
    masks = box_grid_masks(cond.boxes, cond.valid & rows[:, None], *grid)
    return masks.view(*masks.shape[:2], *grid)


class DruidLayoutModel(LayoutModel):
    """SD3 with the authors' layout branch, loaded from their checkpoint or built at ModelConfig's sizes."""

    backbone_attr = "transformer"
    lora_defaults = DRUID_LORA_TARGETS
    base_text_encoder = staticmethod(sd3_text_encoders)  # their model reads SD3's three encoders
    network_class = DruidNetwork
    layout_rounding = "floor"  # their int(layout_fraction * steps): 15 of 50 steps at 0.3

    def __init__(self, config: ModelConfig, text_encoder: CachedTextEncoder | None = None):
        super().__init__(config, text_encoder)
        self.process = FlowProcess()
        if self.network.druid_weights is not None:
            self.transformer = load_transformer(self.network.druid_weights)
        else:
            kwargs = transformer_kwargs(
                config,
                self.network,
                self.text_encoder.hidden_size,
                self.text_encoder.pooled_size,
                self.latent_shape[-1],
            )
            self.transformer = DruidSD3Transformer(max_boxes=config.max_instances, **kwargs)
        self._check_sizes()
        self._finish_backbone()
        for name, param in self.named_parameters():
            if self._is_base_weight(name):
                param.requires_grad_(False)

    def _check_sizes(self) -> None:
        """The transformer's widths against the text encoder's and the config's slot count."""
        cfg = self.transformer.config
        pairs = (
            (
                "joint_attention_dim",
                cfg.joint_attention_dim,
                "the text encoder's width",
                self.text_encoder.hidden_size,
            ),
            (
                "pooled_projection_dim",
                cfg.pooled_projection_dim,
                "its pooled width",
                self.text_encoder.pooled_size,
            ),
            (
                "max_boxes_per_image",
                self.transformer.max_boxes,
                "model.max_instances",
                self.config.max_instances,
            ),
        )
        for name, theirs, what, ours in pairs:
            if theirs != ours:
                raise ConfigError(f"sd3-druid: the transformer's {name} is {theirs} but {what} is {ours}")

    # ------------------------------------------------------------------ weights
    @property
    def weight_dtype(self) -> torch.dtype:
        return self.transformer.position_net.null_position_feature.dtype

    @property
    def backbone_from_folder(self) -> bool:
        return self.network.druid_weights is not None

    def _is_base_weight(self, name: str) -> bool:
        """One of the 683 ``SD3Transformer2DModel`` tensors (never the layout branch, never LoRA)."""
        prefix = self.backbone_attr + "."
        if not name.startswith(prefix) or "lora_" in name:
            return False
        return not is_layout_key(name[len(prefix) :])

    # ------------------------------------------------------------------ prediction
    def forward(
        self,
        x_t: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        layout_on: bool = True,
        record_attention: bool = False,
    ) -> tuple[torch.Tensor, list]:
        """Velocity (B, C, H, W) for x_t at noise levels sigma (B,); no attention maps."""
        if record_attention:
            raise ConfigError("the sd3-druid backbone has no attention maps for L_dis: set lambda_dis=0")
        x_t, cond = self.backbone_inputs(x_t, cond)
        patch = self.transformer.config.patch_size
        grid = (x_t.shape[-2] // patch, x_t.shape[-1] // patch)
        layout, masks = None, None
        if layout_on:
            layout = {
                "boxes": cond.boxes,
                "positive_embeddings": cond.caption_pooled,
                "masks": (cond.valid & (cond.enabled > 0)[:, None]).to(cond.caption_pooled.dtype),
            }
            masks = spatial_masks(cond, self.network.druid_mask_rows, grid)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if x_t.is_cuda and self.network.druid_autocast
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.transformer(
                hidden_states=x_t,
                encoder_hidden_states=cond.prompt_hidden,
                pooled_projections=cond.prompt_pooled,
                timestep=sigma * 1000.0,  # diffusers' SD3 transformer takes the timestep as sigma * 1000
                layout=layout,
                spatial_mask=masks,
                bbox_scale=1.0 if layout_on else 0.0,
            )
        return out.to(x_t.dtype), []


def druid_config(druid_dir: str | Path, base_dir: str | Path) -> TrainConfig:
    """The ``sd3-druid`` preset for their checkpoint folder and an SD3 folder: the resolution is
    the transformer's sample_size times the base VAE's downsampling (1024 for theirs), the
    sampling shift the base scheduler's (3 for SD3-medium)."""
    config = load_config(PRESET)
    sample_size = read_config(druid_dir)["sample_size"]
    base = Path(base_dir)
    vae_config, scheduler_config = base / "vae" / "config.json", base / "scheduler" / "scheduler_config.json"
    for file in (vae_config, scheduler_config):
        if not file.is_file():
            raise FileNotFoundError(
                f"base model '{base}': no {file.relative_to(base)} (expected an SD3 folder)"
            )
    downsample = 2 ** (len(json.loads(vae_config.read_text())["block_out_channels"]) - 1)
    config.shift = float(json.loads(scheduler_config.read_text()).get("shift", config.shift))
    config.model.network["druid_weights"], config.model.base_model = str(druid_dir), str(base_dir)
    config.model.resolution = sample_size * downsample
    return config


def druid_sampling(config: TrainConfig, benchmark: str | None = None) -> SamplingSettings:
    """Their sampling settings: steps, guidance (per benchmark), layout fraction and shift."""
    settings = config.sampling_settings()
    return settings.override(cfg=DRUID_CFG.get(benchmark, settings.cfg))


def load_druid(
    druid_dir: str | Path,
    base_dir: str | Path | None,
    device: str | torch.device = "cpu",
    mask_rows: str | None = None,
    benchmark: str | None = None,
) -> tuple[DruidLayoutModel, SamplingSettings]:
    """Their checkpoint folder on an SD3 folder (its text encoders, VAE and scheduler), ready to
    sample, with their sampling settings: what ``idruid generate --checkpoint DIR --base SD3``
    and ``IDruidPipeline.from_pretrained(DIR, base_model=SD3)`` load."""
    if base_dir is None:
        raise ConfigError(
            f"'{druid_dir}' is the I-DRUID authors' model: an SD3 folder is required as its base "
            "(--base SD3_DIR, or base_model=) for its text encoders, VAE and scheduler"
        )
    config = druid_config(druid_dir, base_dir)
    if mask_rows is not None:
        config.model.network["druid_mask_rows"] = mask_rows
    model = DruidLayoutModel(config.model).to(device).eval()
    return model, druid_sampling(config, benchmark)


def _load_into(model: DruidLayoutModel, path: Path) -> None:
    """Their checkpoint's transformer into a model of this backbone (``init_from``)."""
    load_into(model.transformer, path)


BACKBONE = Backbone(
    name="sd3-druid",
    model_class=DruidLayoutModel,
    # only the VAE and text encoders come from an SD3 folder (the backbone from their checkpoint,
    # model.network.druid_weights)
    base_configs=("vae/config.json", "text_encoder/config.json", "text_encoder_2/config.json"),
    base_folder=dataclasses.replace(SD3_FOLDER, network=()),
    folder_presets=("sd3-druid",),
    checkpoint_format=CheckpointFormat(
        what="the I-DRUID authors' model",
        recognise=is_druid_folder,
        open=load_druid,
        load_into=_load_into,
        options=("mask_rows",),
    ),
)
