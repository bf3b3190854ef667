"""The shapes world: a seeded, deterministic miniature of layout-to-image data.

Coloured circles, squares and triangles (solid, striped or dotted) on a mid-grey
background, in COCO-MIG's seven colours. It stands in for LayoutSAM / COCO-MIG so the
whole pipeline (stage-1 training on detailed captions, RL on short captions, both
benchmarks) runs on a CPU in minutes, and its ground truth is exact:

- captions come in the paper's two styles (section 4.1): COCO-MIG's short "a red circle"
  and LayoutSAM-like detailed ones naming colour, texture and shape in varied words;
- boxes sit on the pixel grid of the render, so a clean render's shapes fill their boxes
  exactly and the analytic detector (idruid.scorers.analytic) recovers them;
- splits draw their seeds from disjoint seed sequences: training images, prompt-only
  layouts for RL, and the "shapes-mig" / "shapes-sam" benchmarks never share a scene.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from idruid.boxes import box_iou, pixel_masks
from idruid.colors import COLOR_NAMES
from idruid.layout import MAX_INSTANCES, Instance, Layout

RESOLUTION = 32
BACKGROUND = (128, 128, 128)

# Base colours: each lies in its own COCO-MIG HSV range and in no other.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30),
    "blue": (40, 70, 220),
    "green": (30, 160, 50),
    "yellow": (235, 225, 20),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
    "brown": (140, 75, 25),
}
# Texture shades: a luminance contrast of at least 60 against the base colour, and in the
# same HSV range except for black and white, whose ranges leave no room for contrast
# (black's shade is lighter, white's darker; both then fall in no range).
SHADES: dict[str, tuple[int, int, int]] = {
    "red": (255, 150, 150),
    "blue": (150, 170, 255),
    "green": (150, 240, 160),
    "yellow": (150, 143, 10),
    "black": (70, 70, 70),
    "white": (185, 185, 185),
    "brown": (210, 140, 80),
}
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("solid", "striped", "dotted")

SIZE_RANGE = (0.2, 0.45)  # box side, as a share of the image side
ASPECT_RANGE = (0.75, 1.33)  # height / width
MAX_PAIR_IOU = 0.15
MAX_COVERED = 0.3  # share of a box that the other boxes may cover
SAME_COLOR_GAP = 3  # grid cells between boxes of one colour (a 3x3 closing bridges 2)
_PLACEMENT_TRIES = 60
_RESTARTS_PER_SCALE = 4
_SHRINK = 0.9
_MAX_RESTARTS = 200


@dataclass(frozen=True)
class ShapeSpec:
    color: str
    shape: str
    texture: str
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1


@dataclass(frozen=True)
class Scene:
    shapes: tuple[ShapeSpec, ...]


# ----------------------------------------------------------------------------- sampling


def _gap_ok(a: Sequence[int], b: Sequence[int], gap: int) -> bool:
    """True when the boxes are at least ``gap`` cells apart along x or y."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _covered_share(box: Sequence[int], others: Sequence[Sequence[int]]) -> float:
    """Share of ``box`` (grid cells) that the union of ``others`` covers."""
    x0, y0, x1, y1 = box
    covered = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for ox0, oy0, ox1, oy1 in others:
        covered[
            max(oy0, y0) - y0 : max(min(oy1, y1) - y0, 0), max(ox0, x0) - x0 : max(min(ox1, x1) - x0, 0)
        ] = True
    return float(covered.mean())


def _overlaps(a: Sequence[int], b: Sequence[int]) -> bool:
    return not _gap_ok(a, b, 0)


def _boxes_ok(new: tuple[int, ...], color: str, placed: list[tuple[int, ...]], colors: list[str]) -> bool:
    """Pairwise IoU, same-colour gap and covered share, rechecked only where ``new`` overlaps."""
    for box, other_color in zip(placed, colors, strict=True):
        if box_iou(new, box) > MAX_PAIR_IOU:
            return False
        if other_color == color and not _gap_ok(new, box, SAME_COLOR_GAP):
            return False
    boxes = [*placed, new]
    touched = [box for box in boxes if _overlaps(box, new)]  # new itself included
    return all(
        _covered_share(box, [other for other in boxes if other is not box]) <= MAX_COVERED for box in touched
    )


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def _fully_visible_extents(specs: Sequence[ShapeSpec], masks: Sequence[np.ndarray]) -> bool:
    """True when, drawn larger-first, every shape stays in one piece and keeps its whole extent,
    so each box is exactly the bounding box of what is visible of its shape."""
    order = _drawing_order(range(len(specs)), [spec.box for spec in specs])
    for rank, k in enumerate(order):
        later = [masks[j] for j in order[rank + 1 :]]
        hidden = masks[k] & np.logical_or.reduce(later) if later else None
        if hidden is None or not hidden.any():
            continue
        visible = masks[k] & ~hidden
        if not visible.any() or _extent(visible) != _extent(masks[k]) or ndimage.label(visible)[1] != 1:
            return False
    return True


