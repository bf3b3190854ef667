"""One sampling loop for inference, evaluation and RL rollouts.

The loop walks the time grid of the model's diffusion process (idruid.diffusion: Euler on the
flow-matching ODE for SD3 and FLUX, DDIM for SD1.5) with classifier-free guidance (or, for a
guidance-distilled network, its distilled scale as an input of one row) and the layout branch
(adapter + IDM) active for the first ``layout_fraction`` of the steps only, vanilla attention
after (paper 4.1, after CreatiLayout). The step functions (idruid.diffusion: ``euler_step``,
``ddim_step``) are plain functions on tensors so that RL swaps in one that also records
log-probabilities (idruid.rl.rollout).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .conditioning import Conditioning
from .config import SamplingSettings
from .errors import ConfigError
from .layout import Layout

# (prediction, x_t, t, t_next) -> x_next, with t and t_next (B,) in the process's time convention
StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (step index i, t (B,), x after step i) -> None, or latents that replace x (the pipeline's hook)
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def layout_steps(steps: int, layout_fraction: float, rounding: str = "ceil") -> int:
    """Number of leading steps with the layout branch on: ceil (idruid's, at least one when the
    fraction is > 0) or floor (the I-DRUID authors' int(0.3 * steps)) of layout_fraction * steps."""
    if not 0.0 <= layout_fraction <= 1.0:
        raise ValueError(f"layout_fraction must be in [0, 1], got {layout_fraction}")
    if rounding not in ("ceil", "floor"):
        raise ValueError(f"layout rounding '{rounding}': expected ceil or floor")
    product = layout_fraction * steps
    # ceil ignores float error (0.28 * 25 = 7.000000000000001 is 7 steps); floor keeps the authors'
    # int(0.3 * steps) exactly as their code computes it
    count = math.ceil(product - 1e-9) if rounding == "ceil" else math.floor(product)
    return min(steps, count)


def model_layout_steps(model, steps: int, layout_fraction: float) -> int:
    """``layout_steps`` with the rounding the model's backbone declares (``layout_rounding``)."""
    return layout_steps(steps, layout_fraction, model.layout_rounding)


def seeded_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The noise of ``seed``: one torch.randn of ``shape`` from a fresh CPU generator."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def initial_noise(layouts: Sequence[Layout], shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Per-layout noise: a layout with a ``seed`` always starts from the same noise; the k-th
    layout without one from that of ``seed + k``."""
    noise = [
        seeded_noise(shape, layout.seed if layout.seed is not None else seed + k)
        for k, layout in enumerate(layouts)
    ]
    return torch.stack(noise)


def guidance_conditioning(
    model,
    layouts: Sequence[Layout],
    cfg: float,
    device,
    negative_prompts: Sequence[str] | None = None,
    guidance: float | None = None,
) -> Conditioning:
    """The text conditioning of a batch; with guidance, its unconditional partner stacked below
    (the empty prompt, or ``negative_prompts``, one per layout). ``guidance``: the distilled scale
    of a guidance-distilled network, carried by every row (``Conditioning.guidance``)."""
    cond = model.encode_text(layouts).to(device)
    if guidance is not None:
        if "distilled" not in model.guidance:
            raise ConfigError(
                f"guidance={guidance}: this model takes no distilled guidance scale (leave it unset; "
                "cfg is its guidance)"
            )
        cond.guidance = torch.full((len(cond),), float(guidance), device=cond.valid.device)
    if cfg == 1.0:
        return cond
    if "cfg" not in model.guidance:
        raise ValueError(
            f"cfg={cfg}: this model takes no two-row classifier-free guidance (cfg=1 turns it off)"
        )
    return type(cond).cat([cond, model.unconditional(cond, negative_prompts)])


def guided_prediction(
    model,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond,
    cfg: float,
    layout_on: bool,
    detach_uncond: bool = False,
    skip_layers: Sequence[int] | None = None,
    skip_layer_scale: float = 0.0,
) -> torch.Tensor:
    """The model's prediction (velocity or noise) for x_t (B, ...) at times t (B,) with
    classifier-free guidance at scale ``cfg``; ``cond`` comes from guidance_conditioning (2B
    rows when cfg != 1). ``detach_uncond`` computes the unconditional prediction without a graph,
    so that a policy gradient reaches the weights through the conditional one only (its weight
    under CFG would be 1 - cfg, pushing the other way; Flow-GRPO does the same). ``skip_layers``
    adds skip-layer guidance, ``skip_layer_scale`` * (conditional - the conditional prediction
    with those blocks skipped), under CFG only (as StableDiffusion3Pipeline)."""
    if cfg == 1.0:
        return model(x_t, t, cond, layout_on=layout_on)[0]
    batch = len(x_t)
    if detach_uncond:
        conditional = model(x_t, t, cond.rows(slice(0, batch)), layout_on=layout_on)[0]
        with torch.no_grad():
            unconditional = model(x_t, t, cond.rows(slice(batch, None)), layout_on=layout_on)[0]
    else:
        prediction, _ = model(torch.cat([x_t, x_t]), t.repeat(2), cond, layout_on=layout_on)
        conditional, unconditional = prediction.chunk(2)
    guided = unconditional + cfg * (conditional - unconditional)
    if skip_layers:
        rows = cond.rows(slice(0, batch))
        skipped = model(x_t, t, rows, layout_on=layout_on, skip_layers=skip_layers)[0]
        guided = guided + skip_layer_scale * (conditional - skipped)
    return guided


def skip_layer_window(settings: SamplingSettings, model) -> Callable[[int], Sequence[int] | None]:
    """Step index -> the blocks skip-layer guidance skips at that step (None: none): diffusers'
    window, steps * start < i < steps * stop. A model without skip-layer guidance is refused."""
    layers = settings.skip_layers
    if layers is not None and "skip-layer" not in model.guidance:
        raise ConfigError(
            f"skip_layers={list(layers)}: this model takes no skip-layer guidance (the SD3 and SD3.5 "
            "backbones do)"
        )
    low, high = settings.steps * settings.skip_layer_start, settings.steps * settings.skip_layer_stop
    return lambda i: layers if layers is not None and low < i < high else None


@torch.no_grad()
def sample(
    model,
    layouts: Sequence[Layout],
    settings: SamplingSettings | None = None,
    seed: int = 0,
    step_fn: StepFn | None = None,
    x_init: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    times: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
    decode: bool = True,
    negative_prompts: Sequence[str] | None = None,
) -> torch.Tensor:
    """Generate images (B, 3, H, W) in [-1, 1] for a batch of layouts: denoise latents of
    ``model.latent_shape`` (from ``x_init`` if given, else ``initial_noise`` with ``seed``), then
    decode them with the model's codec. ``settings`` None takes the defaults of SamplingSettings.
    ``step_fn`` None takes the deterministic step of the model's process (Euler for flow, DDIM
    for eps). ``times`` replaces the process's (settings.steps + 1,) time grid (the diffusers
    pipeline's comes from its scheduler); ``on_step`` is called after every step. ``decode``
    False returns the final latents (B, C, h, w) instead of images. ``negative_prompts`` (one per
    layout) replace the empty prompt of the guidance's unconditional rows."""
    settings = settings or SamplingSettings()
    steps, cfg = settings.steps, settings.cfg
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = (initial_noise(layouts, model.latent_shape, seed) if x_init is None else x_init).to(device)
    cond = guidance_conditioning(model, layouts, cfg, device, negative_prompts, settings.guidance)
    times = (model.process.times(steps, settings.shift) if times is None else times).to(device)
    if len(times) != steps + 1:
        raise ValueError(f"a time grid of {steps} steps has {steps + 1} times, got {len(times)}")
    step_fn = step_fn or model.process.step
    with_layout = model_layout_steps(model, steps, settings.layout_fraction)
    skipped_at = skip_layer_window(settings, model)
    batch = len(layouts)
    for i in range(steps):
        t = times[i].expand(batch)
        prediction = guided_prediction(
            model, x, t, cond, cfg, layout_on=i < with_layout,
            skip_layers=skipped_at(i), skip_layer_scale=settings.skip_layer_scale,
        )  # fmt: skip
        x = step_fn(prediction, x, t, times[i + 1].expand(batch))
        if on_step is not None:
            replaced = on_step(i, t, x)
            x = x if replaced is None else replaced
    return model.decode_latents(x).clamp(-1.0, 1.0) if decode else x


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    scaled = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def generate(
    model,
    layouts: Sequence[Layout],
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    **kwargs,
) -> np.ndarray:
    """Sample many layouts in batches of ``batch_size``; returns (B, H, W, 3) uint8. A layout
    without a seed starts from the noise of ``seed`` + its index in ``layouts``. ``kwargs`` go to
    ``sample`` (step_fn, device, on_step)."""
    chunks = []
    starts = range(0, len(layouts), batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress or len(starts) < 2):
        chunk = layouts[start : start + batch_size]
        chunks.append(to_uint8(sample(model, chunk, settings, seed=seed + start, **kwargs)))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0, 0, 3), np.uint8)
