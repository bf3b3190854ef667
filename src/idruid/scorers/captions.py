"""What a caption names in the shapes world: its colour, shape and texture words, with the
synonyms the detailed captions use (idruid.data.shapes), read the same way by the analytic
detector and judge."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from idruid.colors import COLOR_NAMES

SHAPE_NAMES = ("circle", "square", "triangle")
TEXTURE_NAMES = ("solid", "striped", "dotted")

_SHAPE_SYNONYMS = {
    "circle": "circle",
    "circles": "circle",
    "disc": "circle",
    "disk": "circle",
    "round": "circle",
    "ring": "circle",
    "square": "square",
    "squares": "square",
    "tile": "square",
    "block": "square",
    "box": "square",
    "triangle": "triangle",
    "triangles": "triangle",
    "triangular": "triangle",
    "pyramid": "triangle",
}
_TEXTURE_SYNONYMS = {
    "solid": "solid",
    "plain": "solid",
    "flat": "solid",
    "uniformly": "solid",
    "uniform": "solid",
    "striped": "striped",
    "stripes": "striped",
    "stripe": "striped",
    "stripy": "striped",
    "banded": "striped",
    "bands": "striped",
    "lined": "striped",
    "dotted": "dotted",
    "dots": "dotted",
    "dot": "dotted",
    "polka": "dotted",
    "speckled": "dotted",
    "spotted": "dotted",
}


@dataclass(frozen=True)
class CaptionAttributes:
    color: str | None
    shape: str | None
    texture: str | None


def _first(words: Sequence[str], table: dict[str, str]) -> str | None:
    return next((table[w] for w in words if w in table), None)


def parse_caption(caption: str) -> CaptionAttributes:
    """Colour, shape and texture named in a caption; None for what it does not name."""
    words = re.findall(r"[a-z]+", caption.lower())
    color = next((w for w in words if w in COLOR_NAMES), None)
    return CaptionAttributes(color, _first(words, _SHAPE_SYNONYMS), _first(words, _TEXTURE_SYNONYMS))
