"""Training on accelerate: L_act = L_ldm + lambda_dis * L_dis + lambda_rl * L_rl (Eq. 11-12).

Reads top to bottom: LOAD (config, model, data, RL stage), then per step PAIRED LOSSES (sample
noise, predict, L_ldm and L_dis), RL (from ``rl.start_fraction`` of the steps on, Algorithm 1:
idruid.rl.stage), UPDATE, EMA, LOG and CHECKPOINT. A run folder holds ``config.yaml``,
``log.jsonl``, ``checkpoints/step-*`` (accelerate state: weights, optimiser, scheduler, RNG, EMA
and the RL stage's critic and action pool, each written whole or not at all: train_state.py; the
newest two are kept and a rerun of the same command resumes from the newest complete one) and,
at the end, ``model/`` (the EMA weights as an idruid checkpoint) and ``loss.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .boxes import covering_cells
from .checkpoint import EMBEDDED_CHECKPOINT, describe_base, load_trained_weights, save_checkpoint
from .config import TrainConfig, check_data, save_config
from .data.shapes import ShapesPairedDataset
from .losses import disentangle_loss
from .models import build_model
from .models.base import LayoutModel
from .rl.held_out import HeldOutReward
from .rl.stage import RLStage, RLStats
from .train_state import (
    accept_older_states,
    find_resumable,
    load_training_state,
    resumed_batches,
    save_trainable_state_only,
    save_training_state,
    trim_log,
    without_rows,
)


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([it["image"] for it in items]), "layouts": [it["layout"] for it in items]}


class EMA:
    """Exponential moving average of the trainable weights (what gets exported)."""

    def __init__(self, parameters, decay: float):
        self.decay = decay
        self.parameters = list(parameters)
        self.shadow = [p.detach().clone() for p in self.parameters]
        self.older_rows: list[int] = []  # rows of an older idruid's saved shadow to drop (train_state)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the current weights; ``step`` counts from the EMA's (re)start."""
        decay = min(self.decay, (1 + step) / (10 + step))  # warm start, as in diffusers' EMAModel
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.parameters], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters) -> None:
        for shadow, param in zip(self.shadow, parameters, strict=True):
            param.copy_(shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        saved_rows = state["shadow"]
        if len(saved_rows) == len(self.shadow) + len(self.older_rows):
            saved_rows = without_rows(saved_rows, self.older_rows)
        for shadow, saved in zip(self.shadow, saved_rows, strict=True):
            shadow.copy_(saved)


def ema_count(step: int, origin: int) -> int:
    """The EMA's step count for its warm-up: from ``origin`` on (where it restarts), else from 0."""
    return step - origin if step >= origin else step


def idc_loss(attention_maps: list, boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L_dis averaged over the IDM layers; each layer left (attn_pos, attn_neg, grid), maps
    (B, N, heads, h * w) on its own token grid (one for MM-DiT, two sizes in a UNet).

    The model drops instance slots that no sample uses, so N may be below the padded 10.
    """
    num = attention_maps[0][0].shape[1]
    boxes, valid = boxes[:, :num], valid[:, :num]
    masks = {}
    losses = []
    for pos, neg, grid in attention_maps:
        if grid not in masks:
            masks[grid] = covering_cells(boxes, *grid) * valid.unsqueeze(-1).to(boxes.dtype)
        losses.append(disentangle_loss(pos, neg, masks[grid], valid))
    return torch.stack(losses).mean()


def paired_draws(
    x0: torch.Tensor, config: TrainConfig, process, rank: int = 0, world: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt and layout dropout (B,), noise like x0 (B, C, H, W) and training times t (B,) of
    the diffusion ``process`` for this process rank.

    Every process draws the whole global batch (world x B rows) from the same seeded stream and
    keeps rows [rank * B, (rank + 1) * B), the rows of the images its data shard holds. So P
    processes at batch B train on exactly the draws of one process at batch P x B, and no rank
    repeats another's noise; on one process this is the plain draw of B rows.
    """
    b = x0.shape[0]
    total, rows = b * world, slice(rank * b, (rank + 1) * b)
    drop_prompt = (torch.rand(total) < config.drop_prompt)[rows]
    drop_layout = (torch.rand(total) < config.drop_layout)[rows]
    noise = torch.randn((total, *x0.shape[1:]), dtype=x0.dtype, device=x0.device)[rows]
    t = process.train_times(total, config.sigma_sampling, device=x0.device)[rows]
    return drop_prompt, drop_layout, noise, t


def paired_losses(
    model, raw_model: LayoutModel, images: torch.Tensor, layouts: list, config: TrainConfig, accelerator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """L_ldm + lambda_dis * L_dis, L_ldm (Eq. 11; noise prediction for an eps backbone) and L_dis
    (Eq. 4, None without IDC) on a batch of paired images (B, 3, H, W) in [-1, 1].

    L_dis is a softplus of batch means, so across processes it is taken per process (what each
    rank's gradient sees); L_ldm is a plain mean and matches one process at the global batch.
    """
    process = raw_model.process
    x0 = raw_model.encode_images(images)  # latents: the images themselves in pixel space
    drop_prompt, drop_layout, noise, t = paired_draws(
        x0, config, process, accelerator.process_index, accelerator.num_processes
    )
    cond = raw_model.encode_text(layouts, drop_prompt, drop_layout).to(x0.device)
    x_t = process.add_noise(x0, noise, t)
    use_idc = config.model.use_idm and config.lambda_dis > 0
    with accelerator.autocast():
        prediction, maps = model(x_t, t, cond, record_attention=use_idc)
    l_ldm = process.loss(prediction, x0, noise)
    if not use_idc:
        return l_ldm, l_ldm, None
    l_dis = idc_loss(maps, cond.boxes, cond.valid & cond.enabled.bool()[:, None])
    return l_ldm + config.lambda_dis * l_dis, l_ldm, l_dis


def paired_dataset(config: TrainConfig):
    """The paired training set of ``config.data``: items {"image": (C, H, W) in [-1, 1], "layout"}."""
    if config.data == "layoutsam":
        from .data.layoutsam_train import LayoutSamPairedDataset

        return LayoutSamPairedDataset(
            config.data_path,
            config.image_root,
            config.model.resolution,
            captions=config.captions,
            skip_missing=config.skip_missing,
        )
    return ShapesPairedDataset(
        size=config.data_size,
        seed=config.data_seed,
        resolution=config.model.resolution,
        min_shapes=config.min_instances,
        max_shapes=config.max_instances,
    )


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then constant or cosine decay to zero at the last step."""
    warmup = max(1, config.warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if config.lr_schedule == "constant":
        return 1.0
    if config.lr_schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"lr_schedule '{config.lr_schedule}': expected 'constant' or 'cosine'")


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Run (or resume) stage-1 training; returns the exported model folder."""
    # ---------------------------------------------------------------- LOAD
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"launched as {launched} processes (WORLD_SIZE) but accelerate sees only this one, so each "
            "would train alone; on a machine without GPUs set ACCELERATE_USE_CPU=1 (see README)"
        )
    set_seed(config.seed)  # the same stream on every rank: paired_draws relies on it
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")
    config.rl.check()
    check_data(config)
    model = build_model(config.model)
    if config.init_from is not None:
        load_trained_weights(
            model, EMBEDDED_CHECKPOINT if config.init_from == "embedded" else config.init_from
        )
    if config.gradient_checkpointing:
        model.backbone.enable_gradient_checkpointing()  # diffusers' per-block torch checkpoint
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    lr_factor(config.warmup_steps, config)  # an unknown lr_schedule fails now, not after warm-up
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    dataset = paired_dataset(config)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, collate_fn=collate, num_workers=config.num_workers
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    ema = EMA(params, config.ema_decay)
    accelerator.register_for_checkpointing(ema)
    raw_model: LayoutModel = accelerator.unwrap_model(model)
    folder = config.model.base_model
    base = describe_base(folder, config.model.backbone) if folder is not None else None
    save_trainable_state_only(accelerator, raw_model, base)  # no frozen backbone or text encoders
    accept_older_states(raw_model, optimizer, ema)  # states that also held the unused parameters
    rl = config.rl
    stage = RLStage(config, raw_model, accelerator.device) if rl.algorithm != "none" else None
    if stage is not None:
        accelerator.register_for_checkpointing(stage)
    rl_start = int(rl.start_fraction * config.steps)
    # the EMA's warm-up restarts when RL joins: the exported model then reflects the RL stage, as
    # a separate second-stage run's does (init_from), instead of averaging mostly stage-1 weights
    ema_origin = rl_start if stage is not None and rl.restart_ema else 0
    held_out = None
    if stage is not None and stage.reward is not None and rl.held_out > 0 and accelerator.is_main_process:
        held_out = HeldOutReward(config, stage.reward, rl.held_out, raw_model.latent_shape)

    ckpt_dir = out / "checkpoints"
    latest, step, skipped = find_resumable(ckpt_dir)  # the newest complete one (train_state)
    for line in skipped:
        accelerator.print(line, flush=True)
    if latest is not None:
        load_training_state(accelerator, latest)
        accelerator.print(f"resuming from {latest} at step {step}", flush=True)

    batches_per_epoch = len(loader)
    data = resumed_batches(accelerator, loader, step % batches_per_epoch)  # loader itself at step 0
    if accelerator.is_main_process:  # records past the resumed step are logged again below
        dropped = trim_log(out / "log.jsonl", step)
        if dropped:
            accelerator.print(f"dropped {dropped} log.jsonl record(s) after step {step}", flush=True)
    log_file = open(out / "log.jsonl", "a")  # noqa: SIM115 (kept open for the whole run)
    bar = tqdm(
        total=config.steps, initial=step, desc="train", disable=not (progress and accelerator.is_main_process)
    )
    started, last_log = time.time(), step
    rl_window: list[RLStats] = []  # the RL iterations since the last log record
    grad_norms: list[tuple[float, float]] = []  # (|g_paired|, |g_rl|) measured since the last record
    held_out_value: tuple[int, float] | None = None  # (updates so far, held-out reward) not yet logged
    model.train()
    while step < config.steps:
        for batch in data:
            if step >= config.steps:
                break
            if held_out is not None and step >= rl_start and (step - rl_start) % rl.held_out_every == 0:
                held_out_value = (step, held_out(raw_model))  # before this step's update
            # ---------------------------------------------------- PAIRED LOSSES
            loss, l_ldm, l_dis = paired_losses(
                model, raw_model, batch["image"], batch["layouts"], config, accelerator
            )
            # ---------------------------------------------------- RL (Algorithm 1, lines 9-18)
            l_rl, paired_loss = None, loss
            if stage is not None and step >= rl_start and (step - rl_start) % rl.every == 0:
                if rl.algorithm == "sft":
                    images, layouts = stage.sft_batch()
                    l_rl = paired_losses(model, raw_model, images, layouts, config, accelerator)[0]
                else:
                    l_rl, rl_stats = stage.loss(raw_model, model)
                    rl_window.append(rl_stats)
                if l_rl is not None:
                    loss = loss + rl.lambda_rl * l_rl
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: loss is {loss.item()} (lower learning_rate?)")
            # ---------------------------------------------------- UPDATE + EMA
            optimizer.zero_grad(set_to_none=True)
            split = l_rl is not None and l_rl.requires_grad and paired_loss.requires_grad
            if split and not grad_norms and accelerator.num_processes == 1:
                # the two losses' graphs are disjoint: backward them one after the other to log
                # |g_rl| / |g_paired| (the gradient stepped on is the same sum), once per record
                accelerator.backward(paired_loss)
                paired_grads = [p.grad.detach().clone() if p.grad is not None else None for p in params]
                accelerator.backward(rl.lambda_rl * l_rl)
                grad_norms.append(_gradient_norms(params, paired_grads))
            else:
                accelerator.backward(loss)
            if config.grad_clip > 0:
                accelerator.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update(ema_count(step, ema_origin))
            step += 1
            bar.update(1)
            # ---------------------------------------------------- LOG
            if step % config.log_every == 0 or step == config.steps:
                rate = (step - last_log) / max(time.time() - started, 1e-9)
                started, last_log = time.time(), step
                mean_loss, mean_ldm, mean_dis, mean_rl = _mean_over_processes(
                    accelerator, [loss, l_ldm, l_dis, l_rl]
                )
                record = {
                    "step": step,
                    "loss": mean_loss,
                    "l_ldm": mean_ldm,
                    "l_dis": mean_dis,
                    "l_rl": mean_rl,
                    "lr": scheduler.get_last_lr()[0],
                    "steps_per_s": rate,
                }
                if rl_window:
                    record.update({f"rl_{k}": v for k, v in mean_rl_stats(rl_window).items()})
                    rl_window = []
                if grad_norms:
                    paired_norm, rl_norm = grad_norms[-1]
                    ratio = rl_norm / max(paired_norm, 1e-12)
                    record.update(rl_grad_paired=paired_norm, rl_grad_rl=rl_norm, rl_grad_ratio=ratio)
                    grad_norms = []
                if held_out is not None and step == config.steps:
                    held_out_value = (step, held_out(raw_model))  # after the last update
                if held_out_value is not None:
                    record["rl_held_out_step"], record["rl_held_out_reward"] = held_out_value
                    held_out_value = None
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}", l_dis=record["l_dis"] and f"{record['l_dis']:.4f}"
                )
                if accelerator.is_main_process:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
            # ---------------------------------------------------- CHECKPOINT
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_training_state(accelerator, ckpt_dir, step, config.keep_checkpoints)
        data = loader
    bar.close()
    log_file.close()

    accelerator.wait_for_everyone()
    export = out / "model"
    if accelerator.is_main_process:
        ema.copy_to(params)
        sampling = config.sampling_settings().to_dict()
        save_checkpoint(raw_model, export, {"train_steps": step, "sampling": sampling})
        plot_losses(out / "log.jsonl", out / "loss.png")
    accelerator.end_training()
    return export


