"""How a box becomes pixels or tokens: each rule named once.

Boxes are normalised ``[x0, y0, x1, y1]`` (top-left and bottom-right corners, as in the paper)
unless a name says otherwise. Pixel j of a row of ``width`` pixels spans [j / width, (j + 1) /
width) and has its centre at (j + 0.5) / width. Three rules turn a box into pixels, and they
differ on purpose:

- **centre rule** (``pixel_masks``, ``patch_pixel_masks``): a pixel is inside when its centre
  is, half-open (``x0 <= centre < x1``), so adjacent boxes share no pixel and a box covers as
  many pixels as its area says, to within one row and column. This is how the shapes world
  draws shapes, how the leakage rate reads a box and how the IDM reads a box inside a token cell.
- **truncation rule** (``truncated_windows``): LayoutSAM-eval's crop, as CreatiLayout's
  scoring script takes it: each coordinate rounded to 3 decimals, times the image side in
  float32, truncated to an integer; the crop runs from the first corner to before the second.
- **covering rule** (``covering_cells``): a cell is inside when the box covers any part of it
  (open on both sides: a box ending exactly on a cell edge does not reach the next cell), so
  a box smaller than a cell still marks the cell it sits in. This is the attention mask of
  L_dis and of the RL stage's per-instance credit on the latent grid, where a small box must
  not vanish.

The other conversions: ``to_pixels`` scales a box to pixel coordinates without rounding (as
COCO-MIG prompts SAM), ``mask_box`` is the normalised box on pixel edges around a mask's
pixels, ``cxcywh_to_xyxy`` reads DETR-style centre/size boxes (unclipped). ``box_iou``
(``pair_iou`` for two boxes as Python numbers) and ``pairwise_iou`` compare boxes; they do not
depend on the image size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

# ----------------------------------------------------------------------------- comparing boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of broadcastable xyxy boxes (..., 4) -> (...); 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    # np.maximum(x, 0), not np.clip: the same values at a third of the per-call cost
    lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    overlap = np.maximum(hi - lo, 0.0)
    inter = overlap[..., 0] * overlap[..., 1]
    side_a, side_b = np.maximum(a[..., 2:] - a[..., :2], 0.0), np.maximum(b[..., 2:] - b[..., :2], 0.0)
    area_a, area_b = side_a[..., 0] * side_a[..., 1], side_b[..., 0] * side_b[..., 1]
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pair_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """``box_iou`` of two boxes given as Python numbers, in plain arithmetic: the shapes world's
    rejection sampler calls it once per candidate pair, where numpy's per-call overhead would be
    ten times the arithmetic (the same operations, so the same float64 result)."""
    width = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    height = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = width * height
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (n, 4) with every box in b (m, 4) -> (n, m)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    return box_iou(a[:, None, :], b[None, :, :])


# ----------------------------------------------------------------------------- box formats


def to_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 4) normalised xyxy -> (n, 4) float64 xyxy in pixels of a height x width image, not
    rounded, as COCO-MIG scales its boxes (box * 512 on the 512x512 image)."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([width, height, width, height])


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) normalised centre/size boxes, as DETR-style heads predict them, to normalised
    corners (x0 = cx - w / 2, ..., in the input's precision, as GroundingDINO converts them). Not
    clipped: a box may leave the image, and COCO-MIG's scorer keeps it so (clipping would only
    raise its IoU with a target on the border)."""
    boxes = np.asarray(boxes)
    centre, size = boxes[..., :2], boxes[..., 2:]
    return np.concatenate([centre - size / 2, centre + size / 2], axis=-1)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 normalised xyxy on pixel edges: the smallest box holding a non-empty (H, W)
    mask's pixels (the first pixel's left edge to the last pixel's right edge)."""
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array(
        [cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height], dtype=np.float32
    )


# ----------------------------------------------------------------------------- centre rule


@functools.lru_cache(maxsize=32)
def _pixel_centres(size: int) -> np.ndarray:
    """(size,) normalised pixel centres (j + 0.5) / size, read-only (the shapes world's sampler
    asks for one box's pixels tens of times per scene)."""
    centres = (np.arange(size) + 0.5) / size
    centres.flags.writeable = False
    return centres


def pixel_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool (n, height, width): the pixels whose centres lie inside each normalised box.

    The rule is half-open, ``x0 <= (j + 0.5) / width < x1``, so adjacent boxes share no pixel.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xs, ys = _pixel_centres(width), _pixel_centres(height)
    inside_x = (xs >= boxes[:, 0, None]) & (xs < boxes[:, 2, None])  # (n, W)
    inside_y = (ys >= boxes[:, 1, None]) & (ys < boxes[:, 3, None])  # (n, H)
    return inside_y[:, :, None] & inside_x[:, None, :]


