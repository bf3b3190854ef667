"""Typed configs for the model, training and its RL stage, named presets and ``key=value`` overrides
(each value read as the type of the setting it sets: ``parse_setting``).

Presets are YAML files in ``idruid/configs/`` (``configs/`` at the repository root points there).
Every run saves the resolved config next to its outputs, so a run can be reproduced from it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .textfile import read_text

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class SamplingSettings:
    """How a layout becomes an image (idruid.sampling.sample): the one home of these defaults.
    A checkpoint stores its own under ``"sampling"`` in idruid.json (``to_dict``); the CLI, the
    UI, evaluation, the RL stage and the diffusers pipeline start from those and override them."""

    steps: int = 20  # sampling steps
    cfg: float = 3.0  # classifier-free guidance scale; 1 = no unconditional pass
    # share of the steps with the layout branch (adapter + IDM) on, the first ones (paper 4.1)
    layout_fraction: float = 0.3
    shift: float = 1.0  # flow-matching timestep shift of the schedule (eps backbones: 1 only)
    # the distilled guidance scale a guidance-distilled network (FLUX.1-dev: 3.5) takes as an
    # input, in one row (cfg 1); None: the network's own default, or a network without that input
    # (giving one to such a network is refused)
    guidance: float | None = None
    # skip-layer guidance (SD3 and SD3.5; StableDiffusion3Pipeline's skip_guidance_layers and its
    # rule): under CFG, on the steps i with steps * skip_layer_start < i < steps * skip_layer_stop,
    # the prediction gains skip_layer_scale * (conditional - conditional with these transformer
    # blocks skipped). None: off (SD3.5-medium's model card suggests blocks 7, 8, 9)
    skip_layers: tuple[int, ...] | None = None
    skip_layer_scale: float = 2.8  # diffusers' defaults for the scale and the window
    skip_layer_start: float = 0.01
    skip_layer_stop: float = 0.2

    def __post_init__(self) -> None:
        if self.skip_layers is not None:  # a list from a checkpoint's JSON or a flag
            layers = tuple(int(k) for k in self.skip_layers)
            if not layers or min(layers) < 0:
                raise ConfigError(f"skip_layers {list(self.skip_layers)}: give block indices >= 0")
            object.__setattr__(self, "skip_layers", layers)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``sampling`` entry."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SamplingSettings:
        """Settings from a checkpoint's ``sampling`` entry: missing keys take the defaults, keys
        this idruid does not know are ignored (a newer checkpoint may store more)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def override(self, **values: Any) -> SamplingSettings:
        """These settings with ``values`` in their place; a value of None keeps the current one
        (a flag the user left out)."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown sampling settings: {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass
class ModelConfig:
    """What every backbone reads, plus the backbone's own section ``network``.

    ``network`` holds the settings of the backbone named by ``backbone``, declared by its module
    (idruid.models.registry: sd3's patch_size / num_layers / num_heads / head_dim / output, sd15's
    unet_channels / unet_layers_per_block / num_heads, sd3-druid's druid_weights / druid_mask_rows
    / druid_autocast and sizes); keys left out take that backbone's defaults, and building the
    model fills them in (``models.registry.resolve_network``), so a saved config lists them all."""

    backbone: str = "sd3"  # a registered backbone (idruid.models.registry): sd3, sd15, sd3-druid, ...
    # "embedded" (the shipped mini-CLIP), "base" (base_model's own: SD3's CLIP-L + CLIP-G + T5,
    # SD1.5's CLIP-L) or a local folder holding one of those
    text_encoder: str = "embedded"
    # a local diffusers folder of the backbone (SD3 or SD1.5); None builds the tiny backbone of
    # ``network``'s sizes
    base_model: str | None = None
    resolution: int = 32  # image side in pixels
    # what the backbone denoises (models/vae.py): "pixels" (the images themselves), "unshuffle"
    # (a lossless 2x space-to-depth map, 12 channels at half the side: the embedded world's
    # miniature of a VAE latent) or "vae" (the AutoencoderKL of base_model, with its factors)
    codec: str = "pixels"
    in_channels: int = 3  # channels of the backbone's input: the codec's (3 pixels, 12 unshuffle)
    prompt_max_length: int = 40  # tokens of the global prompt
    # word tokens per instance caption besides the pooled embedding; 0 = pooled only, the
    # contrastively aligned embedding (and 2x cheaper, see BENCHMARKS.md)
    caption_max_length: int = 0
    max_instances: int = 10  # the paper's cap
    fourier_freqs: int = 8  # Fourier embedding of the box: 4 coords x 2 x freqs
    use_idm: bool = True  # False: adapter-only baseline (ablation row 1)
    idm_hidden: int = 128  # width of the IDM descriptor network
    geometry_rank: int = 32  # width of the per-instance pixel-geometry features (IDM mask branch)
    # the layout branch queries the instance tokens with the backbone's own image queries
    # (IP-Adapter's decoupled cross-attention) instead of its own to_q: for pretrained backbones
    share_query: bool = False
    # LoRA on the backbone through peft (`pip install 'idruid[lora]'`); 0 = off. With LoRA on, the
    # backbone's own weights are frozen and change only through low-rank updates of lora_targets
    lora_rank: int = 0
    lora_alpha: float | None = None  # the update is scaled by lora_alpha / lora_rank; None = rank
    # backbone modules to adapt, matched as name suffixes ("to_q", "to_out.0"), never inside the IDM
    # processors; None = the attention projections the backbone has (each backbone's LORA_TARGETS)
    lora_targets: list[str] | None = None
    # the backbone's own settings (``model.network.KEY=VALUE``), typed and checked by its module
    network: dict[str, Any] = field(default_factory=dict)


# Settings that older idruid configs and checkpoints (idruid.json) hold at the top of the model
# section, with the default they had there: they are read into ``network``, where each backbone
# takes the ones it has and ignores the others at that default (models.registry.resolve_network).
# The released shipped model and the committed results/*/config.yaml are written this way.
FLAT_NETWORK_KEYS: dict[str, Any] = {
    "patch_size": 4,
    "num_layers": 4,
    "num_heads": 4,
    "head_dim": 32,
    "unet_channels": [32, 64, 128],
    "unet_layers_per_block": 1,
    "output": "velocity",
    "druid_weights": None,
    "druid_mask_rows": "unconditional",
    "druid_autocast": True,
    "layout_rounding": "ceil",  # now the backbone's own (ceil; the authors' architecture floor)
}


RL_ALGORITHMS = ("none", "ppo", "grpo", "sft")
RL_CREDITS = ("image", "instance", "visible")
RL_CHOICES = {  # RLConfig field -> the values it takes
    "algorithm": RL_ALGORITHMS,
    "credit": RL_CREDITS,
    "window": ("first", "random", "full"),
    "update": ("fresh", "pool"),
    "baseline": ("critic", "group", "batch"),
    "advantage_std": ("batch", "group", "none"),
    "kl_to": ("reference", "old"),
}


@dataclass
class RLConfig:
    """The RL stage (paper 3.3, Algorithm 1) and its Table 3 ablations, inside the same trainer."""

    # "none": stage 1 only; "ppo": I-DRUID (clipped policy gradient with the baseline below);
    # "grpo": Flow-GRPO (group baseline, each group standardised by its own std; Table 3 row 4);
    # "sft": the prompt-only set's rendered images as extra paired data instead of RL (Table 3
    # row 3, which breaks the unpaired setting on purpose)
    algorithm: str = "none"
    start_fraction: float = 0.5  # RL joins for the last half of training (epochs 10-20 of 20)
    # the exported EMA restarts its warm-up when RL joins (at start_fraction > 0), so that it
    # averages the RL stage's weights rather than mostly stage 1's (EMA decay 0.999)
    restart_ema: bool = True
    lambda_rl: float = 1.0  # weight of L_rl (or of the SFT loss) in Eq. 12
    every: int = 1  # one RL iteration every `every` training steps
    batch_size: int = 64  # rollouts per RL iteration (prompt-only layouts x group_size)
    group_size: int = 4  # rollouts per prompt: the group baseline's groups, the critic gate's variance
    sampling_steps: int = 10  # sampling steps of a rollout (TrainConfig.steps counts optimiser steps)
    # which steps explore (SDE) and are trained: "first" (the paper's leading rl_fraction of the
    # steps), "random" (a window of that many steps drawn within the first half, Flow-GRPO-Fast)
    # or "full" (every step, appendix E)
    window: str = "first"
    rl_fraction: float = 0.2  # the window's share of the steps ("first", "random")
    noise_level: float = 0.7  # a of Eq. 5 (flow backbones: the SDE policy's noise)
    eta: float = 1.0  # eps backbones (SD1.5): DDIM eta of the policy step; 1 = the DDPM transition
    cfg: float = 3.0  # guidance of the rollout policy
    # what the actor's update trains on: "fresh" (the rollouts just sampled, reused for
    # ppo_epochs iterations: on-policy at the first) or "pool" (a rollout drawn from the action
    # pool at every iteration: the paper's literal reading of 3.3)
    update: str = "fresh"
    ppo_epochs: int = 1  # "fresh": iterations (optimiser steps) each rollout batch is trained for
    clip_range: float = 1e-4  # zeta of Eq. 10
    # the advantage's baseline: "critic" (Eq. 8, phi(s_t)), "group" (the mean reward of the
    # rollouts of the same prompt) or "batch" (the mean over the batch)
    baseline: str = "group"
    # advantages divided by the std of the "batch", of each "group" (GRPO), or not ("none")
    advantage_std: str = "batch"
    advantage_clip: float = 5.0  # |A| clipped here after standardising; 0 = off
    # how the reward is credited to actions: "image" (the paper: the image's reward, Eq. 6, for the
    # density of the whole latent), "instance" (each instance's term of Eq. 6 for the density
    # inside its own box, with per-instance baselines) or "visible" (as instance, but a cell that
    # several boxes cover is credited to the smallest, drawn in front of the others)
    credit: str = "instance"
    # the policy's log-prob takes no gradient through CFG's unconditional prediction (Flow-GRPO)
    detach_uncond: bool = True
    # the KL term of Eq. 10 is taken to the "reference" (the actor frozen when RL starts, as
    # Flow-GRPO) or to the "old" policy that sampled the rollout (the paper's pseudo-code)
    kl_to: str = "reference"
    kl_weight: float = 0.01  # weight of the KL term of Eq. 10
    # "iou", "iou_conf", "false" or "iou_conf_color" (idruid.rl.rewards.REWARDS)
    reward: str = "iou_conf"
    confidence_weight: float = 1.0  # k in IoU + k * confidence (Table 4)
    # the detector's box threshold in the reward: an instance whose best box scores below it counts
    # as not found (GroundingDINO reports nothing below its threshold; COCO-MIG's scorer uses 0.25);
    # 0: every candidate the analytic detector returns counts, however unsure
    reward_threshold: float = 0.0
    detector: str | None = "analytic"  # a registered detector name or a local GroundingDINO folder
    # the iou_conf_color reward's segmenter (the colour share of each target box, as COCO-MIG's colour
    # check segments it): a registered name or a local SAM folder
    segmenter: str | None = "analytic"
    critic_lr: float = 1e-3
    critic_hidden: int = 256
    critic_epochs: int = 4  # critic updates per RL iteration, on rollouts drawn from the action pool
    critic_warmup: int = 5  # iterations of critic pretraining (actor frozen) at least
    # the actor waits until the critic's MSE on a fresh batch (before fitting it) is at most
    # critic_gate x the within-prompt reward variance (paper 4.1's warm-up, made a measured test);
    # 0 = no gate. critic_gate_max: iterations after which the actor starts anyway, said in the log
    critic_gate: float = 4.0
    critic_gate_max: int = 50
    pool_size: int = 8  # rollouts kept in the action pool (the critic's replay; "pool" updates)
    # the prompt-only (unpaired) layouts: "shapes" (the embedded world's generator) or a layout file
    # (idruid JSON, e.g. COCO-MIG's prompts through `idruid convert`), read in order and cycled
    prompts: str | None = "shapes"
    prompt_seed: int = 1  # seed of the shapes prompt-only set (idruid.data.shapes.prompt_only_layout)
    # box geometry of the shapes prompt-only set (idruid.data.shapes.geometry): "coco" (COCO-MIG's,
    # as the paper's RL prompts are COCO-MIG's), "open", "narrow" (the world's first) or "strips"
    prompt_geometry: str = "coco"
    # held-out reward logged during training: this many prompt-only layouts (never drawn by the
    # RL stage) sampled with the ODE from fixed noise every held_out_every steps; 0 = off. The
    # first set has the prompts' geometry; a second one of the geometry held_out_off (none: no
    # second set) tells whether the stage gains only on the kind of layout it trains on
    held_out: int = 0
    held_out_every: int = 50
    held_out_off: str = "strips"

    def check(self, processes: int = 1) -> None:
        """Refuse settings the RL stage cannot run on ``processes`` processes, before any training
        starts."""
        for name, choices in RL_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"rl.{name} '{getattr(self, name)}': expected one of {', '.join(choices)}")
        if not 0.0 <= self.start_fraction < 1.0:
            raise ConfigError(f"rl.start_fraction must be in [0, 1), got {self.start_fraction}")
        if not 0.0 < self.rl_fraction <= 1.0:
            raise ConfigError(f"rl.rl_fraction must be in (0, 1], got {self.rl_fraction}")
        if self.sampling_steps < 2:
            raise ConfigError(f"rl.sampling_steps must be at least 2, got {self.sampling_steps}")
        if self.every < 1 or self.batch_size < 1 or self.pool_size < 1:
            raise ConfigError("rl.every, rl.batch_size and rl.pool_size must be at least 1")
        if self.algorithm != "none" and self.prompts is None:
            raise ConfigError("rl.prompts is not set: give a layout file of prompt-only layouts (or shapes)")
        if self.algorithm in ("ppo", "grpo") and self.detector is None:
            raise ConfigError("rl.detector is not set: give a local GroundingDINO folder (or analytic)")
        if self.group_size < 1 or (processes * self.batch_size) % self.group_size:
            of_all = "" if processes == 1 else f" x {processes} processes (the RL batch of all processes)"
            raise ConfigError(
                f"rl.group_size={self.group_size} must be >= 1 and divide rl.batch_size={self.batch_size}"
                f"{of_all} (rl.batch_size counts the rollouts of one process)"
            )
        grouped = self.algorithm == "grpo" or self.baseline == "group" or self.advantage_std == "group"
        if self.algorithm in ("ppo", "grpo") and grouped and self.group_size < 2:
            raise ConfigError(
                f"rl.group_size={self.group_size}: a group baseline or group std needs groups of >= 2"
            )
        critic = self.algorithm == "ppo" and self.baseline == "critic"
        if critic and self.critic_gate > 0 and self.group_size < 2:
            raise ConfigError(
                "rl.critic_gate compares the critic with the within-prompt reward variance, which needs "
                "rl.group_size >= 2 (or rl.critic_gate=0)"
            )
        if self.ppo_epochs < 1 or self.critic_epochs < 0 or self.advantage_clip < 0:
            raise ConfigError("rl.ppo_epochs must be >= 1, rl.critic_epochs and rl.advantage_clip >= 0")
        if self.algorithm in ("ppo", "grpo") and self.reward == "iou_conf_color" and self.segmenter is None:
            raise ConfigError("rl.reward=iou_conf_color needs rl.segmenter (analytic, or a local SAM folder)")
        _check_geometry("rl.prompt_geometry", self.prompt_geometry)
        if self.held_out_off != "none":
            _check_geometry("rl.held_out_off", self.held_out_off, "none")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    # start from an idruid checkpoint folder ("embedded": the shipped model); same model config
    init_from: str | None = None
    seed: int = 0
    steps: int = 3000  # optimiser steps
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    lr_schedule: str = "constant"  # "constant" after warm-up, or "cosine" decay to zero at `steps`
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lambda_dis: float = 1.0  # weight of L_dis (Eq. 12); ignored without IDM
    ema_decay: float = 0.999
    drop_prompt: float = 0.1  # drop prompt and layout together (unconditional, for CFG)
    drop_layout: float = 0.1  # drop the layout only (what late sampling steps see, paper 4.1)
    # how training draws the noise time: "logit_normal" (SD3's density; eps backbones take
    # floor(T * sigmoid(n)) as the DDPM timestep) or "uniform" (sigma, or DDPM's uniform timesteps)
    time_sampling: str = "logit_normal"
    # paired training data: "shapes" (the embedded world, generated on the fly) or "layoutsam"
    # (parquet shards at data_path, images under image_root; idruid.data.layoutsam_train)
    data: str = "shapes"
    data_size: int = 1_000_000  # shapes: length of the on-the-fly paired training set
    data_seed: int = 0
    min_instances: int = 1  # shapes: instances per scene
    max_instances: int = 6
    # shapes: the training pairs' box geometry (idruid.data.shapes.geometry): "open" (every size
    # and aspect, as LayoutSAM's SA-1B boxes) or "narrow" (the world's first, before COCO-MIG's
    # geometry was measured)
    geometry: str = "open"
    data_path: str | None = None  # layoutsam: a parquet shard, a folder of shards
    image_root: str | None = None  # layoutsam: the folder the rows' image_path are relative to
    captions: str = "detailed"  # layoutsam: "detailed" (detail_region_captions) or "short"
    skip_missing: bool = False  # layoutsam: drop rows whose image is missing (and count them)
    num_workers: int = 0
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (accelerate)
    gradient_checkpointing: bool = False  # recompute each backbone block in the backward pass
    checkpoint_every: int = 500  # steps between resumable checkpoints
    keep_checkpoints: int = 2
    log_every: int = 25
    threads: int = 0  # torch.set_num_threads on CPU; 0 leaves torch's default
    # the sampling settings saved with the model (``sampling_settings``), also used by
    # the evaluation at the end of `idruid demo` and by the RL stage's rollouts (layout_fraction, shift)
    eval_steps: int = SamplingSettings.steps
    eval_cfg: float = SamplingSettings.cfg
    layout_fraction: float = SamplingSettings.layout_fraction
    shift: float = SamplingSettings.shift
    # the distilled guidance scale of a guidance-distilled backbone (FLUX.1-dev), also given to the
    # RL stage's rollouts and their re-scoring; None: the backbone's default, or none at all
    guidance: float | None = SamplingSettings.guidance

    def sampling_settings(self) -> SamplingSettings:
        """The sampling settings of this run (what its checkpoint records)."""
        return SamplingSettings(
            steps=self.eval_steps,
            cfg=self.eval_cfg,
            layout_fraction=self.layout_fraction,
            shift=self.shift,
            guidance=self.guidance,
        )


DATASETS = ("shapes", "layoutsam")


def _check_geometry(key: str, name: str, *extra: str) -> None:
    from .data.shapes.geometry import GEOMETRIES

    if name not in GEOMETRIES:
        raise ConfigError(f"{key} '{name}': expected one of {', '.join([*GEOMETRIES, *extra])}")


def check_data(config: TrainConfig) -> None:
    """Refuse a training-data setting that cannot work, before any model is built."""
    if config.data not in DATASETS:
        raise ConfigError(f"data '{config.data}': expected one of {', '.join(DATASETS)}")
    if config.data == "shapes":
        _check_geometry("geometry", config.geometry)
    if config.data == "layoutsam":
        for key in ("data_path", "image_root"):
            if getattr(config, key) is None:
                raise ConfigError(f"data=layoutsam needs {key}=... (parquet shards and their image folder)")
        if config.captions not in ("detailed", "short"):
            raise ConfigError(f"captions '{config.captions}': expected detailed or short")


# Keys renamed since older configs were written, per section ("" is the top level): old -> new.
# Deprecated aliases: the old names still load (committed results/*/config.yaml use them) and are
# read as the new ones here, the one place config keys are renamed; new configs use the new names.
RENAMED_KEYS: dict[str, dict[str, str]] = {
    "": {"sigma_sampling": "time_sampling"},  # it also picks DDPM timesteps
    "rl": {"steps": "sampling_steps"},  # sampling steps of a rollout, not optimiser steps
}


def _renamed(section: str, key: str, where: str, warn: bool) -> str:
    """The current name of ``key`` in ``section`` (a deprecated alias warns)."""
    new = RENAMED_KEYS.get(section, {}).get(key)
    if new is None:
        return key
    if warn:
        dotted = f"{section}." if section else ""
        _deprecated(where, f"{dotted}{key}", f"{dotted}{new}", stacklevel=4)
    return new


def _deprecated(where: str, old: str, new: str, stacklevel: int) -> None:
    """The one warning of an older config key read under its current name."""
    message = f"{where}: config key '{old}' is deprecated, read as '{new}'"
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel)


def upgrade_keys(data: dict[str, Any], where: str = "config", warn: bool = True) -> dict[str, Any]:
    """A raw config mapping (a YAML file's) with the deprecated keys of ``RENAMED_KEYS`` under
    their current names; a mapping that holds both names of one key is refused."""
    if not isinstance(data, dict):
        return data  # _from_dict says what is wrong with it

    def section(values: dict[str, Any], name: str) -> dict[str, Any]:
        for old, new in RENAMED_KEYS.get(name, {}).items():
            if old in values and new in values:
                dotted = f"{name}." if name else ""
                raise ConfigError(f"{where}: both '{dotted}{old}' and its new name '{dotted}{new}' are set")
        return {_renamed(name, key, where, warn): value for key, value in values.items()}

    upgraded = section(data, "")
    for name in RENAMED_KEYS:
        if name and isinstance(upgraded.get(name), dict):
            upgraded[name] = section(upgraded[name], name)
    if isinstance(upgraded.get("model"), dict):
        upgraded["model"] = upgrade_model_keys(upgraded["model"], where, warn)
    return upgraded


def upgrade_model_keys(model: dict[str, Any], where: str = "model", warn: bool = True) -> dict[str, Any]:
    """A raw model section with the backbone settings of older configs (``FLAT_NETWORK_KEYS``, at
    the top of the section) moved into ``network``; a key set in both places is refused."""
    if not isinstance(model, dict) or not FLAT_NETWORK_KEYS.keys() & model.keys():
        return model
    network = model.get("network") or {}
    if not isinstance(network, dict):
        return model  # _from_dict says what is wrong with it
    upgraded, moved = {}, dict(network)
    for key, value in model.items():
        if key not in FLAT_NETWORK_KEYS:
            upgraded[key] = value
            continue
        if key in network:
            raise ConfigError(f"{where}: both 'model.{key}' and its new name 'model.network.{key}' are set")
        if warn:
            _deprecated(where, f"model.{key}", f"model.network.{key}", stacklevel=4)
        moved[key] = value
    upgraded["network"] = moved
    return upgraded


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(names))})")
        if key == "model" and cls is TrainConfig:
            value = _from_dict(ModelConfig, value, f"{where}.model")
        if key == "rl" and cls is TrainConfig:
            value = _from_dict(RLConfig, value, f"{where}.rl")
        kwargs[key] = value
    return cls(**kwargs)


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """The ModelConfig of a checkpoint's idruid.json (older ones hold the backbone's settings flat)."""
    return _from_dict(ModelConfig, upgrade_model_keys(data, "model", warn=False), "model")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Load a preset by name (``shapes``) or a YAML file, then apply ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"config '{name_or_path}': no such file or preset (presets: {', '.join(list_presets())})"
        )
    try:
        data = yaml.safe_load(read_text(path, ConfigError)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML ({err})") from None
    config = _from_dict(TrainConfig, upgrade_keys(data, str(path)), path.stem)
    for item in overrides or []:
        apply_override(config, item)
    return config


def apply_override(config: TrainConfig, item: str) -> None:
    """Apply ``key=value`` (``model.use_idm=false``), the value read as the type of the setting
    (``parse_setting``), so that ``mixed_precision=no`` stays the string "no"."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value")
    key, raw = item.split("=", 1)
    target: Any = config
    parts = key.strip().lstrip("-").split(".")
    for part in parts[:-1]:
        if not hasattr(target, part):
            raise ConfigError(f"override '{item}': unknown key '{part}'")
        target = getattr(target, part)
    section = ".".join(parts[:-1])
    name = _renamed(section, parts[-1], f"override '{item}'", warn=True)
    if section == "model" and name in FLAT_NETWORK_KEYS:
        _deprecated(f"override '{item}'", f"model.{name}", f"model.network.{name}", stacklevel=3)
        target, section = target.network, "model.network"
    if section == "model.network":
        # the backbone's own setting: its type is known where the backbone is (models.registry,
        # resolve_network), which reads this text with parse_setting
        target[name] = raw.strip()
        return
    if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
        raise ConfigError(f"override '{item}': unknown key '{key}'")
    dotted = f"{section}.{name}" if section else name
    kind = typing.get_type_hints(type(target))[name]
    setattr(target, name, parse_setting(kind, raw, f"override '{item}': {dotted}"))