def _mean_over_processes(accelerator: Accelerator, losses: list[torch.Tensor | None]) -> list[float | None]:
    """The logged losses: means over the processes of each rank's batch loss (None stays None), so
    the log of a P-process run reads as one process at the global batch."""
    nan = torch.tensor(math.nan, device=accelerator.device)
    values = torch.stack([nan if v is None else v.detach().float().reshape(()) for v in losses])
    means = accelerator.reduce(values, reduction="mean").tolist()
    return [None if v is None else mean for v, mean in zip(losses, means, strict=True)]


def mean_rl_stats(window: list[RLStats]) -> dict[str, float | None]:
    """Each RL diagnostic averaged over the iterations of a log interval (those that have it), so
    a log record with ``log_every`` > 1 reads as the interval, not as its last iteration; the clip
    fraction also by the age of the rollouts it was measured on (``clip_fraction_age{a}``)."""
    means = {}
    for field in dataclasses.fields(RLStats):
        values = [getattr(stats, field.name) for stats in window if getattr(stats, field.name) is not None]
        means[field.name] = sum(values) / len(values) if values else None
    by_age: dict[int, list[float]] = {}
    for stats in window:
        if stats.age is not None and stats.clip_fraction is not None:
            by_age.setdefault(stats.age, []).append(stats.clip_fraction)
    for age, values in sorted(by_age.items()):
        means[f"clip_fraction_age{age}"] = sum(values) / len(values)
    return means


