"""Sampling scenes: random shapes placed on the pixel grid so that every box is exactly the
visible bounding box of its shape (the ground truth the analytic scorers recover), with boxes
drawn by one of the geometries of idruid.data.shapes.geometry."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from idruid.boxes import pair_iou
from idruid.colors import COLOR_NAMES
from idruid.layout import MAX_INSTANCES

from .drawing import drawing_order, shape_mask
from .geometry import MIN_SIDE, SCORED_SAME_COLOR_GAP, Geometry, get_geometry
from .world import RESOLUTION, SHAPES, TEXTURES, Scene, ShapeSpec

SIZE_RANGE = (0.2, 0.45)  # box side, as a share of the image side
ASPECT_RANGE = (0.75, 1.33)  # height / width
MAX_PAIR_IOU = 0.15
MAX_COVERED = 0.3  # share of a box that the other boxes may cover
SAME_COLOR_GAP = 3  # grid cells between boxes of one colour (a 3x3 closing bridges 2)
_PLACEMENT_TRIES = 60
_RESTARTS_PER_SCALE = 4
_SHRINK = 0.9
_MAX_RESTARTS = 200


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
        if pair_iou(new, box) > MAX_PAIR_IOU:
            return False
        if other_color == color and not _gap_ok(new, box, SAME_COLOR_GAP):
            return False
    boxes = [*placed, new]
    touched = [box for box in boxes if _overlaps(box, new)]  # new itself included
    return all(
        _covered_share(box, [other for other in boxes if other is not box]) <= MAX_COVERED for box in touched
    )


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(first column, first row, last column, last row) of a non-empty mask."""
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    return (
        int(cols.argmax()),
        int(rows.argmax()),
        len(cols) - 1 - int(cols[::-1].argmax()),
        len(rows) - 1 - int(rows[::-1].argmax()),
    )


_FOUR_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)  # ndimage.label's default, built once


def _whole_and_one_piece(visible: np.ndarray, mask: np.ndarray) -> bool:
    """True when the ``visible`` part of a shape's ``mask`` has the mask's whole extent and is one
    4-connected piece (labelled inside that extent: the sampler asks this tens of times a scene)."""
    if not visible.any():
        return False
    extent = _extent(mask)
    if _extent(visible) != extent:
        return False
    x0, y0, x1, y1 = extent
    return ndimage.label(visible[y0 : y1 + 1, x0 : x1 + 1], structure=_FOUR_NEIGHBOURS)[1] == 1


def _fully_visible_extents(specs: Sequence[ShapeSpec], masks: Sequence[np.ndarray]) -> bool:
    """True when, drawn larger-first, every shape stays in one piece and keeps its whole extent,
    so each box is exactly the bounding box of what is visible of its shape."""
    boxes = [spec.box for spec in specs]
    order = drawing_order(range(len(specs)), boxes)
    return _visible(order, masks, boxes, order)


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


