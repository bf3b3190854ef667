"""At which sampling step does the outcome get decided? (README, "The RL stage")

For each step k of the rollout schedule, samples prompt-only layouts from fixed noise with the
deterministic step everywhere except one policy step at k (the SDE of Eq. 5 for a flow model, the
DDPM transition for an eps one: ``idruid.rl.rollout.rollout`` through the model's process),
several times, and prints the spread of the final
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
from idruid.rl.held_out import HELD_OUT_START
from idruid.rl.rewards import build_reward
from idruid.rl.rollout import rollout, rollout_settings
from idruid.sampling import to_uint8


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
    reward = build_reward(rl)
    settings = rollout_settings(config)
    times = model.process.times(settings.steps, settings.shift)
    noise = torch.randn((len(layouts), *model.latent_shape), generator=torch.Generator().manual_seed(0))

    def rewards(at: int, noise_level: float, eta: float) -> torch.Tensor:
        """Rewards of the layouts sampled from ``noise`` with the model's policy step at ``at`` only
        (the process's deterministic step elsewhere); no noise at all with noise_level = eta = 0."""
        with torch.no_grad():
            done = rollout(model, layouts, settings, 1, noise_level, x_init=noise, eta=eta, first_step=at)
        return reward(to_uint8(done.images), layouts)

    print(f"deterministic sampler only: mean reward {rewards(0, 0.0, 0.0).mean():.3f}")
    for k in range(rl.sampling_steps):
        draws = torch.stack([rewards(k, rl.noise_level, rl.eta) for _ in range(args.draws)])  # (draws, N)
        print(
            f"policy step at {k + 1} (time {float(times[k]):.2f}): mean reward {draws.mean():.3f}, "
            f"spread over draws {draws.std(dim=0).mean():.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