def _gradient_norms(params: list, paired_grads: list) -> tuple[float, float]:
    """(|g_paired|, |g_rl|): the norm of the paired losses' gradient, saved before the RL loss's
    backward, and of what that backward added to the parameters' gradients."""
    paired = [g for g in paired_grads if g is not None]
    rl_parts = [
        p.grad - g if g is not None else p.grad
        for p, g in zip(params, paired_grads, strict=True)
        if p.grad is not None
    ]
    return _global_norm(paired), _global_norm(rl_parts)


def _global_norm(tensors: list[torch.Tensor]) -> float:
    """The L2 norm of all ``tensors`` taken as one vector."""
    return float(torch.stack([t.float().norm() for t in tensors]).norm()) if tensors else 0.0


X_KEYS = {"rl_held_out_reward": "rl_held_out_step"}  # measured at another step than their record
RL_DIAGNOSTICS = (  # log key(s), panel title
    (("rl_reward",), "RL: mean rollout reward (Eq. 6)"),
    (("rl_held_out_reward",), "held-out reward (fixed noise, ODE)"),
    (("rl_critic_mse", "rl_within_var", "rl_critic_loss"), "critic: fresh MSE, within-prompt var, fit"),
    (("rl_grad_ratio",), "|g_rl| / |g_ldm + g_dis|"),
    (("rl_kl",), "KL term (Eq. 10)"),
    (("rl_clip_fraction",), "PPO clip fraction"),
    (("rl_one_sign",), "share of batches with one-sign advantages"),
    (("rl_ratio",), "mean PPO ratio"),
)


