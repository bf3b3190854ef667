"""Does the RL reward see what the benchmarks' scorers see? Scores a folder of benchmark images
both ways, instance by instance: the RL stage's reward terms (Eq. 6 with the analytic detector:
the IoU of the best detection and its confidence) against COCO-MIG's verdict and the leakage
flag (idruid.metrics).

It answers the questions of README's "Why RL raised leakage off its prompts": how much reward a
leaking instance still earns (reward hacking, if much), how much the instance whose colour
leaked earns, and how the reward ranks instances that fail the benchmark.

    python scripts/reward_audit.py --images RUN/eval-shapes-strips/images --benchmark shapes-strips \\
        --out RUN/eval-shapes-strips/reward_audit.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from idruid.benchmarks import resolve
from idruid.boxes import pixel_masks
from idruid.colors import COLOR_NAMES, color_membership
from idruid.metrics.checks import caption_color, leak_flags, score_coco_mig
from idruid.rl.rewards import COLOR_SHARE_FULL, LayoutReward
from idruid.scorers.analytic import AnalyticDetector, AnalyticSegmenter
from idruid.scoring import find_images, load_images

PASS_IOU = 0.5
THRESHOLDS = (0.0, 0.25)  # the reward's box threshold: none (the analytic detector's default), COCO-MIG's


def _summary(columns: dict[str, np.ndarray], keep: np.ndarray) -> dict:
    count = int(keep.sum())
    if count == 0:
        return {"instances": 0}
    out = {"instances": count}
    for threshold in THRESHOLDS:
        iou, conf = columns[f"iou@{threshold}"][keep], columns[f"conf@{threshold}"][keep]
        out[f"reward_term@{threshold}"] = float((iou + conf).mean())  # IoU + confidence, Eq. 6, k = 1
        out[f"reward_passes@{threshold}"] = float((iou >= PASS_IOU).mean())  # its best box fits the target
        gate = np.minimum(1.0, columns["own_share"][keep] / COLOR_SHARE_FULL)
        out[f"color_reward_term@{threshold}"] = float(((iou + conf) * gate).mean())  # iou_conf_color
    out["own_colour_share"] = float(columns["own_share"][keep].mean())  # COCO-MIG's colour-check quantity
    out["benchmark_success"] = float(columns["success"][keep].mean())
    return out


def _own_shares(images: np.ndarray, layouts: list) -> list[np.ndarray]:
    """Per image (n,): the share of the segmented target box (the analytic segmenter's mask) in the
    caption colour's COCO-MIG range, what the colour check compares with 20%."""
    masks = AnalyticSegmenter().segment(images, [np.asarray(layout.boxes) for layout in layouts])
    shares = []
    for image, layout, image_masks in zip(images, layouts, masks, strict=True):
        membership = color_membership(image)
        row = []
        for caption, mask in zip(layout.captions, image_masks, strict=True):
            color = caption_color(caption)
            inside = membership[mask]
            row.append(float(inside[:, COLOR_NAMES.index(color)].mean()) if color and len(inside) else 0.0)
        shares.append(np.array(row))
    return shares


def audit(images: np.ndarray, layouts: list) -> dict:
    by_threshold = {
        t: LayoutReward(AnalyticDetector(), threshold=t).matches(images, layouts) for t in THRESHOLDS
    }
    scores = score_coco_mig(images, layouts, AnalyticDetector(), AnalyticSegmenter())
    flags = leak_flags(images, layouts)
    own_shares = _own_shares(images, layouts)
    rows = []  # one dict per instance
    for b, layout in enumerate(layouts):
        n = len(layout.instances)
        colors = [caption_color(c) for c in layout.captions]
        leaked = flags[b]
        # the sources: the instances whose colour is the most frequent one in a leaked box
        sources = np.zeros(n, dtype=bool)
        if leaked.any():
            membership = color_membership(images[b])  # (H, W, 7)
            boxes = pixel_masks(np.asarray(layout.boxes), *images[b].shape[:2])  # (n, H, W)
            for i in np.flatnonzero(leaked):
                dominant = COLOR_NAMES[int(membership[boxes[i]].sum(axis=0).argmax())]
                sources |= np.array([j != i and colors[j] == dominant for j in range(n)])
        for i in range(n):
            row = {"success": bool(scores[b][i].success), "leaked": bool(leaked[i])}
            row["source"] = bool(sources[i] and not leaked[i])
            row["own_share"] = own_shares[b][i]
            for t, matches in by_threshold.items():
                row[f"iou@{t}"], row[f"conf@{t}"] = float(matches.iou[b, i]), float(matches.confidence[b, i])
            rows.append(row)
    columns = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    success, leaked = columns["success"], columns["leaked"]
    passes = {t: columns[f"iou@{t}"] >= PASS_IOU for t in THRESHOLDS}
    return {
        "all": _summary(columns, np.ones_like(success)),
        "leaked": _summary(columns, leaked),
        "not_leaked": _summary(columns, ~leaked),
        "neighbours_of_leaked": _summary(columns, columns["source"]),
        "benchmark_fails": _summary(columns, ~success),
        **{
            f"benchmark_fails_reward_passes@{t}": float(
                (~success & passes[t]).sum() / max((~success).sum(), 1)
            )
            for t in THRESHOLDS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="folder of <benchmark>_<index>.png images")
    parser.add_argument("--benchmark", required=True, help="a shapes benchmark (idruid.benchmarks)")
    parser.add_argument("--out", help="write the summary here as JSON")
    args = parser.parse_args()
    run = resolve(args.benchmark)
    images = load_images(find_images(args.images, run.layouts), None)
    result = {"benchmark": args.benchmark, "images": args.images, **audit(images, run.layouts)}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
