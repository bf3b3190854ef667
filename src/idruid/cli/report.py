"""``idruid report`` and ``quality``: tables, plots and image-quality numbers from finished runs."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import QualityError, ReportError


def add_quality(sub) -> None:
    """``idruid quality``."""
    qual = sub.add_parser("quality", help="image quality of a folder: FID, Inception Score, CLIP score")
    qual.add_argument("--images", required=True, metavar="DIR", help="generated images, sorted by name")
    qual.add_argument("--reference", metavar="DIR", help="real images for FID")
    qual.add_argument("--fid-features", metavar="DIR", help="local vision model directory for FID features")
    qual.add_argument("--is-classifier", metavar="DIR", help="local image-classification directory for IS")
    qual.add_argument("--is-splits", type=int, default=10, help="IS chunks for mean and std (default 10)")
    qual.add_argument("--clip", metavar="DIR", help="local CLIP directory (CLIPModel + CLIPProcessor)")
    qual.add_argument("--prompts", metavar="FILE", help="one per image: .txt (a line each) or a layout file")
    qual.add_argument("--out", metavar="FILE", help="results JSON (default <images>/quality.json)")
    qual.add_argument("--batch-size", type=int, default=32)
    qual.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_report(sub) -> None:
    """``idruid report``."""
    rep = sub.add_parser("report", help="paper tables, plots and sample grids from several run folders")
    rep.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders (config.yaml + eval folders)")
    rep.add_argument(
        "--out", required=True, metavar="DIR", help="folder for report.md, plots/ and grids/ (or the copies)"
    )
    rep.add_argument(
        "--spec",
        metavar="FILE",
        help="a YAML report spec naming the rows and their run folders (results/table3.yaml)",
    )
    rep.add_argument(
        "--collect",
        action="store_true",
        help="copy each run's config, log and eval summaries (no weights, no images) to --out/NAME",
    )
    rep.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="name a run (repeatable); runs of one variant given one name name its Table 3 row",
    )
    rep.add_argument("--window", type=int, default=5, help="reward-curve moving average, in log records")
    rep.add_argument(
        "--spread",
        choices=["half-range", "std", "sem"],
        default=None,
        help="Table 3 spread over seeds (sem: standard error of the mean; default the spec's or half-range)",
    )


def cmd_quality(args) -> int:
    import json

    from ..quality import image_quality, load_image_dir, load_prompts

    try:
        result = image_quality(
            load_image_dir(args.images, "--images"),
            reference_images=load_image_dir(args.reference, "--reference") if args.reference else None,
            feature_dir=args.fid_features,
            classifier_dir=args.is_classifier,
            clip_dir=args.clip,
            prompts=load_prompts(args.prompts) if args.prompts else None,
            is_splits=args.is_splits,
            batch_size=args.batch_size,
            device=args.device,
        )
    except QualityError as err:
        print(f"idruid: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.images) / "quality.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def cmd_report(args) -> int:
    from ..reports import write_report

    try:
        runs, labels, spread = list(args.runs), {}, args.spread
        if args.spec:
            from ..reports.spec import load_spec

            spec = load_spec(args.spec)
            runs += spec.runs
            labels.update(spec.labels)
            spread = spread or spec.spread
        if not runs and not args.name:
            raise ReportError("give at least one run folder (RUN_DIR, --name NAME=RUN_DIR or --spec FILE)")
        for item in args.name:
            name, sep, run = item.rpartition("=")
            if not sep or not name or not run:
                raise ReportError(f"--name {item!r}: expected NAME=RUN_DIR")
            labels[run] = name
        if args.collect:
            return _collect(runs, labels, Path(args.out))
        path = write_report(runs, args.out, labels, window=args.window, spread=spread or "half-range")
    except ReportError as err:
        print(f"idruid: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _collect(runs: list, labels: dict, out: Path) -> int:
    """``--collect``: each run (and each --name NAME=RUN) copied to out/NAME (default its folder's name)."""
    from ..reports.collect import collect_run

    named = {Path(run).resolve(): name for run, name in labels.items()}
    for run in dict.fromkeys(Path(run).resolve() for run in [*runs, *labels]):
        target = out / named.get(run, run.name)
        print(f"{run} -> {target}: {collect_run(run, target)} files")
    return 0


COMMANDS = {"quality": cmd_quality, "report": cmd_report}
