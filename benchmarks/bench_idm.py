"""Cost of the layout branch: forward time of adapter + IDM vs the plain backbone, training
steps per second, and peak memory, printed as ratios against a baseline measured in the same run.

    python benchmarks/bench_idm.py [--batch 32] [--repeats 10] [--threads 2]

Each configuration runs in its own process so that peak memory (max RSS on CPU, max allocated
on CUDA) belongs to it alone. Results go into BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from fresh_process import in_fresh_process


def _layouts(batch: int, instances: int):
    import numpy as np

    from idruid.data.shapes import sample_scene, scene_to_layout

    rng = np.random.default_rng(0)
    return [scene_to_layout(sample_scene(rng, instances), "detailed", rng) for _ in range(batch)]


def _measure(kind: str, instances: int, batch: int, repeats: int, threads: int, queue) -> None:
    import torch

    from idruid.config import ModelConfig
    from idruid.losses import add_noise, flow_matching_loss, idc_loss, sample_sigmas
    from idruid.models.sd3 import SD3LayoutModel

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = SD3LayoutModel(ModelConfig(use_idm=kind != "adapter")).to(device)
    layouts = _layouts(batch, instances)
    cond = model.encode_text(layouts).to(device)
    x0 = torch.randn(batch, 3, 32, 32, device=device)
    noise = torch.randn_like(x0)
    sigma = sample_sigmas(batch, device=device)
    x_t = add_noise(x0, noise, sigma)
    layout_on = kind != "backbone"

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(3):
            model(x_t, sigma, cond, layout_on=layout_on)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x_t, sigma, cond, layout_on=layout_on)
        sync()
        forward = (time.perf_counter() - start) / repeats

    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    record = kind == "idm"

    def train_step():
        v, maps = model(x_t, sigma, cond, layout_on=layout_on, record_attention=record)
        loss = flow_matching_loss(v, x0, noise)
        if record:
            loss = loss + idc_loss(maps, cond.boxes, cond.valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(2):
        train_step()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        train_step()
    sync()
    step = (time.perf_counter() - start) / repeats
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"forward_s": forward, "steps_per_s": 1.0 / step, "peak_mb": peak_mb})


def run(kind: str, instances: int, args) -> dict:
    return in_fresh_process(_measure, kind, instances, args.batch, args.repeats, args.threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()

    rows = []
    for instances in (2, 6, 10):
        base = run("backbone", instances, args)
        for kind in ("adapter", "idm"):
            got = run(kind, instances, args)
            rows.append(
                {
                    "instances": instances,
                    "branch": kind,
                    "forward_ratio": got["forward_s"] / base["forward_s"],
                    "train_ratio": base["steps_per_s"] / got["steps_per_s"],
                    "memory_ratio": got["peak_mb"] / base["peak_mb"],
                    "steps_per_s": got["steps_per_s"],
                    "backbone_steps_per_s": base["steps_per_s"],
                    "forward_ms": 1000 * got["forward_s"],
                    "backbone_forward_ms": 1000 * base["forward_s"],
                    "peak_mb": got["peak_mb"],
                }
            )
    header = (
        "| instances | branch | forward vs backbone | train step vs backbone | peak memory vs backbone "
        "| steps/s (backbone) | forward ms (backbone) |"
    )
    print(f"batch {args.batch}, 32x32 pixels, 64 image tokens, {args.threads} threads")
    print(header)
    print("|" + "---|" * 7)
    for r in rows:
        print(
            f"| {r['instances']} | {r['branch']} | {r['forward_ratio']:.2f}x | {r['train_ratio']:.2f}x "
            f"| {r['memory_ratio']:.2f}x | {r['steps_per_s']:.2f} ({r['backbone_steps_per_s']:.2f}) "
            f"| {r['forward_ms']:.1f} ({r['backbone_forward_ms']:.1f}) |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
