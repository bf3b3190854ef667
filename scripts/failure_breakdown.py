"""Which instances fail COCO-MIG's checks, by object name and by cause (README, "The RL stage").

    python scripts/failure_breakdown.py runs/NAME/eval-mig/images --benchmark shapes-mig

Reads a folder of benchmark images named ``*_<index>.png`` (as ``idruid eval`` writes them),
scores them with the analytic detector and segmenter, and prints for each object name how many
instances fail and why: nothing detected, a detection too far from the box (IoU < 0.5), or the
colour check.
"""

from __future__ import annotations

import argparse
from collections import Counter

from idruid.eval_benchmarks import get_benchmark, select_layouts
from idruid.metrics import object_name, score_coco_mig
from idruid.scorers.registry import load_scorer
from idruid.scoring import find_images, load_images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", help="folder of images named *_<index>.png")
    parser.add_argument("--benchmark", default="shapes-mig", choices=["shapes-mig", "shapes-sam"])
    args = parser.parse_args()

    benchmark = get_benchmark(args.benchmark)
    layouts = select_layouts(benchmark)
    images = load_images(find_images(args.images, layouts), benchmark.resize())
    scores = score_coco_mig(
        images, layouts, load_scorer("detector", "analytic"), load_scorer("segmenter", "analytic")
    )
    total, causes = Counter(), Counter()
    for layout, row in zip(layouts, scores, strict=True):
        for caption, score in zip(layout.captions, row, strict=True):
            name = object_name(caption)
            total[name] += 1
            if score.success:
                continue
            cause = (
                "not detected" if not score.detected else "IoU < 0.5" if not score.position_ok else "colour"
            )
            causes[name, cause] += 1
    failures = sum(causes.values())
    print(f"{failures} of {sum(total.values())} instances fail")
    for name in sorted(total):
        own = {cause: n for (other, cause), n in causes.items() if other == name}
        failed = sum(own.values())
        detail = ", ".join(f"{cause} {n}" for cause, n in sorted(own.items()))
        print(
            f"{name}: {failed} of {total[name]} fail ({100 * failed / total[name]:.1f}%; "
            f"{100 * failed / max(failures, 1):.1f}% of all failures){': ' + detail if detail else ''}"
        )


if __name__ == "__main__":
    main()
