"""At which sampling step does the outcome get decided? (README, "The RL stage")

For each step k of the rollout schedule, samples prompt-only layouts from fixed noise with the ODE
everywhere except one SDE step (Eq. 5) at k, several times, and prints the spread of the final
reward (Eq. 6) over those draws, averaged over the layouts. Where the spread is large, an action
at that step changes the reward, so that is where RL's exploration can pay off.

    python scripts/rl_branch_spread.py --checkpoint runs/shapes/model --layouts 24 --draws 4
"""

from __future__ import annotations

import argparse

import torch

from idruid.checkpoint import load_checkpoint
from idruid.config import load_config
from idruid.data.shapes import prompt_only_layout
from idruid.policy_steps import sde_step_with_logprob
from idruid.rl.rewards import LayoutReward
from idruid.rl.rollout import rollout_settings
from idruid.sampling import euler_step, flow_sigmas, sample, to_uint8
from idruid.scorers.registry import load_scorer

HELD_OUT_START = 10_000  # prompt-only indices far from the ones the RL stage draws


class OneSdeStep:
    """Step function: the SDE policy at step ``at`` only, the Euler ODE step elsewhere."""

    def __init__(self, at: int, sigma_max: float, noise_level: float):
        self.at, self.sigma_max, self.noise_level, self.index = at, sigma_max, noise_level, 0

    def __call__(self, v_pred, x_t, sigma, sigma_next):
        self.index += 1
        if self.index - 1 != self.at:
            return euler_step(v_pred, x_t, sigma, sigma_next)
        return sde_step_with_logprob(v_pred, x_t, sigma, sigma_next, self.sigma_max, self.noise_level)[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="shapes-rl", help="preset whose rl.* settings to use")
    parser.add_argument("--layouts", type=int, default=24)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="idruid checkpoint (default: the shipped model)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config)
    rl = config.rl
    model = load_checkpoint(args.checkpoint)
    model.eval()
    layouts = [prompt_only_layout(HELD_OUT_START + k, rl.prompt_seed) for k in range(args.layouts)]
    reward = LayoutReward(load_scorer("detector", rl.detector), rl.reward, rl.confidence_weight)
    sigmas = flow_sigmas(rl.sampling_steps, config.shift)
    shape = (len(layouts), *model.latent_shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def rewards(step_fn) -> torch.Tensor:
        with torch.no_grad():
            images = sample(
                model,
                layouts,
                rollout_settings(config),
                x_init=noise,
                step_fn=step_fn,
            )
        return reward(to_uint8(images), layouts)

    print(f"ODE only: mean reward {rewards(OneSdeStep(-1, float(sigmas[1]), 0.0)).mean():.3f}")
    for k in range(rl.sampling_steps):
        draws = torch.stack(
            [rewards(OneSdeStep(k, float(sigmas[1]), rl.noise_level)) for _ in range(args.draws)]
        )  # (draws, layouts)
        print(
            f"SDE at step {k + 1} (sigma {float(sigmas[k]):.2f}): mean reward {draws.mean():.3f}, "
            f"spread over draws {draws.std(dim=0).mean():.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
