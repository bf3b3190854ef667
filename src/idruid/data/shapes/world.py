"""What the shapes world is made of: its palette (COCO-MIG's seven colours and their texture
shades), shapes and textures, and the scene types that sampling makes and drawing renders."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ShapeSpec:
    color: str
    shape: str
    texture: str
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1


@dataclass(frozen=True)
class Scene:
    shapes: tuple[ShapeSpec, ...]
