"""Captions of the shapes world in the paper's two styles (section 4.1): COCO-MIG's short
"a red circle" and LayoutSAM-like detailed ones, the global prompts built from them, their
vocabulary, and a scene turned into a Layout."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from idruid.colors import COLOR_NAMES
from idruid.layout import Instance, Layout

from .world import SHAPES, Scene, ShapeSpec

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


def check_style(style: str) -> None:
    if style not in ("short", "detailed"):
        raise ValueError(f"unknown caption style {style!r} (known: short, detailed)")


def _captions(scene: Scene, style: str, rng: np.random.Generator) -> list[str]:
    check_style(style)
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
