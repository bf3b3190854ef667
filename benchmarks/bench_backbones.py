"""The two embedded backbones side by side: seconds per training step (L_ldm + L_dis, AdamW) and
per sampling forward of the MM-DiT preset (`shapes`) and the UNet preset (`shapes-sd15`), printed
as ratios against the MM-DiT measured in the same run.

    python benchmarks/bench_backbones.py [--batch 32] [--repeats 5] [--threads 2]

Both steps run interleaved, the fastest of `repeats` counted, so that load from elsewhere on a
shared machine falls on both alike. Results go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import time

import torch

from idruid.config import load_config
from idruid.data.shapes import ShapesPairedDataset
from idruid.losses import idc_loss
from idruid.models import build_model

PRESETS = {"MM-DiT (shapes)": "shapes", "UNet (shapes-sd15)": "shapes-sd15"}


def calls(preset: str, batch: int) -> dict:
    """A training step and a sampling forward (classifier-free guidance: 2 x batch) of a preset."""
    torch.manual_seed(0)
    model = build_model(load_config(preset).model)
    data = ShapesPairedDataset(size=batch, seed=0, resolution=model.config.resolution)
    items = [data[k] for k in range(batch)]
    x0 = model.encode_images(torch.stack([item["image"] for item in items]))
    cond = model.encode_text([item["layout"] for item in items])
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    process = model.process

    def train_step():
        t = process.train_times(batch, "uniform")
        noise = torch.randn_like(x0)
        prediction, maps = model(process.add_noise(x0, noise, t), t, cond, record_attention=True)
        loss = process.loss(prediction, x0, noise) + idc_loss(maps, cond.boxes, cond.valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    doubled = type(cond).cat([cond, model.unconditional(cond)])
    x = torch.cat([x0, x0])
    t = process.times(20)[5].expand(2 * batch)

    def forward():
        with torch.no_grad():
            model(x, t, doubled)

    return {"train step": train_step, "sampling forward": forward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = {name: calls(preset, args.batch) for name, preset in PRESETS.items()}
    for fns in runs.values():  # warm-up
        for fn in fns.values():
            fn()
    seconds = {name: {what: [] for what in fns} for name, fns in runs.items()}
    for _ in range(args.repeats):
        for name, fns in runs.items():
            for what, fn in fns.items():
                start = time.perf_counter()
                fn()
                seconds[name][what].append(time.perf_counter() - start)
    base = next(iter(runs))
    print(f"batch {args.batch}, {args.threads} threads, fastest of {args.repeats}")
    for what in ("train step", "sampling forward"):
        reference = min(seconds[base][what])
        for name in runs:
            best = min(seconds[name][what])
            print(f"  {what:<17} {name:<20} {best:7.3f} s  {best / reference:5.2f}x")


if __name__ == "__main__":
    main()