def plot_losses(log_path: Path, out_path: Path) -> None:
    """Loss curves (L_ldm, L_dis) of a run and, with RL, the mean reward of the rollouts (paper
    Fig. 6, reward stability) and the diagnostics RL users watch (critic loss, KL, clip fraction,
    ratio), for people who would rather look than read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    panels = [
        (keys, title)
        for keys, title in RL_DIAGNOSTICS
        if any(r.get(key) is not None for r in rows for key in keys)
    ]
    columns = 4  # the first row: L_ldm, L_dis and the first two RL panels
    lines = 1 + math.ceil(max(0, len(panels) - 2) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(16, 3.2 * lines), squeeze=False)
    axes = axes.ravel()
    axes[0].plot(steps, [r["l_ldm"] for r in rows])
    axes[0].set(title="L_ldm (flow matching)", xlabel="step", yscale="log")
    dis = [r["l_dis"] if r["l_dis"] is not None else math.nan for r in rows]
    axes[1].plot(steps, dis, color="tab:orange")
    axes[1].axhline(math.log(2), ls="--", color="grey", lw=0.8)
    axes[1].set(title="L_dis (softplus(CAS+ - CAS-)); dashed: ln 2", xlabel="step")
    for ax, (keys, title) in zip(axes[2:], panels, strict=False):
        for key, color in zip(keys, ("tab:green", "tab:grey", "tab:olive"), strict=False):
            x_key = X_KEYS.get(key, "step")
            points = [(r[x_key], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([s for s, _ in points], [v for _, v in points], color=color, label=key)
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.set(title=title, xlabel="step")
    for ax in axes[2 + len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
