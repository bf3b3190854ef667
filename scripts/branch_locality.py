"""Where an adapter-only layout branch looks: the share of each instance's branch attention that
falls inside its own box, at the first layout layer, against the box's share of the image.

A branch that reads positions puts most of an instance's attention in its box; one that cannot
(FLUX has no absolute position embedding, only rotary positions inside its own attention, so the
image tokens the branch queries with carry none) spreads it evenly: share = the box's area.

    python scripts/branch_locality.py CHECKPOINT... [--layouts-per-level 12]
"""

from __future__ import annotations

import argparse

import torch

from idruid.eval_benchmarks import get_benchmark, select_layouts
from idruid.loader import open_model


def inside_own_box(cond, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, h*w) 1 where a token's centre lies in instance n's box."""
    h, w = grid
    yy, xx = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    b = cond.boxes[..., None, None]
    inside = (xx >= b[:, :, 0]) & (xx <= b[:, :, 2]) & (yy >= b[:, :, 1]) & (yy <= b[:, :, 3])
    return inside.flatten(2).float()


def locality(path: str, per_level: int, sigma: float = 0.6, seed: int = 0) -> tuple[float, float]:
    """(mean share of an instance's attention inside its box, mean box area share)."""
    model, _ = open_model(path)
    layouts = select_layouts(get_benchmark("shapes-mig"), per_level=per_level)
    cond = model.encode_text(layouts).trimmed()
    noise = torch.randn(len(layouts), *model.latent_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # x_t of blank images at sigma: only the layout decides where to look
        _, maps = model(sigma * noise, torch.full((len(layouts),), sigma), cond, record_attention=True)
    attention, _, grid = maps[0]  # (B, N, heads, h*w)
    weights, inside = attention.mean(2), inside_own_box(cond, grid)
    share = (weights * inside).sum(-1) / weights.sum(-1).clamp_min(1e-9)
    return share[cond.valid].mean().item(), inside.mean(-1)[cond.valid].mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="adapter-only checkpoints (model.use_idm=false)")
    parser.add_argument("--layouts-per-level", type=int, default=12, help="shapes-mig layouts per level")
    args = parser.parse_args()
    print("| checkpoint | attention inside its own box | box area |\n|---|---:|---:|")
    for path in args.checkpoints:
        share, area = locality(path, args.layouts_per_level)
        print(f"| {path} | {share:.3f} | {area:.3f} |")


if __name__ == "__main__":
    main()