def truncated_windows(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, 4) int [row0, row1, col0, col1) crop windows of normalised xyxy boxes by the truncation
    rule: CreatiLayout's LayoutSAM-eval script normalises each box with ``round(x / side, 3)``,
    keeps it as float32 and crops ``int(x * resolution)`` (PIL's crop: up to, not including, the
    second corner). A window that would hold no pixel (a box thinner than a pixel) is widened to
    the one pixel where it starts, clipped to the image: the script would hand its VLM an empty
    image there, and a judge must be shown something for every box."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rounded = np.array([[round(float(v), 3) for v in box] for box in boxes], dtype=np.float32).reshape(-1, 4)
    sides = np.array([width, height, width, height], dtype=np.float32)
    col0, row0, col1, row1 = np.trunc(rounded * sides).astype(np.int64).T  # float32 products, as torch's
    col0, row0 = np.clip(col0, 0, width - 1), np.clip(row0, 0, height - 1)
    col1, row1 = np.clip(np.maximum(col1, col0 + 1), 1, width), np.clip(np.maximum(row1, row0 + 1), 1, height)
    return np.stack([row0, row1, col0, col1], axis=1)


def pixels_to_cells(pixels: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """(..., H, W) -> (..., cells, patch * patch): the patch x patch squares of an image
    transformer's tokens, in row-major cell order."""
    cells = pixels.unflatten(-2, (height // patch, patch)).unflatten(-1, (width // patch, patch))
    return cells.transpose(-3, -2).flatten(-4, -3).flatten(-2)


def patch_pixel_masks(boxes: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Which pixels of each token cell lie in each box: (..., 4) -> (..., cells, patch * patch).

    The centre rule of ``pixel_masks`` on a torch grid, regrouped by token cell. The mean over
    the last axis is the share of the cell that the box covers; the pattern itself tells where
    in the cell the box edge runs.
    """
    if height % patch or width % patch:
        raise ValueError(f"image {height}x{width} is not a multiple of the patch size {patch}")
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    x0, y0, x1, y1 = (boxes[..., k, None] for k in range(4))
    inside = ((ys >= y0) & (ys < y1))[..., :, None] & ((xs >= x0) & (xs < x1))[..., None, :]  # (..., H, W)
    return pixels_to_cells(inside, height, width, patch).to(boxes.dtype)  # (..., h*w, p*p)


def patch_geometry(boxes: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """Each box seen from the pixels of each token cell: (..., 4) -> (..., cells, patch * patch, 6).

    Per pixel: [inside, u, v, u^2, v^2, u v] with (u, v) the pixel centre's position relative
    to the box (0 at x0 / y0, 1 at x1 / y1), all zeroed outside the box. A degree-2 polynomial
    basis of the in-box position: an object's silhouette inside its box (a disc, a body, a
    wheel) is then close to a linear threshold of these features, which a small backbone can
    learn quickly at sub-cell precision.
    """
    inside = patch_pixel_masks(boxes, height, width, patch)
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    x0, y0, x1, y1 = (boxes[..., k, None] for k in range(4))
    u = ((xs - x0) / (x1 - x0).clamp(min=1e-6))[..., None, :].expand(*x0.shape[:-1], height, width)
    v = ((ys - y0) / (y1 - y0).clamp(min=1e-6))[..., :, None].expand(*y0.shape[:-1], height, width)
    u, v = (pixels_to_cells(c, height, width, patch) for c in (u, v))
    return torch.stack([inside, u, v, u * u, v * v, u * v], dim=-1) * inside.unsqueeze(-1)


# ----------------------------------------------------------------------------- covering rule


def covering_cells(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Binary masks (..., height * width) on a grid of cells, from boxes (..., 4).

    A cell is inside a box when the box covers any part of it, so even a box smaller
    than one cell marks at least the cell it sits in. Padded all-zero boxes give empty masks.
    """
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype)
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    x0, y0, x1, y1 = (boxes[..., k, None] for k in range(4))
    # cell j spans [j/width, (j+1)/width): overlap when it starts before x1 and ends after x0
    inside_x = (xs / width < x1) & ((xs + 1) / width > x0)  # (..., W)
    inside_y = (ys / height < y1) & ((ys + 1) / height > y0)  # (..., H)
    nonempty = ((x1 > x0) & (y1 > y0))[..., None]
    mask = inside_y[..., :, None] & inside_x[..., None, :] & nonempty
    return mask.flatten(-2).to(boxes.dtype)
