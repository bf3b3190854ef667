"""One RL iteration of Algorithm 1 (lines 10-18) for the trainer: L_rl from prompt-only layouts.

ROLLOUT the actor on a batch of prompt-only layouts (``group_size`` rollouts per prompt) with the
SDE policy on a window of steps, REWARD the final images with the detector (Eq. 6), enqueue the
rollout in the action POOL, fit the CRITIC on it and on older pool entries (Eq. 7), then compute
the clipped policy-gradient loss (Eq. 8-10) on the rollouts with the current weights. The trainer
adds the result to L_ldm + lambda_dis * L_dis (Eq. 12) and takes one optimiser step for all of it.

What idruid implements, and why it differs from the paper's literal reading (docs/method.md):
- ``rl.update="fresh"``: the actor trains on the batch it just sampled, so its first update is
  on-policy (ratio 1) and the clip zeta matters only for the ``ppo_epochs - 1`` later reuses
  (DDPO, Flow-GRPO). ``"pool"``: a rollout drawn from the pool at every iteration, the paper's
  reading; with zeta = 1e-4 most older rollouts sit outside the clip and give no gradient.
- ``rl.baseline``: the critic phi(s_t) (Eq. 8), the group mean of the prompt's rollouts, or the
  batch mean. A critic joins the actor only after ``critic_warmup`` iterations and once its MSE on
  a fresh batch is within ``critic_gate`` x the within-prompt reward variance (the gate).
  ``algorithm="grpo"`` is the group baseline with each group divided by its own std (Flow-GRPO).
- Advantages are standardised and clipped (idruid.rl.advantages); the KL term goes to the actor
  frozen when RL started (``kl_to="reference"``) or to the rollout's old policy (``"old"``).
- ``rl.credit="instance"`` credits each instance's reward term to the log-density inside its box
  (idruid.rl.logprob.box_log_probs), with per-instance baselines; ``"visible"`` only where no
  smaller box lies over it (idruid.rl.logprob.front_masks).

``algorithm="sft"`` is Table 3 row 3 (no RL: see ``sft_batch``).

On P processes (idruid.ranks) each rank rolls out its own ``rl.batch_size`` rollouts: its rows of
the global batch of prompts (a group may span ranks) and of every noise draw. Rewards,
advantages and every logged statistic are taken over the global batch, the critic's gradients are
averaged over the ranks, and means whose count differs between ranks (per-instance credit) divide
by the global count, so P processes at ``rl.batch_size=B`` train as one process at P x B.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch.func import functional_call

from ..boxes import covering_cells
from ..config import ConfigError, TrainConfig
from ..data.shapes import image_to_tensor, prompt_only_layout, render_layout_scene
from ..layout import Layout, load_layouts
from ..ranks import SINGLE, Ranks
from ..sampling import model_layout_steps, to_uint8
from .advantages import clip_advantages, group_means, one_sign, standardise, within_group_variance
from .critic import Critic, critic_loss
from .logprob import box_log_probs, front_masks, gaussian_kl
from .pool import ActionPool
from .ppo import ppo_loss
from .rewards import build_reward
from .rollout import Rollout, policy_log_probs, rollout, rollout_settings, sde_window

log = logging.getLogger(__name__)


@dataclass
class RLStats:
    """What one iteration logs (None where the iteration did not compute it)."""

    reward: float | None = None  # mean reward of the rollouts sampled this iteration
    within_var: float | None = None  # their reward variance within a prompt's group
    critic_loss: float | None = None  # mean fitting loss of this iteration's critic updates (Eq. 7)
    critic_mse: float | None = None  # the critic's image-level MSE on the fresh batch, before fitting it
    actor: float | None = None  # 1 when the actor trained this iteration, 0 while the critic gate held it
    l_rl: float | None = None
    kl: float | None = None
    clip_fraction: float | None = None
    ratio: float | None = None  # mean PPO ratio
    age: int | None = None  # RL iterations since the trained rollouts were sampled (0: on-policy)
    one_sign: float | None = None  # 1 when every advantage of the batch had one sign
    first_step: int | None = None  # the SDE window's first sampling step


def mean_rl_stats(window: list[RLStats]) -> dict[str, float | None]:
    """Each RL diagnostic averaged over the iterations of a log interval (those that have it), so
    a log record with ``log_every`` > 1 reads as the interval, not as its last iteration; the clip
    fraction also by the age of the rollouts it was measured on (``clip_fraction_age{a}``)."""
    means = {}
    for field in fields(RLStats):
        values = [getattr(stats, field.name) for stats in window if getattr(stats, field.name) is not None]
        means[field.name] = sum(values) / len(values) if values else None
    by_age: dict[int, list[float]] = {}
    for stats in window:
        if stats.age is not None and stats.clip_fraction is not None:
            by_age.setdefault(stats.age, []).append(stats.clip_fraction)
    for age, values in sorted(by_age.items()):
        means[f"clip_fraction_age{age}"] = sum(values) / len(values)
    return means


class RLStage:
    """Holds what the RL stage keeps between iterations: the rollouts being trained, the action
    pool, the critic and its optimiser, the gate, and the frozen reference of the KL term."""

    def __init__(self, config: TrainConfig, model, device: torch.device | str = "cpu", ranks: Ranks = SINGLE):
        self.config, self.rl = config, config.rl
        rl = self.rl
        self.device = torch.device(device)
        self.ranks = ranks
        self.iteration = 0  # RL iterations run
        self.batches = 0  # prompt batches drawn (where the prompt-only set continues)
        self.critic_updates = 0  # iterations the critic has been fitted
        self.gate_open = False
        self.current: Rollout | None = None  # the fresh batch the actor trains on (update="fresh")
        self.reference: dict[str, torch.Tensor] | None = None
        self.pool = ActionPool(rl.pool_size)
        grpo = rl.algorithm == "grpo"
        self.baseline = "group" if grpo else rl.baseline
        self.advantage_std = "group" if grpo else rl.advantage_std
        self.prompt_file = None if rl.prompts == "shapes" else load_layouts(rl.prompts)
        if self.prompt_file is not None and rl.algorithm == "sft":
            raise ConfigError(
                "rl.algorithm=sft trains on the prompt-only layouts' rendered images, which only "
                "the shapes world has (rl.prompts=shapes)"
            )
        self.reward = build_reward(rl, str(self.device)) if rl.algorithm in ("ppo", "grpo") else None
        self.critic = None
        if rl.algorithm == "ppo" and self.baseline == "critic":
            self.critic = Critic(
                model.latent_shape[0], model.text_encoder.pooled_size, hidden=rl.critic_hidden
            ).to(self.device)
            self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=rl.critic_lr)
        self.window_generator = torch.Generator().manual_seed(config.seed)

    # ------------------------------------------------------------------ data
    def next_layouts(self) -> list[Layout]:
        """This rank's next prompt-only batch of ``rl.batch_size`` rollouts. An iteration's global
        batch is P x batch_size / group_size prompts, each repeated group_size times in a row, from
        the shapes world's generator or the layout file ``rl.prompts`` read in order (cycled);
        rank r takes rows [r x batch_size, (r + 1) x batch_size) of it, so a group may span two
        ranks (as Flow-GRPO's DistributedKRepeatSampler lets it: the group statistics are taken
        over the gathered batch) and the ranks' batches in rank order are one process's batch."""
        group = 1 if self.rl.algorithm == "sft" else self.rl.group_size
        per_rank, world = self.rl.batch_size, self.ranks.world
        first_row = self.ranks.rank * per_rank
        first, last = first_row // group, (first_row + per_rank - 1) // group  # this rank's prompts
        start = self.batches * (world * per_rank // group)
        self.batches += 1
        layouts = [self._prompt(start + k) for k in range(first, last + 1)]
        rows = [layout for layout in layouts for _ in range(group)]
        skip = first_row - first * group
        return rows[skip : skip + per_rank]

    def _prompt(self, index: int) -> Layout:
        """Prompt-only layout ``index`` of the stream."""
        if self.prompt_file is not None:
            return self.prompt_file[index % len(self.prompt_file)]
        rl = self.rl
        return prompt_only_layout(
            index, rl.prompt_seed, resolution=self.config.model.resolution, geometry=rl.prompt_geometry
        )

    def sft_batch(self) -> tuple[torch.Tensor, list[Layout]]:
        """Table 3 row 3: the next prompt-only layouts with their rendered images (B, C, H, W)."""
        layouts = self.next_layouts()
        images = [
            image_to_tensor(render_layout_scene(layout, self.config.model.resolution)) for layout in layouts
        ]
        return torch.stack(images).to(self.device), layouts

    # ------------------------------------------------------------------ helpers
    @property
    def per_instance(self) -> bool:
        return self.rl.credit in ("instance", "visible")

    def _critic_values(self, model, recorded: Rollout, cond) -> torch.Tensor:
        """phi(s_t) for every recorded state: (K, B), or the instances' scores (K, B, N)."""
        steps, batch = recorded.log_prob.shape
        values = self.critic(
            recorded.x_t.to(self.device).flatten(0, 1),
            model.process.unit_time(recorded.times[:-1]).to(self.device).repeat_interleave(batch),
            cond.caption_pooled.repeat(steps, 1, 1),
            cond.boxes.repeat(steps, 1, 1),
            cond.valid.repeat(steps, 1),
            per_instance=self.per_instance,
        )
        return values.view(steps, batch, *values.shape[1:])

    def _rewards(self, recorded: Rollout, cond) -> torch.Tensor:
        """The credited rewards: (B,), or per instance (B, N) padded like ``cond``."""
        if not self.per_instance:
            return recorded.reward.to(self.device)
        if recorded.instance_reward is None:
            raise RuntimeError(
                "the action pool holds rollouts without per-instance rewards: was the run resumed "
                "with rl.credit changed to 'instance'? Resume with the credit it started with"
            )
        return _pad_instances(recorded.instance_reward.to(self.device), cond)

    def _box_log_probs(
        self, recorded: Rollout, scale: torch.Tensor, cond, *means: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The recorded actions re-scored per instance box under each of the policy ``means``
        (K, B, C, H, W), with step scales (K, B, 1, 1, 1): one (K, B, N) tensor per mean. The box
        masks are built once for all of them."""
        steps, batch = recorded.log_prob.shape
        x_next = recorded.x_next.to(self.device).flatten(0, 1)
        masks = covering_cells(cond.boxes, *x_next.shape[-2:]) * cond.valid[..., None]  # (B, N, H * W)
        if self.rl.credit == "visible":
            masks = front_masks(masks, cond.boxes)
        masks = masks.repeat(steps, 1, 1)
        return tuple(
            box_log_probs(x_next, mean.flatten(0, 1), scale.flatten(0, 1), masks).view(steps, batch, -1)
            for mean in means
        )

    def _policy(self, model, recorded: Rollout, network, detach_uncond: bool):
        rl = self.rl
        return policy_log_probs(
            model,
            recorded,
            settings=rollout_settings(self.config),
            noise_level=rl.noise_level,
            network=network,
            eta=rl.eta,
            detach_uncond=detach_uncond,
        )

    def _reference_means(self, model, recorded: Rollout) -> torch.Tensor:
        """The frozen reference policy's means of the recorded steps (K, B, C, H, W)."""

        def reference(*args, **kwargs):
            return functional_call(model, self.reference, args, kwargs, strict=False)

        with torch.no_grad():
            return self._policy(model, recorded, reference, detach_uncond=False)[1]

    # ------------------------------------------------------------------ rollouts and critic
    def _sample(self, model, stats: RLStats) -> Rollout:
        """ROLLOUT + REWARD a fresh batch, enqueue it and fit the critic (actor untouched)."""
        rl = self.rl
        layouts = self.next_layouts()
        first_step, length = sde_window(rl.sampling_steps, rl.window, rl.rl_fraction, self.window_generator)
        was_training = model.training
        model.eval()
        fresh = rollout(
            model,
            layouts,
            settings=rollout_settings(self.config),
            rl_steps=length,
            noise_level=rl.noise_level,
            eta=rl.eta,
            first_step=first_step,
            ranks=self.ranks,
        )
        model.train(was_training)
        instance_terms = self.reward.instance_rewards(to_uint8(fresh.images), layouts).float()  # (B, N)
        fresh.reward = instance_terms.sum(dim=1)
        fresh.instance_reward = instance_terms if self.per_instance else None
        fresh.iteration = self.iteration
        self.pool.add(fresh)
        rewards = self.ranks.gather(fresh.reward)  # the global batch's (P x B,)
        stats.reward, stats.first_step = float(rewards.mean()), first_step
        if rl.group_size >= 2:
            stats.within_var = within_group_variance(rewards, rl.group_size)
        if self.critic is not None:
            self._fit_critic(model, fresh, stats)
        return fresh

    def _fit_critic(self, model, fresh: Rollout, stats: RLStats) -> None:
        """Eq. 7: measure the critic on the fresh batch (before it has seen it), then fit it on that
        batch and on ``critic_epochs - 1`` rollouts replayed from the pool. On P processes each rank
        fits on its rows and the gradients are averaged (the same pool entry is drawn on every
        rank: one seeded stream), so every rank holds the same critic, that of one process."""
        cond = model.encode_text(fresh.layouts).to(self.device)
        with torch.no_grad():
            values = self._critic_values(model, fresh, cond)
            image_values = values.sum(dim=-1) if self.per_instance else values
            squared = (image_values - fresh.reward.to(self.device)) ** 2
            stats.critic_mse = self.ranks.mean(float(squared.mean()), squared.numel())
        losses = []
        for update in range(self.rl.critic_epochs):
            entry = fresh if update == 0 else self.pool.draw()
            entry_cond = cond if entry is fresh else model.encode_text(entry.layouts).to(self.device)
            values = self._critic_values(model, entry, entry_cond)
            valid, count = None, None
            if self.per_instance:
                valid = entry_cond.valid[None]
                count = self.ranks.divisor(valid.expand_as(values))
            loss = critic_loss(values, self._rewards(entry, entry_cond)[None].expand_as(values), valid, count)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.ranks.average_gradients(self.critic.parameters())
            self.critic_optimizer.step()
            losses.append(self.ranks.mean(loss.item()))
        self.critic_updates += 1
        stats.critic_loss = sum(losses) / len(losses) if losses else None
        self._update_gate(stats)

    def _update_gate(self, stats: RLStats) -> None:
        """Open the gate once the critic is good enough to be a baseline (it stays open)."""
        rl = self.rl
        if self.gate_open or self.critic_updates <= rl.critic_warmup:  # warm-up: actor frozen
            return
        if rl.critic_gate <= 0 or stats.critic_mse <= rl.critic_gate * stats.within_var:
            self.gate_open = True
        elif self.critic_updates >= rl.critic_gate_max:
            self.gate_open = True
            log.warning(
                "RL: the critic's MSE %.3f is still above %g x the within-prompt variance %.3f after %d "
                "iterations (rl.critic_gate_max): the actor starts anyway",
                stats.critic_mse,
                rl.critic_gate,
                stats.within_var,
                self.critic_updates,
            )

    @property
    def actor_ready(self) -> bool:
        return self.critic is None or self.gate_open

    # ------------------------------------------------------------------ advantages
    def advantages(self, model, recorded: Rollout, cond) -> torch.Tensor:
        """Standardised, clipped advantages of this rank's recorded steps: (K, B), or (K, B, N) per
        instance (``cond``'s padding)."""
        return self._own_rows(self.global_advantages(model, recorded, cond)[0], cond)

    def _own_rows(self, values: torch.Tensor, cond) -> torch.Tensor:
        """This rank's rows (K, B[, N]) of global-batch values (K, P x B[, N'])."""
        mine = values[:, self.ranks.rows(cond.valid.shape[0])]
        return mine[..., : cond.valid.shape[1]] if self.per_instance else mine

    def global_advantages(self, model, recorded: Rollout, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """The advantages of the global batch's recorded steps (K, P x B), or (K, P x B, N) per
        instance, and their 0/1 weight: the baseline and the standardisation see the gathered
        batch, as one process would (one process: its own batch)."""
        rl = self.rl
        steps = recorded.log_prob.shape[0]
        rewards = self._rewards(recorded, cond)  # (B,) or (B, N)
        weight = cond.valid.float() if self.per_instance else torch.ones_like(rewards)
        ragged = 1 if self.per_instance else None  # instances: padded to the largest layout
        weight = self.ranks.gather(weight, ragged=ragged)
        if self.baseline == "critic":
            with torch.no_grad():
                advantage = rewards[None] - self._critic_values(model, recorded, cond)
            advantage = self.ranks.gather(advantage, dim=1, ragged=None if ragged is None else 2)
        else:
            rewards = self.ranks.gather(rewards, ragged=ragged)
            if self.baseline == "group":
                baseline = group_means(rewards, rl.group_size)
            else:
                baseline = (rewards * weight).sum() / weight.sum().clamp(min=1.0)
            advantage = (rewards - baseline)[None].expand(steps, *rewards.shape)
        weight = weight[None].expand_as(advantage)
        advantage = standardise(advantage * weight, self.advantage_std, rl.group_size, weight, batch_dim=1)
        return clip_advantages(advantage, rl.advantage_clip) * weight, weight

    # ------------------------------------------------------------------ one iteration
    def loss(self, model, network=None) -> tuple[torch.Tensor | None, RLStats]:
        """L_rl for this iteration (None while the critic gate holds the actor), and what to log.

        model: the actor (for sampling and text encoding); network: the module to call for the
        differentiable predictions (the accelerate-prepared model), default ``model``.
        """
        rl = self.rl
        self.iteration += 1
        stats = RLStats()
        if self.reference is None and rl.kl_to == "reference" and rl.kl_weight > 0:
            self.reference = {
                name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad
            }
        stale = self.current is None or self.iteration - self.current.iteration >= rl.ppo_epochs
        if rl.update == "pool" or stale or not self.actor_ready:
            self.current = self._sample(model, stats)
        stats.actor = float(self.actor_ready)
        if not self.actor_ready:
            return None, stats
        # ------------------------------------------------ ADVANTAGES (Eq. 8, or group-relative)
        trained = self.current if rl.update == "fresh" else self.pool.draw()
        cond = model.encode_text(trained.layouts).to(self.device)
        global_advantage, global_weight = self.global_advantages(model, trained, cond)
        advantage = self._own_rows(global_advantage, cond)
        # ------------------------------------------------ PPO (Eq. 9-10)
        log_prob, mean, scale = self._policy(model, trained, network, rl.detach_uncond)
        fraction = self.config.layout_fraction
        if not log_prob.requires_grad and model_layout_steps(model, rl.sampling_steps, fraction) == 0:
            # torch would say "element 0 of tensors does not require grad" at the backward
            raise ConfigError(
                f"the RL stage trains nothing: the model's trained weights are its layout branch, and "
                f"layout_fraction {fraction} of rl.sampling_steps {rl.sampling_steps} runs it on no "
                "rollout step; raise either (or train weights outside the branch: LoRA)"
            )
        old_mean = trained.mean.to(self.device)
        kl = None
        if rl.kl_weight > 0:
            target = old_mean if rl.kl_to == "old" else self._reference_means(model, trained)
            kl = gaussian_kl(mean.flatten(0, 1), target.flatten(0, 1), scale.flatten(0, 1))
        old_log_prob, weight, count = trained.log_prob.to(self.device), None, None
        if self.per_instance:
            log_prob, old_log_prob = self._box_log_probs(trained, scale, cond, mean, old_mean)
            weight = cond.valid[None].expand_as(advantage)
            count = self.ranks.divisor(weight)  # the global count / P: DDP's average is the global mean
        advantage = advantage.to(log_prob.dtype)
        terms = ppo_loss(log_prob, old_log_prob, advantage, rl.clip_range, kl, rl.kl_weight, weight, count)
        mean_over_ranks = self.ranks.mean
        stats.l_rl, stats.kl = mean_over_ranks(terms.loss.item()), mean_over_ranks(terms.kl.item())
        ratio = terms.ratio if weight is None else terms.ratio[weight]
        stats.clip_fraction = mean_over_ranks(float(terms.clip_fraction))
        stats.ratio = mean_over_ranks(float(ratio.mean()), ratio.numel())
        stats.age = self.iteration - trained.iteration
        stats.one_sign = float(one_sign(global_advantage, global_weight))
        return terms.loss, stats

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """What every rank holds alike (accelerate writes it once); each rank's rollouts are in
        ``rollouts_file`` (``save_rollouts``)."""
        state = {
            "iteration": self.iteration,
            "batches": self.batches,
            "critic_updates": self.critic_updates,
            "gate_open": self.gate_open,
            "processes": self.ranks.world,
            "reference": self.reference,
            "window_generator": self.window_generator.get_state(),
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        saved_by = state.get("processes", 1)
        if saved_by != self.ranks.world:
            raise ConfigError(
                f"the RL stage's checkpoint was written by {saved_by} process(es) and this run has "
                f"{self.ranks.world}: each rank's rollouts and random state belong to its rank, so "
                f"resume with the same count (accelerate launch --num_processes {saved_by})"
            )
        self.iteration, self.critic_updates = state["iteration"], state["critic_updates"]
        self.batches, self.gate_open = state["batches"], state["gate_open"]
        self.reference = state.get("reference")
        self.window_generator.set_state(state["window_generator"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def rollouts_file(self, folder: str | Path) -> Path:
        return Path(folder) / f"rl_rollouts_{self.ranks.rank}.pt"

    def save_rollouts(self, models, weights, output_dir: str) -> None:
        """accelerate's save-state hook (every rank): this rank's action pool and current rollout."""
        state = {
            "pool": self.pool.state_dict(),
            "current": None if self.current is None else self.current.state_dict(),
        }
        torch.save(state, self.rollouts_file(output_dir))

    def load_rollouts(self, models, input_dir: str) -> None:
        """accelerate's load-state hook (every rank): this rank's rollouts."""
        state = torch.load(self.rollouts_file(input_dir), map_location="cpu", weights_only=False)
        self.pool.load_state_dict(state["pool"])
        current = state.get("current")
        self.current = None if current is None else Rollout.from_state_dict(current)


def _pad_instances(terms: torch.Tensor, cond) -> torch.Tensor:
    """(B, n) per-instance values of a batch's largest layout -> (B, N) as the conditioning pads."""
    return torch.nn.functional.pad(terms, (0, cond.valid.shape[1] - terms.shape[1]))
