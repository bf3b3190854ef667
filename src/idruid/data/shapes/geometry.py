"""How each split of the shapes world draws its boxes: box size, aspect ratio, how boxes may
overlap, how far apart shapes of one colour stay, and how often a box touches the image border.

Four geometries, each named once here (GEOMETRIES):

- ``open``: the training pairs and the in-domain benchmark, like LayoutSAM's boxes, which come
  from SA-1B's masks: every size from the 4-pixel floor to nearly the whole image (log-uniform
  sqrt(area)), every aspect from 1:3 to 3:1 (log-uniform), any overlap that leaves each shape
  readable, a third of the boxes centred inside an earlier, larger one (nesting).
- ``coco``: the COCO-MIG-style benchmark and the prompt-only RL layouts: the real COCO-MIG's
  box geometry (log-normal sqrt(area) with the real medians of each level, log-normal aspect,
  the real share of boxes touching the border, overlaps and nesting as they fall), measured side
  by side with the 800 real layouts in README ("The world").
- ``narrow``: the world before COCO-MIG's geometry was measured: sides 0.2-0.45, aspect
  0.75-1.33, pairwise IoU <= 0.15, same-colour boxes three cells apart. Kept for the
  ``-narrow`` benchmarks, whose numbers the earlier README tables used.
- ``strips``: a held-out geometry no training or RL split draws: long thin boxes (aspect 1:4 to
  1:2.5 or 2.5:1 to 4:1), small, no nesting. The RL stage's
  second held-out reward reads it, so that a stage narrowing to its own prompts shows up.

Lengths are shares of the image side. How far apart shapes of one colour stay is the split's
choice, not the geometry's (scenes.sample_scene): three background pixels in every split that a
detector scores (SCORED_SAME_COLOR_GAP; the analytic detector's 3x3 closing bridges gaps of two
pixels, as two touching blobs of one flat colour are one object to any detector), one in the
training pairs, which only a model reads. No box side is below MIN_SIDE pixels: at 32 pixels a
3-pixel circle, square and triangle differ in at most 4 pixels, and the real COCO-MIG's smallest
box side is 0.125 of the image, 4.0 pixels at 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

MIN_SIDE = 4  # pixels: the floor of a box side at every resolution's 32-pixel equivalent
SCORED_SAME_COLOR_GAP = 3  # background pixels between shapes of one colour, in scored splits
TRAINING_SAME_COLOR_GAP = 1  # the same in the training pairs


@dataclass(frozen=True)
class LogNormal:
    """A positive quantity whose log is normal, truncated to [lo, hi]."""

    median: float
    sigma: float
    lo: float
    hi: float

    def draw(self, rng: np.random.Generator) -> float:
        """One draw by the inverse CDF of the truncated normal (one uniform per draw)."""
        mu = math.log(self.median)
        a, b = ndtr((math.log(self.lo) - mu) / self.sigma), ndtr((math.log(self.hi) - mu) / self.sigma)
        return math.exp(mu + self.sigma * float(ndtri(a + (b - a) * rng.random())))


@dataclass(frozen=True)
class LogUniform:
    """A positive quantity whose log is uniform on [log lo, log hi]."""

    lo: float
    hi: float

    def draw(self, rng: np.random.Generator) -> float:
        return math.exp(math.log(self.lo) + (math.log(self.hi) - math.log(self.lo)) * rng.random())


@dataclass(frozen=True)
class LogQuantiles:
    """A positive quantity given by points of its quantile function, log-linear between them,
    times ``scale``: an empirical law that meets measured percentiles exactly where a log-normal
    cannot (COCO-MIG's sizes have a long upper tail: objects that fill the picture)."""

    points: tuple[tuple[float, float], ...]  # (cumulative probability, value), from 0 to 1
    scale: float = 1.0

    def draw(self, rng: np.random.Generator) -> float:
        probs = [p for p, _ in self.points]
        logs = [math.log(v) for _, v in self.points]
        return self.scale * math.exp(float(np.interp(rng.random(), probs, logs)))


@dataclass(frozen=True)
class SymmetricAspect:
    """Height / width: a law on [lo, hi] >= 1, turned on its side (1 / value) half of the time."""

    law: LogUniform

    def draw(self, rng: np.random.Generator) -> float:
        value = self.law.draw(rng)
        return value if rng.random() < 0.5 else 1.0 / value


@dataclass(frozen=True)
class Geometry:
    """How a split draws its boxes (see the module docstring)."""

    name: str
    # sqrt(area) of a box, by the number of instances of the scene (the last entry for more)
    size: tuple[LogNormal | LogUniform | LogQuantiles, ...]
    aspect: LogNormal | LogUniform | SymmetricAspect  # height / width
    cluster: float = 0.0  # chance that a box is centred inside an earlier (larger) box of the scene

    def size_law(self, num_shapes: int) -> LogNormal | LogUniform | LogQuantiles:
        return self.size[min(num_shapes, len(self.size)) - 1]


# The real COCO-MIG's boxes (800 layouts, 3,200 boxes of MIGC's bench_file), as measured by
# idruid.data.box_stats: the percentiles that README sets beside the shapes world's.
COCO_MIG_FACTS = {
    "aspect_percentiles": (0.45, 0.81, 1.09, 1.54, 2.69),  # height / width at 5/25/50/75/95%
    "size_percentiles": (0.155, 0.214, 0.297, 0.442, 0.884),  # sqrt(area) at 5/25/50/75/95%
    "size_median_by_level": (0.375, 0.383, 0.305, 0.285, 0.267),  # L2..L6
    "smallest_side": 0.125,
}

# log-sd of height / width: wider than the real boxes' 0.54 (5-95%), since flat triangles (wider than
# twice their height) and crowded scenes trim the tails; README compares what comes out
_COCO_ASPECT_SIGMA = 0.62


def _coco_size(level: int) -> LogQuantiles:
    """The real sqrt(area) percentiles (from the 0.125 floor to the whole image), scaled to the
    median of scenes with ``level`` instances."""
    percentiles = COCO_MIG_FACTS["size_percentiles"]
    points = ((0.0, 0.125), *zip((0.05, 0.25, 0.5, 0.75, 0.95), percentiles, strict=True), (1.0, 1.0))
    median_by_level = COCO_MIG_FACTS["size_median_by_level"]
    return LogQuantiles(points, scale=median_by_level[min(max(level, 2), 6) - 2] / percentiles[2])


GEOMETRIES: dict[str, Geometry | None] = {
    "open": Geometry(
        "open",
        size=(LogUniform(0.125, 0.9),),
        aspect=SymmetricAspect(LogUniform(1.0, 3.0)),
        cluster=0.3,
    ),
    "coco": Geometry(
        "coco",
        # 1 instance as L2; L2..L6 at the real medians (README compares what comes out)
        size=tuple(_coco_size(level) for level in range(1, 7)),
        aspect=LogNormal(1.09, _COCO_ASPECT_SIGMA, lo=0.25, hi=4.0),
        cluster=0.3,
    ),
    # the world's first geometry keeps its own sampler (scenes._narrow_scene), draw for draw
    "narrow": None,
    "strips": Geometry(
        "strips",
        size=(LogUniform(0.15, 0.3),),
        aspect=SymmetricAspect(LogUniform(2.5, 4.0)),
    ),
}


def get_geometry(name: str) -> Geometry | None:
    """The geometry of that name; None for ``narrow``, which has a sampler of its own."""
    if name not in GEOMETRIES:
        raise ValueError(f"unknown geometry {name!r} (known: {', '.join(GEOMETRIES)})")
    return GEOMETRIES[name]