def _sample_box(
    rng: np.random.Generator, grid: int, lo: float, hi: float, odd_width: bool
) -> tuple[int, ...]:
    """A box in grid cells (x0, y0, x1, y1) with sides in [lo, hi] * grid and a bounded aspect ratio."""
    min_side = max(3, math.ceil(lo * grid))
    max_side = max(min_side, math.floor(hi * grid))
    width = int(rng.integers(min_side, max_side + 1))
    if odd_width and width % 2 == 0:  # a centred apex pixel: triangles keep their top row
        width = width + 1 if width + 1 <= max_side else max(width - 1, 1)
    h_lo = max(min_side, math.ceil(ASPECT_RANGE[0] * width))
    h_hi = max(h_lo, min(max_side, math.floor(ASPECT_RANGE[1] * width)))
    height = int(rng.integers(h_lo, h_hi + 1))
    x0 = int(rng.integers(0, grid - width + 1))
    y0 = int(rng.integers(0, grid - height + 1))
    return (x0, y0, x0 + width, y0 + height)


def _try_scene(rng: np.random.Generator, num_shapes: int, grid: int, lo: float, hi: float) -> Scene | None:
    colors = [COLOR_NAMES[i] for i in rng.integers(0, len(COLOR_NAMES), num_shapes)]
    shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), num_shapes)]
    textures = [TEXTURES[i] for i in rng.integers(0, len(TEXTURES), num_shapes)]
    placed: list[tuple[int, ...]] = []
    specs: list[ShapeSpec] = []
    masks: list[np.ndarray] = []  # each shape rasterised on the grid
    for k in range(num_shapes):
        for _ in range(_PLACEMENT_TRIES):
            box = _sample_box(rng, grid, lo, hi, odd_width=shapes[k] == "triangle")
            if not _boxes_ok(box, colors[k], placed, colors[:k]):
                continue
            spec = ShapeSpec(colors[k], shapes[k], textures[k], tuple(v / grid for v in box))
            mask = shape_mask(spec, grid)
            near = [j for j, other in enumerate(placed) if _overlaps(other, box)]
            if _fully_visible_extents([specs[j] for j in near] + [spec], [masks[j] for j in near] + [mask]):
                placed.append(box)
                specs.append(spec)
                masks.append(mask)
                break
        else:
            return None
    return Scene(tuple(specs))


