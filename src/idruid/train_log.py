"""What the training loop logs: each record's losses averaged over the processes, the norms of the
paired and RL gradients, and the loss and diagnostic curves of a run (``loss.png``). The RL
diagnostics averaged over a log interval (``mean_rl_stats``) live beside ``RLStats`` in
idruid.rl.stage, where `idruid rl-probe` reads them too; the name is still importable from here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from accelerate import Accelerator

from .rl.stage import mean_rl_stats as mean_rl_stats


def mean_over_processes(accelerator: Accelerator, losses: list[torch.Tensor | None]) -> list[float | None]:
    """The logged losses: means over the processes of each rank's batch loss (None stays None), so
    the log of a P-process run reads as one process at the global batch."""
    nan = torch.tensor(math.nan, device=accelerator.device)
    values = torch.stack([nan if v is None else v.detach().float().reshape(()) for v in losses])
    means = accelerator.reduce(values, reduction="mean").tolist()
    return [None if v is None else mean for v, mean in zip(losses, means, strict=True)]


def gradient_norms(params: list, paired_grads: list) -> tuple[float, float]:
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


# measured at another step than their record
X_KEYS = {
    f"rl_held_out{which}_{what}": "rl_held_out_step"
    for which in ("", "_off")
    for what in ("reward", "leakage")
}
RL_DIAGNOSTICS = (  # log key(s), panel title
    (("rl_reward",), "RL: mean rollout reward (Eq. 6)"),
    (("rl_held_out_reward", "rl_held_out_off_reward"), "held-out reward: prompts' geometry, off (ODE)"),
    (("rl_held_out_leakage", "rl_held_out_off_leakage"), "held-out leakage rate: prompts' geometry, off"),
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
