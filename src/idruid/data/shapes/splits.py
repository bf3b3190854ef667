"""The shapes world's splits, each from its own seed sequence and with its own box geometry
(idruid.data.shapes.geometry): training pairs (open geometry), prompt-only layouts for RL (COCO-MIG's
geometry) and the benchmarks ("shapes-mig": COCO-MIG's geometry, "shapes-sam": the training
geometry, their "-narrow" forerunners, "shapes-strips": held out)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from idruid.layout import MAX_INSTANCES, Layout

from .captions import check_style, scene_to_layout
from .drawing import render
from .geometry import TRAINING_SAME_COLOR_GAP, get_geometry
from .scenes import sample_scene
from .world import RESOLUTION

# ----------------------------------------------------------------------------- splits

# Seed sequences per split. Training uses [seed, index]; the others append a split tag,
# so their entropy never equals a training one and no two splits share a scene.
_PROMPT_ONLY_TAG = 0x50524F4D
_BENCHMARK_TAG = 0x42454E43


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class ShapesPairedDataset(torch.utils.data.Dataset):
    """Image-layout pairs generated on the fly; item i is a pure function of (seed, i)."""

    def __init__(
        self,
        size: int = 200_000,
        seed: int = 0,
        resolution: int = RESOLUTION,
        min_shapes: int = 1,
        max_shapes: int = 6,
        style: str = "detailed",
        geometry: str = "open",
    ):
        check_style(style)
        get_geometry(geometry)
        if not 1 <= min_shapes <= max_shapes <= MAX_INSTANCES:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes <= {MAX_INSTANCES}")
        self.size, self.seed, self.resolution = size, seed, resolution
        self.min_shapes, self.max_shapes, self.style = min_shapes, max_shapes, style
        self.geometry = geometry

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        num_shapes = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        scene = sample_scene(rng, num_shapes, self.resolution, self.geometry, TRAINING_SAME_COLOR_GAP)
        layout = scene_to_layout(scene, self.style, rng)
        return {"image": image_to_tensor(render(scene, self.resolution)), "layout": layout}


def prompt_only_layout(
    index: int,
    seed: int = 1,
    min_shapes: int = 2,
    max_shapes: int = 6,
    resolution: int = RESOLUTION,
    geometry: str = "coco",
) -> Layout:
    """Item ``index`` of the prompt-only set of ``geometry``: a short-caption layout for the RL
    stage (its scene, kept in ``meta``, is used only by the SFT ablation); layout.seed is the
    index. Each geometry's set has its own seeds (the narrow one keeps the world's first ones)."""
    entropy = [seed, index, _PROMPT_ONLY_TAG] + ([] if geometry == "narrow" else [_geometry_tag(geometry)])
    rng = np.random.default_rng(entropy)
    num_shapes = int(rng.integers(min_shapes, max_shapes + 1))
    scene = sample_scene(rng, num_shapes, grid=resolution, geometry=geometry)
    return scene_to_layout(scene, "short", rng, seed=index)


def prompt_only_layouts(
    n: int,
    seed: int = 1,
    min_shapes: int = 2,
    max_shapes: int = 6,
    resolution: int = RESOLUTION,
    geometry: str = "coco",
) -> list[Layout]:
    """The first ``n`` layouts of the prompt-only set (see prompt_only_layout)."""
    return [
        prompt_only_layout(index, seed, min_shapes, max_shapes, resolution, geometry) for index in range(n)
    ]


def _geometry_tag(geometry: str) -> int:
    """A seed word of its own for each geometry (its name's bytes)."""
    get_geometry(geometry)  # a known name
    return int.from_bytes(geometry.encode(), "big")


@dataclass(frozen=True)
class BenchmarkSpec:
    style: str  # caption style
    per_level: int  # layouts at each level
    levels: tuple[int, ...]  # numbers of instances
    tag: int  # this benchmark's seed tag
    geometry: str  # how its boxes are drawn (idruid.data.shapes.geometry)


_LEVELS = (2, 3, 4, 5, 6)
BENCHMARKS: dict[str, BenchmarkSpec] = {
    # like COCO-MIG: short captions, COCO-MIG's box geometry (out of domain for the paired data)
    "shapes-mig": BenchmarkSpec("short", 160, _LEVELS, 0x6D696763, "coco"),
    # like LayoutSAM-eval: detailed captions, the training pairs' geometry (in domain)
    "shapes-sam": BenchmarkSpec("detailed", 100, _LEVELS, 0x73616D6F, "open"),
    # the world's first benchmarks, unchanged layout for layout: the narrow geometry
    "shapes-mig-narrow": BenchmarkSpec("short", 160, _LEVELS, 0x6D6967, "narrow"),
    "shapes-sam-narrow": BenchmarkSpec("detailed", 100, _LEVELS, 0x73616D, "narrow"),
    # held out: a geometry no training or RL split draws (long thin boxes), short captions
    "shapes-strips": BenchmarkSpec("short", 100, _LEVELS, 0x7374726970, "strips"),
}


@functools.lru_cache(maxsize=8)
def _benchmark(name: str, resolution: int) -> tuple[Layout, ...]:
    spec = BENCHMARKS[name]
    layouts = []
    for level in spec.levels:
        for _ in range(spec.per_level):
            index = len(layouts)
            rng = np.random.default_rng([spec.tag, index, _BENCHMARK_TAG])
            scene = sample_scene(rng, level, grid=resolution, geometry=spec.geometry)
            layout = scene_to_layout(scene, spec.style, rng, seed=index)
            layouts.append(
                Layout(
                    layout.prompt, layout.instances, index, {"level": level, "scene": scene, "index": index}
                )
            )
    return tuple(layouts)


def benchmark_layouts(name: str, resolution: int = RESOLUTION) -> list[Layout]:
    """A fixed benchmark of BENCHMARKS: "shapes-mig" (800 short-caption layouts of COCO-MIG's
    geometry, 160 per level L2-L6), "shapes-sam" (500 detailed ones of the training geometry, 100
    per level), their "-narrow" forerunners, "shapes-strips" (held-out geometry). layout.seed is
    the index."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return list(_benchmark(name, resolution))
