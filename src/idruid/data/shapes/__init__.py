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

The package: world.py (palette, shapes, textures, the scene types), scenes.py (sampling scenes),
drawing.py (masks and images), captions.py (the two caption styles, scenes as layouts) and
splits.py (training pairs, prompt-only layouts, the benchmarks); their names are re-exported here.
"""

from .captions import (
    CAPTION_PUNCTUATION,
    CAPTION_VOCABULARY,
    DETAILED_PROMPT_TEMPLATES,
    DETAILED_TEMPLATES,
    SHAPE_WORDS,
    SHORT_PROMPT_PREFIX,
    TEXTURE_ADJECTIVES,
    TEXTURE_PHRASES,
    caption_words,
    detailed_caption,
    global_prompt,
    scene_to_layout,
    short_caption,
)
from .drawing import render, render_layout_scene, shape_mask
from .scenes import ASPECT_RANGE, MAX_COVERED, MAX_PAIR_IOU, SAME_COLOR_GAP, SIZE_RANGE, sample_scene
from .splits import (
    BENCHMARKS,
    BenchmarkSpec,
    ShapesPairedDataset,
    benchmark_layouts,
    image_to_tensor,
    prompt_only_layout,
    prompt_only_layouts,
)
from .world import BACKGROUND, COLORS, RESOLUTION, SHADES, SHAPES, TEXTURES, Scene, ShapeSpec

__all__ = [
    "ASPECT_RANGE",
    "BACKGROUND",
    "BENCHMARKS",
    "BenchmarkSpec",
    "CAPTION_PUNCTUATION",
    "CAPTION_VOCABULARY",
    "COLORS",
    "DETAILED_PROMPT_TEMPLATES",
    "DETAILED_TEMPLATES",
    "MAX_COVERED",
    "MAX_PAIR_IOU",
    "RESOLUTION",
    "SAME_COLOR_GAP",
    "SHADES",
    "SHAPES",
    "SHAPE_WORDS",
    "SHORT_PROMPT_PREFIX",
    "SIZE_RANGE",
    "Scene",
    "ShapeSpec",
    "ShapesPairedDataset",
    "TEXTURES",
    "TEXTURE_ADJECTIVES",
    "TEXTURE_PHRASES",
    "benchmark_layouts",
    "caption_words",
    "detailed_caption",
    "global_prompt",
    "image_to_tensor",
    "prompt_only_layout",
    "prompt_only_layouts",
    "render",
    "render_layout_scene",
    "sample_scene",
    "scene_to_layout",
    "shape_mask",
    "short_caption",
]
