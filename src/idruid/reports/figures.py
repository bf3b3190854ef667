"""What users look at after an evaluation (section 4.1-4.3): layouts drawn on images,
image grids, metrics JSON and an ISR-by-level plot (Table 1 as a figure).

Box outlines use a fixed palette chosen to stand apart, to the eye, from the seven colours
the prompts ask for (red, blue, green, yellow, black, white, brown), each with a 1-px dark
border so it shows on any background, and a small index label (the instance's position).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from idruid.layout import Layout

# magenta, cyan, orange, violet, pink, teal, grey, lavender
BOX_PALETTE = (
    (255, 0, 255),
    (0, 255, 255),
    (255, 140, 0),
    (140, 60, 255),
    (255, 105, 180),
    (0, 150, 150),
    (160, 160, 160),
    (200, 160, 255),
)
DARK = (16, 16, 16)
_TITLE_HEIGHT = 12
_GAP = 2


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _upscale(image: np.ndarray, scale: int) -> Image.Image:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    return Image.fromarray(image).resize((width * scale, height * scale), Image.NEAREST)


def _draw_label(draw: ImageDraw.ImageDraw, x: int, y: int, text: str, color: tuple[int, int, int]) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=_font())
    draw.rectangle((x, y, x + right - left + 2, y + bottom - top + 2), fill=color, outline=DARK)
    draw.text((x + 1 - left, y + 1 - top), text, fill=DARK, font=_font())


def draw_layout(image: np.ndarray, layout: Layout, scale: int = 4, labels: bool = True) -> Image.Image:
    """The image upscaled ``scale`` times (nearest) with each target box outlined and numbered."""
    canvas = _upscale(image, scale)
    width, height = canvas.size
    draw = ImageDraw.Draw(canvas)
    for k, (x0, y0, x1, y1) in enumerate(layout.boxes):
        color = BOX_PALETTE[k % len(BOX_PALETTE)]
        left, top = round(x0 * width), round(y0 * height)
        right, bottom = max(left, round(x1 * width) - 1), max(top, round(y1 * height) - 1)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), outline=DARK)
        draw.rectangle((left, top, right, bottom), outline=color)
        if right - left > 2 and bottom - top > 2:
            draw.rectangle((left + 1, top + 1, right - 1, bottom - 1), outline=DARK)
        if labels:
            _draw_label(draw, max(left, 0), max(top, 0), str(k), color)
    return canvas


def image_grid(
    images: Sequence[np.ndarray],
    layouts: Sequence[Layout] | None = None,
    ncols: int = 8,
    scale: int = 4,
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """Tiles of images (boxes drawn when layouts are given), ``ncols`` per row, titles above."""
    if not len(images):
        raise ValueError("image_grid needs at least one image")
    for name, other in (("layouts", layouts), ("titles", titles)):
        if other is not None and len(other) != len(images):
            raise ValueError(f"{len(images)} images but {len(other)} {name}")
    tiles = [
        draw_layout(im, layouts[k], scale) if layouts is not None else _upscale(im, scale)
        for k, im in enumerate(images)
    ]
    tile_w = max(t.width for t in tiles)
    tile_h = max(t.height for t in tiles) + (_TITLE_HEIGHT if titles is not None else 0)
    cols = min(ncols, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    grid = Image.new("RGB", (cols * tile_w + (cols - 1) * _GAP, rows * tile_h + (rows - 1) * _GAP), "white")
    draw = ImageDraw.Draw(grid)
    for k, tile in enumerate(tiles):
        x, y = (k % cols) * (tile_w + _GAP), (k // cols) * (tile_h + _GAP)
        if titles is not None:
            draw.text((x + 1, y), str(titles[k]), fill=DARK, font=_font())
            y += _TITLE_HEIGHT
        grid.paste(tile, (x, y))
    return grid


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to metrics JSON")


def write_metrics(out_dir: str | Path, name: str, metrics: dict) -> Path:
    """Write ``out_dir/name.json`` (sorted keys, indent 2) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(metrics, sort_keys=True, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


def _levels(metrics: dict) -> list[int]:
    return sorted(int(k[1:]) for k in metrics if k.startswith("L") and k[1:].isdigit())


def plot_isr_by_level(metrics_by_name: dict[str, dict], path: str | Path) -> Path:
    """Line plot of ISR (%) per COCO-MIG level, one line per run (aggregate_mig outputs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    all_levels: set[int] = set()
    for name, metrics in metrics_by_name.items():
        levels = _levels(metrics)
        all_levels.update(levels)
        isr = [100.0 * metrics[f"L{lv}"]["isr"] for lv in levels]
        axes.plot(levels, isr, marker="o", label=name)
    axes.set_xticks(sorted(all_levels), [f"L{lv}" for lv in sorted(all_levels)])
    axes.set_xlabel("COCO-MIG level (instances per image)")
    axes.set_ylabel("instance success rate (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    if metrics_by_name:
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
