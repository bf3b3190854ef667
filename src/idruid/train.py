"""Training on accelerate: L_act = L_ldm + lambda_dis * L_dis + lambda_rl * L_rl (Eq. 11-12).

Reads top to bottom: LOAD (config, model, data, RL stage), then per step PAIRED LOSSES (sample
noise, predict, L_ldm and L_dis: idruid.stage1), RL (from ``rl.start_fraction`` of the steps on,
Algorithm 1: idruid.rl.stage), UPDATE, EMA (idruid.ema), LOG (idruid.train_log) and CHECKPOINT. A run
folder holds ``config.yaml``, ``log.jsonl``, ``checkpoints/step-*`` (accelerate state: weights,
optimiser, scheduler, RNG, EMA and the RL stage's critic and action pool, each written whole or
not at all: train_state.py; the newest two are kept and a rerun of the same command resumes from
the newest complete one) and, at the end, ``model/`` (the EMA weights as an idruid checkpoint)
and ``loss.png``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpoint import EMBEDDED_CHECKPOINT, describe_base, load_trained_weights, save_checkpoint
from .config import TrainConfig, check_data, save_config
from .ema import EMA, ema_count
from .models import build_model
from .models.registry import resolve_network
from .ranks import Ranks, check_joined
from .rl.held_out import held_out_sets, measure_held_out
from .rl.stage import RLStage, RLStats, mean_rl_stats
from .stage1 import collate, paired_dataset, paired_losses
from .train_log import gradient_norms, mean_over_processes, plot_losses
from .train_state import (
    find_resumable,
    load_training_state,
    resumed_batches,
    save_trainable_state_only,
    save_training_state,
    trim_log,
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
    check_joined(accelerator)
    set_seed(config.seed)  # the same stream on every rank: paired_draws relies on it
    resolve_network(config.model)  # the backbone's settings in full, checked before anything is written
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")
    config.rl.check(accelerator.num_processes)
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
    # model: the LayoutModel (encoders, process, weights); network: what accelerate prepared from
    # it, called for the differentiable predictions (the names of RLStage.loss and paired_losses)
    network, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    ema = EMA(params, config.ema_decay)
    accelerator.register_for_checkpointing(ema)
    model = accelerator.unwrap_model(network)
    folder = config.model.base_model
    base = describe_base(folder, config.model.backbone) if folder is not None else None
    save_trainable_state_only(accelerator, model, base)  # no frozen backbone or text encoders
    rl = config.rl
    ranks = Ranks.of(accelerator)
    stage = RLStage(config, model, accelerator.device, ranks) if rl.algorithm != "none" else None
    if stage is not None:
        accelerator.register_for_checkpointing(stage)  # what all ranks share, written once
        accelerator.register_save_state_pre_hook(stage.save_rollouts)  # each rank's own rollouts
        accelerator.register_load_state_pre_hook(stage.load_rollouts)
    rl_start = int(rl.start_fraction * config.steps)
    # the EMA's warm-up restarts when RL joins: the exported model then reflects the RL stage, as
    # a separate second-stage run's does (init_from), instead of averaging mostly stage-1 weights
    ema_origin = rl_start if stage is not None and rl.restart_ema else 0
    held_out = {}  # name -> HeldOutReward (the prompts' geometry, and rl.held_out_off's)
    if stage is not None and stage.reward is not None and rl.held_out > 0:  # split over the ranks
        held_out = held_out_sets(config, stage.reward, rl.held_out, model.latent_shape)

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
    held_out_values: dict[str, float] = {}  # held-out rewards not yet logged, measured at held_out_step
    held_out_step = 0
    network.train()
    while step < config.steps:
        for batch in data:
            if step >= config.steps:
                break
            if held_out and step >= rl_start and (step - rl_start) % rl.held_out_every == 0:
                held_out_step = step  # before this step's update
                held_out_values = measure_held_out(held_out, model, ranks)
            # ---------------------------------------------------- PAIRED LOSSES
            loss, l_ldm, l_dis = paired_losses(
                model, network, batch["image"], batch["layouts"], config, accelerator
            )
            # ---------------------------------------------------- RL (Algorithm 1, lines 9-18)
            l_rl, paired_loss = None, loss
            if stage is not None and step >= rl_start and (step - rl_start) % rl.every == 0:
                if rl.algorithm == "sft":
                    images, layouts = stage.sft_batch()
                    l_rl = paired_losses(model, network, images, layouts, config, accelerator)[0]
                else:
                    l_rl, rl_stats = stage.loss(model, network)
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
                grad_norms.append(gradient_norms(params, paired_grads))
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
                mean_loss, mean_ldm, mean_dis, mean_rl = mean_over_processes(
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
                if held_out and step == config.steps:
                    held_out_step = step  # after the last update
                    held_out_values = measure_held_out(held_out, model, ranks)
                if held_out_values:
                    record["rl_held_out_step"] = held_out_step
                    record.update(held_out_values)
                    held_out_values = {}
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
        save_checkpoint(model, export, {"train_steps": step, "sampling": sampling})
        plot_losses(out / "log.jsonl", out / "loss.png")
    accelerator.end_training()
    return export