NULL_WORDS = ("null", "none", "")  # on a setting that may be None (``str | None``, ...)
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def parse_setting(kind: Any, raw: str, where: str) -> Any:
    """The text ``raw`` of a ``key=value`` override as a value of the setting's type ``kind``, so
    that a word means what the setting takes and not what YAML would make of it:

    - ``str``: the text itself (``no``, ``on``, ``none``, ``1e-4`` stay strings), surrounding
      blanks and one pair of matching quotes removed;
    - ``int`` / ``float``: the number (``1e-4``, ``1_000``; an integer setting refuses ``2.5``);
    - ``bool``: ``true`` / ``yes`` / ``on`` / ``1`` or ``false`` / ``no`` / ``off`` / ``0``, any case;
    - ``list[...]``: ``[a, b]`` or ``a,b``, each item read as the item type; ``[]`` is empty;
    - a setting that may be None (``str | None``, ``float | None``, ...): ``null``, ``none`` (any
      case) or nothing (``key=``) is None, anything else is read as the other type; quote the
      word (``rl.prompts='none'``) for the string.

    A value the type cannot take raises ConfigError naming ``where`` (the override and its key)."""
    text = raw.strip()
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        others = [arg for arg in args if arg is not type(None)]
        if text.lower() in NULL_WORDS:
            return None
        if len(others) == 1:
            return parse_setting(others[0], raw, where)
    elif kind is str:
        return _unquoted(text)
    elif kind is bool:
        if text.lower() in TRUE_WORDS + FALSE_WORDS:
            return text.lower() in TRUE_WORDS
        raise ConfigError(f"{where} takes true or false (yes/no, on/off, 1/0), got '{raw}'")
    elif kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise ConfigError(f"{where} takes {noun}, got '{raw}'") from None
    elif typing.get_origin(kind) is list and len(args) == 1:
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        items = inner.split(",") if inner.strip() else []
        return [parse_setting(args[0], item, f"{where}[{k}]") for k, item in enumerate(items)]
    elif dataclasses.is_dataclass(kind):
        raise ConfigError(f"{where} is a section: set its keys one by one (key.name=value)")
    return yaml.safe_load(raw)  # a type without a rule above (none of the configs' today)


def _unquoted(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
