"""The images and prompts of the quality metrics: checked image batches, image folders and
prompt files (``idruid quality --images / --reference / --prompts``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import QualityError
from ..textfile import read_text

ImageBatch = np.ndarray | Sequence[np.ndarray]  # (B, H, W, 3) uint8, or B arrays (H_b, W_b, 3) uint8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ----------------------------------------------------------------------------- images and prompts


def check_images(images: ImageBatch, name: str = "images") -> list[np.ndarray]:
    """A list of (H, W, 3) uint8 arrays (sizes may differ: the processors resize), checked."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    checked = []
    for k, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise QualityError(f"{name}[{k}] must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        checked.append(image)
    if not checked:
        raise QualityError(f"{name} is empty")
    return checked


def load_image_dir(path: str | os.PathLike, flag: str = "--images") -> list[np.ndarray]:
    """The images of a folder (png, jpg, webp, bmp), sorted by file name, as RGB uint8 arrays."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        raise QualityError(f"{flag} {path}: not a directory")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise QualityError(f"{flag} {path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise QualityError(f"{flag} {file}: cannot read the image ({err})") from err
    return images


def load_prompts(path: str | os.PathLike, flag: str = "--prompts") -> list[str]:
    """Prompts in image order: a .txt file with one prompt per line, or a layout file (.json / .jsonl)
    whose layouts' prompts are taken, so the layouts given to ``idruid generate`` serve directly."""
    path = Path(path)
    if not path.is_file():
        raise QualityError(f"{flag} {path}: file not found")
    if path.suffix.lower() in (".json", ".jsonl"):
        from ..errors import LayoutError
        from ..layout import load_layouts

        try:
            return [layout.prompt for layout in load_layouts(path)]
        except LayoutError as err:
            raise QualityError(f"{flag} {err}") from err
    lines = read_text(path, QualityError).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines are not prompts
    for k, line in enumerate(lines):
        if not line.strip():
            raise QualityError(f"{flag} {path}: line {k + 1} is empty (one prompt per line)")
    if not lines:
        raise QualityError(f"{flag} {path}: no prompts")
    return [line.strip() for line in lines]


def image_batches(images: list[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
    """The images in consecutive chunks of at most ``batch_size``."""
    if batch_size < 1:
        raise QualityError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]
