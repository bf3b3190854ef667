"""Does L_rl alone move the policy the right way? A diagnostic for the RL stage (README, "The RL stage").

Trains a model (the shipped one unless ``--checkpoint``) on L_rl only (no L_ldm, no L_dis) with
the RL stage of a preset, and every ``--every`` iterations prints the mean reward of a held-out
set of prompt-only layouts sampled with the ODE from fixed noise, so that differences come from
the weights alone.

    python scripts/rl_probe.py --checkpoint runs/shapes/model --iterations 100 --lr 1e-3
    python scripts/rl_probe.py --checkpoint runs/shapes/model --iterations 40 --lr 1e-4 \
        --reward brightness rl.algorithm=grpo rl.batch_size=16

``--reward brightness`` swaps the detector for the image's mean brightness (0..10): a reward any
correct policy gradient raises quickly, to tell a sign or plumbing error from a weak signal.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch

from idruid.checkpoint import load_checkpoint
from idruid.config import load_config
from idruid.data.shapes import prompt_only_layout
from idruid.layout import Layout
from idruid.rl.stage import RLStage
from idruid.sampling import sample, to_uint8

HELD_OUT_START = 10_000  # prompt-only indices far from the ones the RL stage draws


class Brightness:
    """A reward with the interface of idruid.rl.rewards.LayoutReward: the mean pixel value on a
    0..10 scale, credited as one term per image."""

    def instance_rewards(self, images: np.ndarray, layouts: Sequence[Layout]) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32).mean(axis=(1, 2, 3)) / 25.5)[:, None]

    def __call__(self, images: np.ndarray, layouts: Sequence[Layout]) -> torch.Tensor:
        return self.instance_rewards(images, layouts).sum(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="shapes-rl")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--held-out", type=int, default=48)
    parser.add_argument("--reward", choices=["detector", "brightness"], default="detector")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", default=None, help="idruid checkpoint (default: the shipped model)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config, args.overrides)
    model = load_checkpoint(args.checkpoint)
    stage = RLStage(config, model)
    if args.reward == "brightness":
        stage.reward = Brightness()
    reward = stage.reward
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=args.lr, weight_decay=0.0)
    layouts = [
        prompt_only_layout(HELD_OUT_START + k, config.rl.prompt_seed, resolution=config.model.resolution)
        for k in range(args.held_out)
    ]
    shape = (len(layouts), *model.latent_shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def held_out_reward() -> float:
        model.eval()
        with torch.no_grad():
            images = sample(
                model,
                layouts,
                steps=config.rl.steps,
                cfg=config.rl.cfg,
                x_init=noise,
                layout_fraction=config.layout_fraction,
                shift=config.shift,
            )
        model.train()
        return float(reward(to_uint8(images), layouts).mean())

    print(f"iteration 0: held-out reward {held_out_reward():.3f}", flush=True)
    started, rollout_rewards = time.time(), []
    model.train()
    for iteration in range(1, args.iterations + 1):
        loss, stats = stage.loss(model)
        rollout_rewards.append(stats.reward)
        if loss is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
            optimizer.step()
        if iteration % args.every == 0:
            print(
                f"iteration {iteration}: held-out reward {held_out_reward():.3f}, rollout reward "
                f"{np.mean(rollout_rewards[-args.every :]):.3f}, {time.time() - started:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
