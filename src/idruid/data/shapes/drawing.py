"""Drawing the shapes world: each shape's pixel mask and a scene's image (larger shapes first,
textures anchored to the pixel grid)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from idruid.boxes import pixel_masks
from idruid.layout import Layout

from .world import BACKGROUND, COLORS, RESOLUTION, SHADES, SHAPES, Scene, ShapeSpec

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


def drawing_order(items: Sequence, boxes: Sequence[Sequence[float]]) -> list:
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
    for spec in drawing_order(scene.shapes, [spec.box for spec in scene.shapes]):
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
