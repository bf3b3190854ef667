"""One RL iteration of Algorithm 1 (lines 10-18) for the trainer: L_rl from prompt-only layouts.

ROLLOUT the current actor on a batch of prompt-only layouts with the SDE policy on the first RL
steps, REWARD the final images with the detector (Eq. 6), enqueue the rollout in the action
POOL, update the CRITIC on it (Eq. 7), then draw a stored rollout at random and compute PPO's
loss on its recorded steps (Eq. 8-10) with the current weights. The trainer adds the result to
L_ldm + lambda_dis * L_dis (Eq. 12) and takes one optimiser step for all of it.

``RLConfig.algorithm`` picks the variant: "ppo" (I-DRUID), "grpo" (group-normalised advantages,
no critic, each prompt rolled out ``group_size`` times) or "sft" (no RL: the prompt-only layouts'
rendered images feed the paired losses, Table 3 row 3; see ``sft_batch``). ``RLConfig.credit``
picks what an advantage is credited to: the whole latent's log-density (the paper) or, per
instance, the log-density inside the instance's box (``idruid.rl.logprob.box_log_probs``), with
the instance's reward term and the critic's score of that instance as its baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, TrainConfig
from ..data.shapes import image_to_tensor, prompt_only_layout, render_layout_scene
from ..detectors import load_detector
from ..layout import Layout, box_masks, load_layouts
from ..sampling import to_uint8
from .critic import Critic, advantages, critic_loss
from .grpo import group_advantages
from .logprob import box_log_probs, gaussian_kl
from .pool import ActionPool
from .ppo import ppo_loss
from .rewards import LayoutReward
from .rollout import Rollout, policy_log_probs, rl_step_count, rollout


@dataclass
class RLStats:
    """What one iteration logs."""

    reward: float  # mean reward of the fresh rollout
    critic_loss: float | None = None
    l_rl: float | None = None
    kl: float | None = None
    clip_fraction: float | None = None
    ratio: float | None = None  # mean PPO ratio


class RLStage:
    """Holds what the RL stage keeps between iterations: critic, its optimiser, the action pool."""

    def __init__(self, config: TrainConfig, model, device: torch.device | str = "cpu"):
        self.config, self.rl = config, config.rl
        self.device = torch.device(device)
        self.rl_steps = rl_step_count(self.rl.steps, self.rl.rl_fraction)
        self.iteration = 0
        self.critic_updates = 0
        self.pool = ActionPool(self.rl.pool_size)
        self.prompt_file = None if self.rl.prompts == "shapes" else load_layouts(self.rl.prompts)
        if self.prompt_file is not None and self.rl.algorithm == "sft":
            raise ConfigError(
                "rl.algorithm=sft trains on the prompt-only layouts' rendered images, which only "
                "the shapes world has (rl.prompts=shapes)"
            )
        self.reward = None
        if self.rl.algorithm in ("ppo", "grpo"):
            self.reward = LayoutReward(
                load_detector(self.rl.detector, str(self.device)), self.rl.reward, self.rl.confidence_weight
            )
        self.critic = None
        if self.rl.algorithm == "ppo":
            self.critic = Critic(
                model.latent_shape[0], model.text_encoder.pooled_size, hidden=self.rl.critic_hidden
            ).to(self.device)
            self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=self.rl.critic_lr)

    # ------------------------------------------------------------------ data
    def next_layouts(self) -> list[Layout]:
        """The next prompt-only batch; for GRPO, batch_size / group_size prompts, each repeated.
        From the shapes world's generator, or the layout file ``rl.prompts`` read in order (cycled)."""
        prompts = self.rl.batch_size // (self.rl.group_size if self.rl.algorithm == "grpo" else 1)
        start = self.iteration * prompts
        if self.prompt_file is not None:
            layouts = [self.prompt_file[(start + k) % len(self.prompt_file)] for k in range(prompts)]
        else:
            layouts = [
                prompt_only_layout(start + k, self.rl.prompt_seed, resolution=self.config.model.resolution)
                for k in range(prompts)
            ]
        if self.rl.algorithm == "grpo":
            layouts = [layout for layout in layouts for _ in range(self.rl.group_size)]
        return layouts

    def sft_batch(self) -> tuple[torch.Tensor, list[Layout]]:
        """Table 3 row 3: the next prompt-only layouts with their rendered images (B, C, H, W)."""
        layouts = self.next_layouts()
        self.iteration += 1
        images = [
            image_to_tensor(render_layout_scene(layout, self.config.model.resolution)) for layout in layouts
        ]
        return torch.stack(images).to(self.device), layouts

    # ------------------------------------------------------------------ one iteration
    @property
    def per_instance(self) -> bool:
        return self.rl.credit == "instance"

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
        """The rewards the critic regresses: (B,), or per instance (B, N) padded like ``cond``."""
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
        masks = box_masks(cond.boxes, *x_next.shape[-2:]) * cond.valid[..., None]  # (B, N, H * W)
        masks = masks.repeat(steps, 1, 1)
        return tuple(
            box_log_probs(x_next, mean.flatten(0, 1), scale.flatten(0, 1), masks).view(steps, batch, -1)
            for mean in means
        )

    def loss(self, model, network=None) -> tuple[torch.Tensor | None, RLStats]:
        """L_rl for this iteration (None while the critic warms up), and what to log.

        model: the actor (for sampling and text encoding); network: the module to call for the
        differentiable predictions (the accelerate-prepared model), default ``model``.
        """
        rl = self.rl
        # ------------------------------------------------ ROLLOUT (current actor, no grad)
        layouts = self.next_layouts()
        self.iteration += 1
        was_training = model.training
        model.eval()
        fresh = rollout(
            model,
            layouts,
            rl.steps,
            self.rl_steps,
            rl.cfg,
            self.config.layout_fraction,
            rl.noise_level,
            self.config.shift,
            eta=rl.eta,
        )
        model.train(was_training)
        # ------------------------------------------------ REWARD (Eq. 6)
        instance_terms = self.reward.instance_rewards(to_uint8(fresh.images), layouts).float()  # (B, N)
        fresh.reward = instance_terms.sum(dim=1)
        if self.per_instance:
            fresh.instance_reward = instance_terms
        if rl.algorithm == "grpo":
            credited = instance_terms if self.per_instance else fresh.reward
            fresh.group_advantage = group_advantages(credited, rl.group_size)
        self.pool.add(fresh)
        stats = RLStats(reward=float(fresh.reward.mean()))
        # ------------------------------------------------ CRITIC (Eq. 7)
        if self.critic is not None:
            cond = model.encode_text(fresh.layouts).to(self.device)
            values = self._critic_values(model, fresh, cond)
            valid = cond.valid[None] if self.per_instance else None
            loss_critic = critic_loss(values, self._rewards(fresh, cond)[None].expand_as(values), valid)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss_critic.backward()
            self.critic_optimizer.step()
            self.critic_updates += 1
            stats.critic_loss = loss_critic.item()
            if self.critic_updates <= rl.critic_warmup:
                return None, stats
        # ------------------------------------------------ ADVANTAGE (Eq. 8 or group-relative)
        old = self.pool.draw()
        cond = model.encode_text(old.layouts).to(self.device)
        steps = old.log_prob.shape[0]
        if self.critic is not None:
            with torch.no_grad():
                advantage = advantages(self._rewards(old, cond)[None], self._critic_values(model, old, cond))
        else:
            group = old.group_advantage.to(self.device)
            group = _pad_instances(group, cond) if self.per_instance else group
            advantage = group[None].expand(steps, *group.shape)
        # ------------------------------------------------ PPO (Eq. 9-10) on the drawn old policy
        log_prob, mean, scale = policy_log_probs(
            model,
            old,
            rl.cfg,
            self.config.layout_fraction,
            rl.steps,
            rl.noise_level,
            self.config.shift,
            network,
            eta=rl.eta,
        )
        old_mean = old.mean.to(self.device)
        kl = gaussian_kl(mean.flatten(0, 1), old_mean.flatten(0, 1), scale.flatten(0, 1))
        old_log_prob, weight = old.log_prob.to(self.device), None
        if self.per_instance:
            log_prob, old_log_prob = self._box_log_probs(old, scale, cond, mean, old_mean)
            weight = cond.valid[None].expand_as(advantage)
        terms = ppo_loss(
            log_prob,
            old_log_prob,
            advantage.to(log_prob.dtype),
            rl.clip_range,
            kl,
            rl.kl_weight,
            weight,
        )
        stats.l_rl, stats.kl = terms.loss.item(), terms.kl.item()
        ratio = terms.ratio if weight is None else terms.ratio[weight]
        stats.clip_fraction, stats.ratio = float(terms.clip_fraction), float(ratio.mean())
        return terms.loss, stats

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        state = {
            "iteration": self.iteration,
            "critic_updates": self.critic_updates,
            "pool": self.pool.state_dict(),
        }
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.critic_updates = state["iteration"], state["critic_updates"]
        self.pool.load_state_dict(state["pool"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])


def _pad_instances(terms: torch.Tensor, cond) -> torch.Tensor:
    """(B, n) per-instance values of a batch's largest layout -> (B, N) as the conditioning pads."""
    return torch.nn.functional.pad(terms, (0, cond.valid.shape[1] - terms.shape[1]))
