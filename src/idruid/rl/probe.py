"""``idruid rl-probe``: does L_rl alone move a model the right way, on prompts it never trained on?

Trains a checkpoint on L_rl only (no L_ldm, no L_dis) with the RL stage of a preset and its
overrides, and every ``every`` iterations measures the held-out reward (idruid.rl.held_out: a
fixed set of prompt-only layouts sampled with the ODE from fixed noise, so that differences come
from the weights alone), on the prompts' geometry and on ``rl.held_out_off``'s. Writes
``probe.jsonl`` (one record per checkpoint: both held-out rewards and leakage rates, the rollouts'
reward, seconds, and the RL diagnostics averaged since the last record) and ``probe.png``. An
estimator must pass this before its Table 3 row is trusted, and a gain on the prompts' geometry
alone, or one paid for in leakage, is not one.

Under ``accelerate launch`` each of P processes rolls out ``rl.batch_size`` rollouts of its own
(idruid.rl.stage), the held-out sets are split over the ranks, and the main process writes: P
processes at ``rl.batch_size=B`` probe as one process at P x B.

``reward="brightness"`` swaps the detector for the image's mean brightness (0..10): a reward any
correct policy gradient raises quickly, to tell a sign or plumbing error from a weak signal.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..layout import Layout
from ..ranks import Ranks, check_joined
from .held_out import held_out_sets, measure_held_out
from .stage import RLStage, mean_rl_stats


class Brightness:
    """A reward with the interface of idruid.rl.rewards.LayoutReward: the mean pixel value on a
    0..10 scale, credited as one term per image."""

    def instance_rewards(self, images: np.ndarray, layouts: Sequence[Layout]) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32).mean(axis=(1, 2, 3)) / 25.5)[:, None]

    def __call__(self, images: np.ndarray, layouts: Sequence[Layout]) -> torch.Tensor:
        return self.instance_rewards(images, layouts).sum(dim=1)


def signal_fraction(gradients: torch.Tensor) -> float:
    """How much of one RL gradient is signal: |E g|^2 / E|g|^2, estimated without bias from K >= 2
    independent gradients (K, P) as the mean inner product of distinct pairs over the mean squared
    norm. 1 when every draw is the same vector, about 0 (it can dip below) when the draws are noise
    around a zero mean. Adam steps along a gradient's sign whatever this is, so a small fraction
    means that the update is mostly a random walk of the weights."""
    count = gradients.shape[0]
    if gradients.ndim != 2 or count < 2:
        raise ValueError(f"need at least two flattened gradients (K, P), got shape {tuple(gradients.shape)}")
    grads = gradients.double()
    squares = (grads * grads).sum(dim=1)
    total = grads.sum(dim=0)
    cross = (total @ total - squares.sum()) / (count * (count - 1))
    return float(cross / squares.mean())


def run_probe(
    config,
    model,
    out: str | Path,
    iterations: int = 60,
    lr: float = 1e-4,
    every: int = 15,
    held_out: int = 96,
    reward: str = "detector",
    progress: bool = True,
    checkpoint: str | None = None,
) -> list[dict]:
    """Run the probe; returns the records written to ``out/probe.jsonl``, beside ``config.yaml``
    and ``probe.json`` (the probe's own settings), which ``idruid report`` reads."""
    from accelerate import Accelerator

    from ..config import save_config

    accelerator = Accelerator()
    check_joined(accelerator)
    config.rl.check(accelerator.num_processes)
    main = accelerator.is_main_process
    out = Path(out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        settings = {"iterations": iterations, "lr": lr, "every": every, "held_out": held_out}
        settings.update(reward=reward, checkpoint=checkpoint or "embedded")
        (out / "probe.json").write_text(json.dumps(settings, indent=1))
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    network, optimizer = accelerator.prepare(model, optimizer)
    model = accelerator.unwrap_model(network)
    ranks = Ranks.of(accelerator)
    stage = RLStage(config, model, accelerator.device, ranks)
    if reward == "brightness":
        stage.reward = Brightness()
    if stage.reward is None:
        raise ValueError(f"rl.algorithm={config.rl.algorithm} has no reward to probe (use ppo or grpo)")
    measures = held_out_sets(config, stage.reward, held_out, model.latent_shape)
    records: list[dict] = []
    log_path = out / "probe.jsonl"
    if main:
        log_path.write_text("")
    started, window = time.time(), []

    def record(iteration: int) -> None:
        entry = {"iteration": iteration}
        entry.update({k.removeprefix("rl_"): v for k, v in measure_held_out(measures, model, ranks).items()})
        entry["seconds"] = time.time() - started
        if window:
            entry.update({f"rl_{k}": v for k, v in mean_rl_stats(window).items()})
            window.clear()
        records.append(entry)
        if main:
            with log_path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")

    record(0)
    model.train()
    for iteration in tqdm(range(1, iterations + 1), desc="rl-probe", disable=not (progress and main)):
        loss, stats = stage.loss(model, network)
        window.append(stats)
        if loss is not None:
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
        if iteration % every == 0 or iteration == iterations:
            record(iteration)
    if main:
        plot_probe(records, out / "probe.png")
    accelerator.wait_for_everyone()
    return records


def plot_probe(records: list[dict], path: Path) -> None:
    """Held-out and rollout reward against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    iterations = [r["iteration"] for r in records]
    ax.plot(iterations, [r["held_out_reward"] for r in records], "o-", label="held-out")
    if all("held_out_off_reward" in r for r in records):
        ax.plot(iterations, [r["held_out_off_reward"] for r in records], "^-", label="held-out, off geometry")
    rollout = [(r["iteration"], r["rl_reward"]) for r in records if r.get("rl_reward") is not None]
    if rollout:
        ax.plot(*zip(*rollout, strict=True), "s--", color="tab:grey", label="rollouts (mean since last)")
    ax.set(xlabel="RL iteration (L_rl alone)", ylabel="reward (Eq. 6)", title="rl-probe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