def _narrow_scene(rng: np.random.Generator, num_shapes: int, grid: int) -> Scene:
    for restart in range(_MAX_RESTARTS):
        scale = _SHRINK ** (restart // _RESTARTS_PER_SCALE)
        scene = _try_scene(rng, num_shapes, grid, SIZE_RANGE[0] * scale, SIZE_RANGE[1] * scale)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {num_shapes} shapes on a {grid}x{grid} grid")


# ----------------------------------------------------------------------------- other geometries


def _box_of_size(
    rng: np.random.Generator,
    grid: int,
    size: float,
    geometry: Geometry,
    odd_width: bool,
    placed: Sequence[tuple[int, ...]],
) -> tuple[int, ...]:
    """A box in grid cells with sqrt(area) ``size`` (share of the side) and the geometry's aspect,
    sides in [MIN_SIDE, grid] (scaled with the grid), placed uniformly, or with probability
    ``geometry.cluster`` with its centre inside one of the ``placed`` boxes."""
    floor = max(3, round(MIN_SIDE * grid / RESOLUTION))
    aspect = geometry.aspect.draw(rng)
    width, height = size * grid / math.sqrt(aspect), size * grid * math.sqrt(aspect)
    if max(width, height) > grid:  # too long for the image: the other side keeps the area
        width, height = (grid, height * width / grid) if width > height else (width * height / grid, grid)
    width = min(max(round(width), floor), grid)
    height = min(max(round(height), floor), grid)
    if odd_width and width % 2 == 0:  # a centred apex pixel: triangles keep their top row
        width = width + 1 if width < grid else width - 1
    if placed and rng.random() < geometry.cluster:
        host = placed[int(rng.integers(0, len(placed)))]
        cx, cy = rng.uniform(host[0], host[2]), rng.uniform(host[1], host[3])
        x0 = min(max(round(cx - width / 2), 0), grid - width)
        y0 = min(max(round(cy - height / 2), 0), grid - height)
    else:
        x0 = int(rng.integers(0, grid - width + 1))
        y0 = int(rng.integers(0, grid - height + 1))
    return (x0, y0, x0 + width, y0 + height)


def _visible(order: Sequence[int], masks: Sequence[np.ndarray], boxes, check: Sequence[int]) -> bool:
    """True when each shape in ``check``, under everything drawn after it (``order``: drawing
    order), stays in one piece with its whole extent (its box is its visible bounding box).
    ``boxes`` (grid cells or normalised) only skip shapes that cannot cover one another."""
    rank = {k: r for r, k in enumerate(order)}
    for k in check:
        later = [masks[j] for j in order[rank[k] + 1 :] if _overlaps(boxes[j], boxes[k])]
        if not later:
            continue
        hidden = masks[k] & np.logical_or.reduce(later)
        if not hidden.any():
            continue
        visible = masks[k] & ~hidden
        if not _whole_and_one_piece(visible, masks[k]):
            return False
    return True


def _try_geometry_scene(
    rng: np.random.Generator, num_shapes: int, grid: int, geometry: Geometry, gap: int, scale: float
) -> Scene | None:
    colors = [COLOR_NAMES[i] for i in rng.integers(0, len(COLOR_NAMES), num_shapes)]
    shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), num_shapes)]
    textures = [TEXTURES[i] for i in rng.integers(0, len(TEXTURES), num_shapes)]
    law = geometry.size_law(num_shapes)
    # placed larger first, as a scene is drawn, so that smaller shapes settle on larger ones
    sizes = sorted((law.draw(rng) * scale for _ in range(num_shapes)), reverse=True)
    near_color = np.ones((2 * gap + 1,) * 2, dtype=bool)  # dilation by the same-colour gap
    boxes: list[tuple[int, ...]] = []
    specs: list[ShapeSpec] = []
    masks: list[np.ndarray] = []
    reach: list[np.ndarray | None] = []  # each shape dilated by the same-colour gap (if needed)
    for k in range(num_shapes):
        for _ in range(_PLACEMENT_TRIES):
            box = _box_of_size(rng, grid, sizes[k], geometry, shapes[k] == "triangle", boxes)
            spec = ShapeSpec(colors[k], shapes[k], textures[k], tuple(v / grid for v in box))
            mask = shape_mask(spec, grid)
            if _extent(mask) != (box[0], box[1], box[2] - 1, box[3] - 1):
                continue  # a triangle wider than twice its height leaves its bottom corners empty
            if any(
                reach[j] is not None and colors[j] == colors[k] and (reach[j] & mask).any() for j in range(k)
            ):
                continue
            near = [j for j, other in enumerate(boxes) if _overlaps(other, box)]
            trial_boxes = [*boxes, box]
            if not near or _visible(
                drawing_order(range(k + 1), trial_boxes), [*masks, mask], trial_boxes, [*near, k]
            ):
                boxes.append(box)
                specs.append(spec)
                masks.append(mask)
                later_same = colors[k] in colors[k + 1 :]
                reach.append(ndimage.binary_dilation(mask, structure=near_color) if later_same else None)
                break
        else:
            return None
    return Scene(tuple(specs[k] for k in rng.permutation(num_shapes)))  # instances in random order


def sample_scene(
    rng: np.random.Generator,
    num_shapes: int,
    grid: int = RESOLUTION,
    geometry: str = "narrow",
    same_color_gap: int = SCORED_SAME_COLOR_GAP,
) -> Scene:
    """A random scene of ``num_shapes`` shapes whose box edges lie on a ``grid`` x ``grid`` lattice,
    with boxes drawn by ``geometry`` (idruid.data.shapes.geometry.GEOMETRIES).

    Every shape, drawn larger-first, is left in one piece with its whole extent visible (its box
    is its visible bounding box), and shapes of one colour keep ``same_color_gap`` background
    pixels between them. Shapes are placed larger first; when a crowded scene keeps failing to
    place, its sizes shrink step by step. Colours may repeat, as in COCO-MIG.

    ``narrow`` (the world's first geometry, unchanged draw for draw, ``same_color_gap`` not
    read): sides 0.2-0.45 of the image, aspect 0.75-1.33, pairwise IoU <= 0.15, no box more than
    30% covered by the others, boxes of the same colour at least three cells apart.
    """
    if not 1 <= num_shapes <= MAX_INSTANCES:
        raise ValueError(f"num_shapes must be in 1..{MAX_INSTANCES}, got {num_shapes}")
    spec = get_geometry(geometry)
    if spec is None:  # narrow
        return _narrow_scene(rng, num_shapes, grid)
    for restart in range(_MAX_RESTARTS):
        scale = _SHRINK ** (restart // _RESTARTS_PER_SCALE)
        scene = _try_geometry_scene(rng, num_shapes, grid, spec, same_color_gap, scale)
        if scene is not None:
            return scene
    raise RuntimeError(
        f"could not place {num_shapes} shapes of geometry {geometry!r} on a {grid}x{grid} grid"
    )
