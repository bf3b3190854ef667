"""How the analytic judge and detector read corrupted ground-truth renders of shapes-sam.

Generated images are noisy, so the stand-ins for GroundingDINO and the VLM judge must read a
shape through noise as a learned model would. This prints, per corruption, the share of
instances the judge gets right (spatial / colour / texture / shape) and the ISR of the COCO-MIG
protocol, on every other layout of shapes-sam (250 layouts, 1000 instances):

    python scripts/judge_robustness.py
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from idruid.data.shapes import benchmark_layouts, render_layout_scene
from idruid.metrics import score_coco_mig
from idruid.scorers.analytic import AnalyticDetector, AnalyticJudge, AnalyticSegmenter


def _specks(images, rng, share):
    noisy = images.copy()
    hit = rng.random(images.shape[:3]) < share
    noisy[hit] = rng.integers(0, 256, (int(hit.sum()), 3))
    return noisy


def _gaussian(images, rng, sigma):
    return np.clip(images + rng.normal(0.0, sigma, images.shape), 0, 255).astype(np.uint8)


def _blur(images, rng, sigma):
    return np.clip(ndimage.gaussian_filter(images.astype(float), (0, sigma, sigma, 0)), 0, 255).astype(
        np.uint8
    )


CORRUPTIONS = {
    "clean": lambda x, rng: x,
    "specks 3%": lambda x, rng: _specks(x, rng, 0.03),
    "specks 8%": lambda x, rng: _specks(x, rng, 0.08),
    "gaussian std 15": lambda x, rng: _gaussian(x, rng, 15.0),
    "gaussian std 30": lambda x, rng: _gaussian(x, rng, 30.0),
    "blur 0.5 px": lambda x, rng: _blur(x, rng, 0.5),
    "blur 0.8 px": lambda x, rng: _blur(x, rng, 0.8),
}


def main() -> None:
    layouts = benchmark_layouts("shapes-sam")[::2]
    clean = np.stack([render_layout_scene(layout) for layout in layouts])
    boxes = [np.array([inst.box for inst in layout.instances]) for layout in layouts]
    captions = [layout.captions for layout in layouts]
    print("| corruption | spatial | colour | texture | shape | ISR |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, corrupt in CORRUPTIONS.items():
        images = corrupt(clean, np.random.default_rng(0))
        verdicts = [v for row in AnalyticJudge().judge(images, boxes, captions) for v in row]
        scores = [
            s for row in score_coco_mig(images, layouts, AnalyticDetector(), AnalyticSegmenter()) for s in row
        ]
        shares = [
            np.mean([getattr(v, a) for v in verdicts]) for a in ("spatial", "color", "texture", "shape")
        ]
        isr = np.mean([s.position_ok and s.color_ok for s in scores])
        print(f"| {name} | " + " | ".join(f"{100 * x:.1f}" for x in [*shares, isr]) + " |")


if __name__ == "__main__":
    main()
