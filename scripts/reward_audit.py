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

from idruid.boxes import pixel_masks
from idruid.colors import COLOR_NAMES, caption_color, color_membership
from idruid.eval_benchmarks import resolve
from idruid.metrics.checks import leak_flags, score_coco_mig
from idruid.rl.rewards import COLOR_SHARE_FULL, LayoutReward, color_shares
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


def audit(images: np.ndarray, layouts: list) -> dict:
    by_threshold = {
        t: LayoutReward(AnalyticDetector(), threshold=t).matches(images, layouts) for t in THRESHOLDS
    }
    scores = score_coco_mig(images, layouts, AnalyticDetector(), AnalyticSegmenter())
    flags = leak_flags(images, layouts)
    own_shares = color_shares(images, layouts, AnalyticSegmenter()).numpy()
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


def table(named: list[str]) -> str:
    """Markdown rows from audit files given as NAME=PATH: what the reward pays (threshold 0, the
    analytic detector's candidates as they come, and 0.25) against what the benchmark grants."""
    header = (
        "| images | leaking instances | their reward term (thr 0 / 0.25 / colour-gated) | the others' |"
        " benchmark fails paid as passing (thr 0 / 0.25) |\n|---|---:|---:|---:|---:|"
    )
    rows = [header]
    for item in named:
        name, path = item.split("=", 1)
        audit_ = json.loads(Path(path).read_text())
        leaked, others = audit_["leaked"], audit_["not_leaked"]

        def terms(part: dict) -> str:
            if not part.get("instances"):
                return "-"
            keys = ("reward_term@0.0", "reward_term@0.25", "color_reward_term@0.25")
            return " / ".join(f"{part[k]:.2f}" for k in keys)

        paid = " / ".join(f"{100 * audit_[f'benchmark_fails_reward_passes@{t}']:.0f}%" for t in THRESHOLDS)
        count = f"{leaked['instances']} of {audit_['all']['instances']}"
        rows.append(f"| {name} | {count} | {terms(leaked)} | {terms(others)} | {paid} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", help="folder of <benchmark>_<index>.png images")
    parser.add_argument("--benchmark", help="a shapes benchmark (idruid.eval_benchmarks)")
    parser.add_argument("--out", help="write the summary here as JSON")
    parser.add_argument("--table", nargs="+", metavar="NAME=AUDIT_JSON", help="print a table of audits")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not (args.images and args.benchmark):
        parser.error("give --images and --benchmark (or --table)")
    run = resolve(args.benchmark)
    images = load_images(find_images(args.images, run.layouts), None)
    result = {"benchmark": args.benchmark, "images": args.images, **audit(images, run.layouts)}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
