"""GPU check of the I-DRUID authors' architecture at full size (sd3-druid), beside idruid's own
SD3 model: both built with random weights on the GPU (no download), each samples one 1024 px
image (128 x 128 latents) at 50 steps with guidance (batch 2: conditional + unconditional row) in
bf16 autocast around float32 weights, through idruid's model contract and its sampling pieces
(``guided_prediction``, the flow process's Euler step, the layout branch for int(0.3 * 50) = 15
steps, as their inference). Prints seconds per step with the layout branch on and off, the
decode of a random SD3-sized VAE, and the peak GPU memory of each model. Under 5 minutes on one
GPU of the H100 class (estimate: about 14 TFLOP per guided step with the branch on).

    python benchmarks/bench_druid_gpu.py            # refuses without CUDA
    python benchmarks/bench_druid_gpu.py --allow-cpu --layers 2 --side 16 --steps 4   # plumbing only

Results go into BENCHMARKS.md by hand. It has not been run on a GPU yet.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch
from bench_architectures import SD3_MEDIUM, SD3_PROMPT_TOKENS, RealTextWidths, inputs, layout_model
from diffusers import AutoencoderKL

from idruid.conditioning import Conditioning
from idruid.config import ModelConfig
from idruid.models import base, sd3_druid
from idruid.models.druid_arch import DruidSD3Transformer
from idruid.sampling import guided_prediction, layout_steps

# stabilityai/stable-diffusion-3-medium-diffusers, vae/config.json (the sizes that cost time)
SD3_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


class Latents:
    """Stands in for SD3's VAE in the models: 16 channels, 8x downsampling."""

    latent_channels, downsample = 16, 8


def druid_model(num_layers: int) -> sd3_druid.DruidLayoutModel:
    """The authors' architecture at SD3-medium's widths behind idruid's model contract."""
    config = ModelConfig(
        backbone="sd3-druid",
        resolution=SD3_MEDIUM["sample_size"] * 8,
        in_channels=16,
        network=dict(patch_size=2, num_layers=num_layers, num_heads=24, head_dim=64),
    )
    sizes = {**SD3_MEDIUM, "num_layers": num_layers}
    with (
        mock.patch.object(sd3_druid, "transformer_kwargs", lambda *_: sizes),
        mock.patch.object(base, "build_codec", lambda _: Latents()),
    ):
        model = sd3_druid.DruidLayoutModel(config, text_encoder=RealTextWidths())
    assert isinstance(model.transformer, DruidSD3Transformer)
    return model


def guided_rows(cond: Conditioning) -> Conditioning:
    """The conditional row and its unconditional partner (enabled 0: null layout tokens)."""
    uncond = Conditioning(**{**vars(cond), "enabled": torch.zeros_like(cond.enabled)})
    return Conditioning.cat([cond, uncond])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def run(name: str, model, latent_side: int, steps: int, cfg: float, device: torch.device, vae) -> None:
    """Sample one image with ``model``; print seconds per step (branch on / off) and peak memory."""
    x, _, cond = inputs(latent_side, SD3_PROMPT_TOKENS, 10, device)
    cond = guided_rows(cond)
    times = model.process.times(steps, 3.0).to(device)
    with_layout = layout_steps(steps, 0.3, "floor")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = {True: [], False: []}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        guided_prediction(model, x, times[:1], cond, cfg, layout_on=True)  # warm-up
        for i in range(steps):
            sync(device)
            start = time.perf_counter()
            t = times[i].expand(1)
            v = guided_prediction(model, x, t, cond, cfg, layout_on=i < with_layout)
            x = model.process.step(v, x, t, times[i + 1].expand(1))
            sync(device)
            seconds[i < with_layout].append(time.perf_counter() - start)
        sync(device)
        start = time.perf_counter()
        image = vae.decode(x.to(next(vae.parameters()).dtype)).sample
        sync(device)
    decode = time.perf_counter() - start
    on, off = seconds[True], seconds[False]
    total = sum(on) + sum(off)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    print(
        f"{name:<34} {total:6.2f} s for {steps} steps: {sum(on) / max(len(on), 1):.3f} s/step with the "
        f"layout branch ({len(on)} steps), {sum(off) / max(len(off), 1):.3f} s/step without; decode "
        f"{decode:.2f} s; image {tuple(image.shape)}; peak {peak:.1f} GiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--layers", type=int, default=24, help="MM-DiT blocks (24: SD3-medium)")
    parser.add_argument("--side", type=int, default=128, help="latent side (128: 1024 px)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (plumbing check only)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("bench_druid_gpu: no CUDA device here; this check needs a GPU (--allow-cpu: smoke)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 weights under bf16 autocast, as theirs
    print(f"device {device}; {args.layers} blocks; {args.side * 8} px; {args.steps} steps; CFG {args.cfg}")
    with torch.device(device):
        vae = AutoencoderKL(**SD3_VAE).eval()
    for name, build in (
        ("sd3-druid (the authors' model)", lambda: druid_model(args.layers)),
        ("idruid sd3 (adapter + IDM)", lambda: layout_model(args.layers, share_query=True)),
    ):
        started = time.perf_counter()
        with torch.device(device):
            model = build().to(device).eval()
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e9:.3f} B parameters, built in {time.perf_counter() - started:.1f} s")
        run(name, model, args.side, args.steps, args.cfg, device, vae)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