def sample_scene(rng: np.random.Generator, num_shapes: int, grid: int = RESOLUTION) -> Scene:
    """A random scene of ``num_shapes`` shapes whose box edges lie on a ``grid`` x ``grid`` lattice.

    Boxes: sides 0.2-0.45 of the image (shrunk step by step when crowded scenes keep failing),
    aspect 0.75-1.33, pairwise IoU <= 0.15, no box more than 30% covered by the others, boxes
    of the same colour at least three cells apart, and every shape, drawn larger-first, left in
    one piece with its whole extent visible (its box is its visible bounding box). Colours may
    repeat, as in COCO-MIG.
    """
    if not 1 <= num_shapes <= MAX_INSTANCES:
        raise ValueError(f"num_shapes must be in 1..{MAX_INSTANCES}, got {num_shapes}")
    for restart in range(_MAX_RESTARTS):
        scale = _SHRINK ** (restart // _RESTARTS_PER_SCALE)
        scene = _try_scene(rng, num_shapes, grid, SIZE_RANGE[0] * scale, SIZE_RANGE[1] * scale)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {num_shapes} shapes on a {grid}x{grid} grid")


# ----------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=16)
def _pixel_centres(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates: x (1, W) and y (H, 1)."""
    centres = (np.arange(resolution) + 0.5) / resolution
    return centres[None, :], centres[:, None]


@functools.lru_cache(maxsize=16)
def _texture_patterns(resolution: int) -> dict[str, np.ndarray]:
    """Where each texture puts its shade (H, W) bool, anchored to the image pixel grid."""
    rows = np.arange(resolution)[:, None]
    cols = np.arange(resolution)[None, :]
    return {
        "solid": np.zeros((resolution, resolution), dtype=bool),
        "striped": np.broadcast_to(rows % 2 == 1, (resolution, resolution)),
        "dotted": (rows % 2 == 0) & (cols % 2 == 0),
    }


def _drawing_order(items: Sequence, boxes: Sequence[Sequence[float]]) -> list:
    """``items`` sorted by their boxes, larger first (stable), so small shapes stay visible."""
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    return [item for _, item in sorted(zip(areas, items, strict=True), key=lambda pair: -pair[0])]


def shape_mask(spec: ShapeSpec, resolution: int = RESOLUTION) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie inside the shape."""
    x, y = _pixel_centres(resolution)
    x0, y0, x1, y1 = spec.box
    inside_box = pixel_masks(np.array([spec.box]), resolution, resolution)[0]
    if spec.shape == "square":
        return inside_box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if spec.shape == "circle":
        return ((x - cx) / ((x1 - x0) / 2)) ** 2 + ((y - cy) / ((y1 - y0) / 2)) ** 2 <= 1.0
    if spec.shape == "triangle":  # apex at top-centre, base on the bottom edge
        depth = (y - y0) / (y1 - y0)
        return inside_box & (np.abs(x - cx) <= depth * (x1 - x0) / 2)
    raise ValueError(f"unknown shape {spec.shape!r} (known: {', '.join(SHAPES)})")


def render(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """(H, W, 3) uint8 image; larger shapes are drawn first so small ones stay visible."""
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    patterns = _texture_patterns(resolution)
    for spec in _drawing_order(scene.shapes, [spec.box for spec in scene.shapes]):
        mask = shape_mask(spec, resolution)
        shaded = patterns[spec.texture]
        image[mask & ~shaded] = COLORS[spec.color]
        image[mask & shaded] = SHADES[spec.color]
    return image


def render_layout_scene(layout: Layout, resolution: int = RESOLUTION) -> np.ndarray:
    """The ground-truth render of a shapes layout (from ``layout.meta["scene"]``)."""
    if "scene" not in layout.meta:
        raise ValueError("layout.meta has no 'scene': only shapes-world layouts have a ground-truth render")
    return render(layout.meta["scene"], resolution)


# ----------------------------------------------------------------------------- captions

SHAPE_WORDS = {
    "circle": ("circle", "disc", "round shape", "disk"),
    "square": ("square", "square tile", "block", "box shape"),
    "triangle": ("triangle", "triangular shape", "pyramid shape"),
}
TEXTURE_ADJECTIVES = {
    "solid": ("solid", "plain", "flat", "plain, solid-coloured", "uniformly coloured"),
    "striped": ("striped", "banded", "lined"),
    "dotted": ("dotted", "polka-dot", "speckled", "spotted"),
}
TEXTURE_PHRASES = {
    "solid": ("with a plain finish", "in one flat tone", "with a solid fill"),
    "striped": ("with horizontal stripes", "with thin horizontal bands", "with a lined pattern"),
    "dotted": ("with small dots", "with a polka-dot pattern", "covered in tiny dots"),
}
DETAILED_TEMPLATES = (
    "a {adjective} {color} {shape}",
    "a {color} {shape} {phrase}",
    "a {shape} painted {color} {phrase}",
    "a {color}, {adjective} {shape}",
    "a {shape} in {color}, {phrase}",
    "one {adjective} {shape} coloured {color}",
    "a {color} {shape} that is {adjective}",
)
SHORT_PROMPT_PREFIX = "a photo of "
DETAILED_PROMPT_TEMPLATES = (
    "a grey canvas showing {items}",
    "a picture of {items} on a grey background",
    "an image containing {items}",
    "a grey background with {items}",
)
CAPTION_PUNCTUATION = (",", "-")  # the only non-letter characters in captions and prompts


def short_caption(spec: ShapeSpec) -> str:
    """COCO-MIG style: exactly "a {color} {shape}"."""
    return f"a {spec.color} {spec.shape}"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


def detailed_caption(spec: ShapeSpec, rng: np.random.Generator) -> str:
    """LayoutSAM style: colour, texture and shape in varied words, e.g. "a red disc with small dots"."""
    return _pick(rng, DETAILED_TEMPLATES).format(
        color=spec.color,
        shape=_pick(rng, SHAPE_WORDS[spec.shape]),
        adjective=_pick(rng, TEXTURE_ADJECTIVES[spec.texture]),
        phrase=_pick(rng, TEXTURE_PHRASES[spec.texture]),
    )


def _join_items(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _prompt_from_captions(captions: Sequence[str], style: str, rng: np.random.Generator) -> str:
    if style == "short":
        return SHORT_PROMPT_PREFIX + " and ".join(captions)
    return _pick(rng, DETAILED_PROMPT_TEMPLATES).format(items=_join_items(captions))


def _check_style(style: str) -> None:
    if style not in ("short", "detailed"):
        raise ValueError(f"unknown caption style {style!r} (known: short, detailed)")


def _captions(scene: Scene, style: str, rng: np.random.Generator) -> list[str]:
    _check_style(style)
    if style == "short":
        return [short_caption(spec) for spec in scene.shapes]
    return [detailed_caption(spec, rng) for spec in scene.shapes]


def global_prompt(scene: Scene, style: str, rng: np.random.Generator) -> str:
    """The whole image's prompt: "a photo of a red circle and a blue square" (short) or a detailed one."""
    return _prompt_from_captions(_captions(scene, style, rng), style, rng)


def caption_words() -> set[str]:
    """Every word (lower-case letter run) that captions and global prompts can contain.

    Text splits into words at spaces and at CAPTION_PUNCTUATION ("solid-coloured" is
    "solid", "-", "coloured").
    """
    texts = [
        SHORT_PROMPT_PREFIX,
        "and",
        *COLOR_NAMES,
        *SHAPES,
        *DETAILED_TEMPLATES,
        *DETAILED_PROMPT_TEMPLATES,
    ]
    for table in (SHAPE_WORDS, TEXTURE_ADJECTIVES, TEXTURE_PHRASES):
        texts += [phrase for phrases in table.values() for phrase in phrases]
    words = set()
    for text in texts:
        words.update(re.findall(r"[a-z]+", re.sub(r"\{[a-z]+\}", " ", text)))
    return words


CAPTION_VOCABULARY: list[str] = sorted(caption_words())


def scene_to_layout(scene: Scene, style: str, rng: np.random.Generator, seed: int | None = None) -> Layout:
    """A Layout with one instance per shape, captions in ``style``, and ``meta={"scene": scene}``."""
    captions = _captions(scene, style, rng)
    instances = tuple(Instance(c, spec.box) for c, spec in zip(captions, scene.shapes, strict=True))
    return Layout(_prompt_from_captions(captions, style, rng), instances, seed, meta={"scene": scene})


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
    ):
        _check_style(style)
        if not 1 <= min_shapes <= max_shapes <= MAX_INSTANCES:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes <= {MAX_INSTANCES}")
        self.size, self.seed, self.resolution = size, seed, resolution
        self.min_shapes, self.max_shapes, self.style = min_shapes, max_shapes, style

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        num_shapes = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        scene = sample_scene(rng, num_shapes, grid=self.resolution)
        layout = scene_to_layout(scene, self.style, rng)
        return {"image": image_to_tensor(render(scene, self.resolution)), "layout": layout}


def prompt_only_layout(
    index: int, seed: int = 1, min_shapes: int = 2, max_shapes: int = 6, resolution: int = RESOLUTION
) -> Layout:
    """Item ``index`` of the prompt-only set: a short-caption layout for the RL stage (its scene,
    kept in ``meta``, is used only by the SFT ablation); layout.seed is the index."""
    rng = np.random.default_rng([seed, index, _PROMPT_ONLY_TAG])
    num_shapes = int(rng.integers(min_shapes, max_shapes + 1))
    return scene_to_layout(sample_scene(rng, num_shapes, grid=resolution), "short", rng, seed=index)


def prompt_only_layouts(
    n: int, seed: int = 1, min_shapes: int = 2, max_shapes: int = 6, resolution: int = RESOLUTION
) -> list[Layout]:
    """The first ``n`` layouts of the prompt-only set (see prompt_only_layout)."""
    return [prompt_only_layout(index, seed, min_shapes, max_shapes, resolution) for index in range(n)]


@dataclass(frozen=True)
class BenchmarkSpec:
    style: str  # caption style
    per_level: int  # layouts at each level
    levels: tuple[int, ...]  # numbers of instances
    tag: int  # this benchmark's seed tag


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "shapes-mig": BenchmarkSpec("short", 160, (2, 3, 4, 5, 6), 0x6D6967),  # like COCO-MIG
    "shapes-sam": BenchmarkSpec("detailed", 100, (2, 3, 4, 5, 6), 0x73616D),  # like LayoutSAM-eval
}


@functools.lru_cache(maxsize=8)
def _benchmark(name: str, resolution: int) -> tuple[Layout, ...]:
    spec = BENCHMARKS[name]
    layouts = []
    for level in spec.levels:
        for _ in range(spec.per_level):
            index = len(layouts)
            rng = np.random.default_rng([spec.tag, index, _BENCHMARK_TAG])
            scene = sample_scene(rng, level, grid=resolution)
            layout = scene_to_layout(scene, spec.style, rng, seed=index)
            layouts.append(
                Layout(
                    layout.prompt, layout.instances, index, {"level": level, "scene": scene, "index": index}
                )
            )
    return tuple(layouts)


def benchmark_layouts(name: str, resolution: int = RESOLUTION) -> list[Layout]:
    """A fixed benchmark: "shapes-mig" (800 short-caption layouts, 160 per level L2-L6) or
    "shapes-sam" (500 detailed ones, 100 per level). layout.seed is the index."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    return list(_benchmark(name, resolution))
