"""Which boxes a model fails: COCO-MIG's instance success and the judge's shape verdict per class
of box (short side in pixels, elongation, nesting; idruid.data.box_stats.box_classes), for one or
more folders of benchmark images. It measures what the world's resolution does to the smallest
boxes and what nested boxes cost (README, "The world" and "What the RL stage gains and costs").

    python scripts/isr_breakdown.py --benchmark shapes-mig --out results/breakdown/shapes-mig.json \\
        row2-s0=RUN/eval-shapes-mig/images row6-s0=RUN2/eval-shapes-mig/images
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from idruid.data.box_stats import box_classes
from idruid.eval_benchmarks import resolve
from idruid.evaluate import render_ground_truth
from idruid.metrics.checks import score_coco_mig
from idruid.scorers.analytic import AnalyticDetector, AnalyticJudge, AnalyticSegmenter
from idruid.scoring import find_images, load_images


def breakdown(images: np.ndarray, layouts: list, classes: dict[str, np.ndarray]) -> dict:
    """Per class of box: its share of the boxes, ISR (COCO-MIG success), the judge's spatial
    (an object whose extent fits the box, IoU >= 0.5) and shape verdicts, and the share that fails
    both ISR and spatial ("neither")."""
    scores = score_coco_mig(images, layouts, AnalyticDetector(), AnalyticSegmenter())
    success = np.array([s.success for row in scores for s in row])
    verdicts = AnalyticJudge().judge(
        images, [np.asarray(l.boxes) for l in layouts], [l.captions for l in layouts]
    )
    shape = np.array([v.shape for row in verdicts for v in row])
    spatial = np.array([v.spatial for row in verdicts for v in row])
    out = {}
    for name, mask in {"all": np.ones_like(success), **classes}.items():
        out[name] = {
            "share": float(mask.mean()),
            "isr": float(success[mask].mean()),
            "spatial": float(spatial[mask].mean()),
            "shape": float(shape[mask].mean()),
            "neither": float((~success & ~spatial)[mask].mean()),  # no object fits the box at all
        }
    return out


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per folder, ISR / spatial / shape (%) per class, the class shares on top."""
    names = list(next(iter(results.values())))
    first = next(iter(results.values()))
    lines = [
        "| images | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| share of boxes | " + " | ".join(f"{100 * first[n]['share']:.0f}%" for n in names) + " |",
    ]
    for label, by_class in results.items():
        cells = ("/".join(f"{100 * by_class[n][k]:.0f}" for k in ("isr", "spatial", "shape")) for n in names)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, help="a shapes benchmark (idruid.eval_benchmarks)")
    parser.add_argument("--resolution", type=int, default=32, help="image side in pixels")
    parser.add_argument("--out", help="write the results here as JSON (and the table beside it as .md)")
    parser.add_argument("--truth", action="store_true", help="add the ground-truth renders (the ceiling)")
    parser.add_argument("folders", nargs="*", metavar="NAME=IMAGES", help="folders of benchmark images")
    args = parser.parse_args()
    run = resolve(args.benchmark)
    classes = box_classes(run.layouts, args.resolution)
    results = {}
    if args.truth:
        results["ground-truth renders"] = breakdown(render_ground_truth(run.layouts), run.layouts, classes)
    for item in args.folders:
        name, folder = item.split("=", 1)
        images = load_images(find_images(folder, run.layouts), None)
        results[name] = breakdown(images, run.layouts, classes)
    text = table(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"benchmark": args.benchmark, "results": results}, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
