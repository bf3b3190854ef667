"""The ``idruid`` command: generate, train, eval and demo.

Bad input (a malformed layout, a missing or corrupt checkpoint, an unknown config key, a file
that cannot be read) exits with status 2 and one line ``idruid: error: <field>: <problem>``; any
other failure with status 1 and one line; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .benchmarks import BENCHMARKS, ScoringError
from .checkpoint import CheckpointError
from .config import ConfigError, list_presets
from .layout import LayoutError
from .model_dirs import ModelFolderError
from .ui.limits import JOB_TIMEOUT, MAX_QUEUE, MAX_REQUEST_BYTES

USER_ERRORS = (LayoutError, CheckpointError, ConfigError, FileNotFoundError, ScoringError, ModelFolderError)
DEBUG_HELP = "print the traceback of an error instead of its one-line message"


# `idruid train --backbone B` without --config trains the embedded world's stage-1 preset of B
BACKBONE_PRESETS = {"sd3": "shapes", "sd15": "shapes-sd15"}


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """Sampling flags; those left out come from the checkpoint's ``sampling`` settings."""
    parser.add_argument(
        "--checkpoint",
        help="idruid checkpoint folder (default: the embedded shapes model), or the I-DRUID authors' "
        "checkpoint folder (with --base)",
    )
    parser.add_argument(
        "--base",
        help="the base model folder: an SD3 folder for the authors' checkpoint (text encoders, VAE, "
        "scheduler), or where an idruid checkpoint's base folder lives now",
    )
    parser.add_argument(
        "--mask-rows",
        choices=["unconditional", "conditional", "both"],
        help="authors' checkpoint: the guidance rows given the box masks (default: unconditional, "
        "as their code; conditional is the paper's reading)",
    )
    parser.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's, else 20)")
    parser.add_argument(
        "--cfg", type=float, help="classifier-free guidance scale (default: the checkpoint's, else 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for layouts without their own")
    parser.add_argument(
        "--layout-fraction",
        type=float,
        help="share of the steps with the layout branch + IDM on (default: the checkpoint's, else 0.3)",
    )
    parser.add_argument(
        "--shift", type=float, help="timestep shift of the schedule (default: the checkpoint's, else 1)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _add_scorer_args(parser: argparse.ArgumentParser) -> None:
    """Benchmark data, layout selection and scoring models of ``eval`` and ``score``."""
    parser.add_argument(
        "--bench-dir",
        help="coco-mig: folder holding mig_bench.txt and mig_bench_anno.yaml; "
        "layoutsam-eval: a LayoutSAM-eval parquet file or folder of shards",
    )
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--per-level", type=int, default=None, help="only the first N layouts of each level")
    pick.add_argument("--limit", type=int, default=None, help="only the first N layouts (in index order)")
    parser.add_argument(
        "--judge",
        help="LayoutSAM-eval judge: a local VLM directory (required for layoutsam-eval), or "
        "'analytic' (the shapes benchmarks' default)",
    )
    parser.add_argument(
        "--detector", help="local GroundingDINO directory, or 'analytic' (the shapes benchmarks' default)"
    )
    parser.add_argument(
        "--segmenter", help="local SAM directory, or 'analytic' (the shapes benchmarks' default)"
    )
    parser.add_argument(
        "--mig-protocol",
        choices=["mig-bench", "druid"],
        default="mig-bench",
        help="COCO-MIG scoring: mig-bench (MIG_Bench's: 512 px, SAM; the default) or druid (the I-DRUID "
        "authors': images at their own size, SAM-HQ as --segmenter); their numbers are not comparable",
    )
    parser.add_argument(
        "--score-batch-size",
        type=int,
        default=8,
        help="images read and scored at a time by the detector, segmenter and judge (default 8)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idruid", description="Layout-to-image generation with I-DRUID.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate", help="generate images from a layout file (JSON object, list or JSON Lines)"
    )
    gen.add_argument("layout", help="layout file")
    gen.add_argument(
        "--out", required=True, help="PNG file for one layout, a folder for several ({k:05d}.png)"
    )
    _add_sampling_args(gen)

    tr = sub.add_parser("train", help="stage-1 training (resumes when the run folder has checkpoints)")
    tr.add_argument(
        "--config",
        help=f"preset name ({', '.join(list_presets())}) or YAML file (default: the --backbone's preset)",
    )
    tr.add_argument(
        "--backbone",
        choices=sorted(BACKBONE_PRESETS),
        help="sd3 (MM-DiT, flow matching) or sd15 (UNet, DDPM); without --config it picks "
        + ", ".join(f"{b}: {p}" for b, p in BACKBONE_PRESETS.items())
        + "; with one, the config must use it",
    )
    tr.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 model.use_idm=false")

    ev = sub.add_parser(
        "eval", help="generate a benchmark and score it (split across processes under accelerate launch)"
    )
    ev.add_argument("--benchmark", required=True, choices=tuple(BENCHMARKS))
    ev.add_argument("--out", default=None, help="output folder (default runs/eval-<benchmark>)")
    ev.add_argument("--batch-size", type=int, default=100)
    _add_scorer_args(ev)
    _add_sampling_args(ev)

    sc = sub.add_parser(
        "score", help="score a folder of benchmark images made by any system, named <anything>_<index>.png"
    )
    sc.add_argument("--benchmark", required=True, choices=tuple(BENCHMARKS))
    sc.add_argument("--images", required=True, help="folder of images named <anything>_<benchmark index>.png")
    sc.add_argument("--out", default=None, help="output folder (default runs/score-<benchmark>)")
    sc.add_argument(
        "--device", default="cpu", help="torch device of the detector, segmenter and judge (default cpu)"
    )
    _add_scorer_args(sc)

    demo = sub.add_parser("demo", help="train the embedded model, evaluate it and write a report")
    demo.add_argument(
        "--config", default="shapes-full", help="preset or YAML file (default shapes-full: stage 1 + RL)"
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument(
        "--per-level", type=int, default=None, help="evaluate only N layouts per level (quick look)"
    )
    demo.add_argument("overrides", nargs="*", help="key=value overrides")

    from .convert import FORMATS

    conv = sub.add_parser("convert", help="convert layouts between idruid JSON and other tools' formats")
    conv.add_argument("--from", dest="from_format", required=True, choices=list(FORMATS), help="input format")
    conv.add_argument("--to", dest="to_format", required=True, choices=list(FORMATS), help="output format")
    conv.add_argument("input", help="input file (coco-mig: folder or YAML; layoutsam: JSON Lines or parquet)")
    conv.add_argument("output", help="output file (coco-mig: folder, or a .yaml path for the YAML alone)")
    for side in ("width", "height"):
        conv.add_argument(
            f"--{side}", type=int, help=f"image {side} for pixel formats (default: the input's, else 512)"
        )
    conv.add_argument(
        "--captions",
        choices=["detailed", "short"],
        default="detailed",
        help="LayoutSAM caption field: detail_region_captions (default) or region_captions",
    )
    conv.add_argument(
        "--clip-boxes", action="store_true", help="cut pixel boxes that leave the image instead of failing"
    )

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
    ui = sub.add_parser("ui", help="layout editor in the browser: draw boxes, caption them, generate")
    ui.add_argument("--checkpoint", help="idruid checkpoint folder (default: the embedded shapes model)")
    ui.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    ui.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    ui.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ui.add_argument(
        "--max-queue",
        type=int,
        default=MAX_QUEUE,
        help=f"jobs waiting or running at most (default {MAX_QUEUE})",
    )
    ui.add_argument(
        "--job-timeout",
        type=float,
        default=JOB_TIMEOUT,
        help=f"seconds of sampling per job, then it stops ({JOB_TIMEOUT:g})",
    )
    ui.add_argument(
        "--max-request-bytes",
        type=int,
        default=MAX_REQUEST_BYTES,
        help=f"larger bodies get 413 ({MAX_REQUEST_BYTES})",
    )

    probe = sub.add_parser(
        "rl-probe",
        help="train a checkpoint on L_rl alone and plot the held-out reward (does the RL estimator learn?)",
    )
    probe.add_argument("--checkpoint", help="idruid checkpoint folder (default: the embedded shapes model)")
    probe.add_argument("--config", default="shapes-rl", help="preset or YAML file whose rl.* settings run")
    probe.add_argument("--out", default="runs/rl-probe", help="folder for probe.jsonl and probe.png")
    probe.add_argument("--iterations", type=int, default=60)
    probe.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    probe.add_argument("--every", type=int, default=15, help="held-out reward every N iterations")
    probe.add_argument("--held-out", type=int, default=96, help="held-out prompt-only layouts (default 96)")
    probe.add_argument("--reward", choices=["detector", "brightness"], default="detector")
    probe.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rl.baseline=critic")

    rep = sub.add_parser("report", help="paper tables, plots and sample grids from several run folders")
    rep.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders (config.yaml + eval folders)")
    rep.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, plots/ and grids/")
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
        default="half-range",
        help="Table 3 spread over seeds (sem: standard error of the mean)",
    )
    for command in sub.choices.values():  # --debug also after the command (SUPPRESS: no override)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def _load_model(args):
    """Load the checkpoint; returns it and its sampling settings with the flags the user gave
    (``--steps`` and so on) in place of the saved ones."""
    from .checkpoint import checkpoint_sampling, load_checkpoint
    from .models.druid_weights import is_druid_folder

    if args.checkpoint is not None and is_druid_folder(args.checkpoint):
        model, saved = _load_druid(args)
    else:
        if args.mask_rows is not None:
            raise ConfigError("--mask-rows applies to the I-DRUID authors' checkpoint only")
        model = load_checkpoint(args.checkpoint, device=args.device, base_model=args.base)
        saved = checkpoint_sampling(args.checkpoint)
    settings = saved.override(
        steps=args.steps, cfg=args.cfg, layout_fraction=args.layout_fraction, shift=args.shift
    )
    return model, settings


def _load_druid(args):
    """The I-DRUID authors' checkpoint (--checkpoint) on an SD3 folder (--base), with their
    sampling settings (models/sd3_druid.py)."""
    from .models import build_model
    from .models.sd3_druid import druid_config, druid_sampling

    if args.base is None:
        raise ConfigError(
            f"--checkpoint {args.checkpoint} is the I-DRUID authors' model: --base SD3_DIR is required "
            "(its text encoders, VAE and scheduler)"
        )
    config = druid_config(args.checkpoint, args.base)
    if args.mask_rows is not None:
        config.model.druid_mask_rows = args.mask_rows
    model = build_model(config.model).to(args.device).eval()
    return model, druid_sampling(config, getattr(args, "benchmark", None))


def cmd_generate(args) -> int:
    from PIL import Image

    from .layout import load_layouts
    from .sampling import generate

    layouts = load_layouts(args.layout)
    out = Path(args.out)
    if len(layouts) == 1 and out.suffix.lower() != ".png":
        raise LayoutError(f"--out {out}: one layout gives one image, so --out must be a .png file")
    if len(layouts) > 1 and out.suffix.lower() == ".png":
        raise LayoutError(f"--out {out}: {len(layouts)} layouts need a folder, not a .png file")
    model, settings = _load_model(args)
    images = generate(model, layouts, settings, seed=args.seed, device=args.device)
    if len(layouts) == 1:
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[0]).save(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images):
            Image.fromarray(image).save(out / f"{k:05d}.png")
    print(f"wrote {len(images)} image(s) to {out}")
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    name = args.config or BACKBONE_PRESETS[args.backbone or "sd3"]
    config = load_config(name, args.overrides)
    if args.backbone is not None and config.model.backbone != args.backbone:
        raise ConfigError(
            f"--backbone {args.backbone}, but config '{name}' builds model.backbone={config.model.backbone} "
            f"(the {args.backbone} preset is {BACKBONE_PRESETS[args.backbone]})"
        )
    out = Path(args.out or f"runs/{Path(name).stem}")
    export = train(config, out)
    print(f"model written to {export}")
    return 0


def cmd_eval(args) -> int:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from .evaluate import evaluate, tables_markdown

    # On GPUs `accelerate launch` needs nothing more; CPU processes (torchrun) need ACCELERATE_USE_CPU=1.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes > 1:
        args.device = str(state.device)  # accelerate launch: one device per process
    run = _resolve_benchmark(args)  # fails on bad input before loading anything
    model, settings = _load_model(args)
    out = Path(args.out or f"runs/eval-{args.benchmark}")
    metrics = evaluate(
        model,
        run,
        out,
        settings,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        score_batch_size=args.score_batch_size,
        state=state,
    )
    if metrics is not None:  # the main process
        print(tables_markdown({args.benchmark: metrics}))
        print(f"metrics, table, grid and images in {out}")
    return 0


def _resolve_benchmark(args):
    """The benchmark of ``eval`` and ``score``, its layouts selected and its scorers checked once."""
    from .benchmarks import resolve

    return resolve(
        args.benchmark,
        args.per_level,
        args.bench_dir,
        args.limit,
        args.detector,
        args.segmenter,
        args.judge,
        args.mig_protocol,
    )


def cmd_score(args) -> int:
    from .evaluate import tables_markdown, write_outputs
    from .scoring import load_scorers, score_folder

    run = _resolve_benchmark(args)
    layouts, specs = run.layouts, run.scorers
    scorers = load_scorers(specs, args.device, run.mig_protocol)
    metrics, images = score_folder(
        run.benchmark, args.images, layouts, scorers, args.score_batch_size, progress=True
    )
    metrics["settings"] = {
        "benchmark": args.benchmark,
        "layouts": len(layouts),
        "images": str(args.images),
        "detector": specs.detector,
        "segmenter": specs.segmenter,
        "judge": specs.judge,
        "mig_protocol": args.mig_protocol,
    }
    out = Path(args.out or f"runs/score-{args.benchmark}")
    write_outputs(out, args.benchmark, metrics, images, layouts)
    print(tables_markdown({args.benchmark: metrics}))
    print(f"metrics, table and grid in {out}")
    return 0


def cmd_demo(args) -> int:
    from .benchmarks import resolve
    from .checkpoint import load_checkpoint
    from .config import load_config, save_config
    from .demo import training_summary, write_demo_report
    from .evaluate import evaluate
    from .train import train

    config = load_config(args.config, args.overrides)
    out = Path(args.out)
    started = time.time()
    export = train(config, out)
    save_config(config, out / "config.yaml")
    trained = time.time() - started
    model = load_checkpoint(export)
    results = {}
    for benchmark in ("shapes-sam", "shapes-mig"):
        results[benchmark] = evaluate(
            model,
            resolve(benchmark, per_level=args.per_level),
            out / f"eval-{benchmark}",
            config.sampling_settings(),
        )
    report = write_demo_report(
        out,
        results,
        train_seconds=trained,
        total_seconds=time.time() - started,
        per_level=args.per_level,
        trained=training_summary(config),
    )
    print(report.read_text())
    print(f"report: {report}")
    return 0


def cmd_convert(args) -> int:
    from .convert import ConvertOptions, convert

    for side in ("width", "height"):
        if getattr(args, side) is not None and getattr(args, side) <= 0:
            raise LayoutError(f"--{side}: must be a positive number of pixels, got {getattr(args, side)}")
    options = ConvertOptions(args.width, args.height, captions=args.captions, clip=args.clip_boxes)
    result = convert(args.input, args.output, args.from_format, args.to_format, options)
    note = ""
    if result.truncated:
        note = f"; {result.truncated} kept only their first {options.max_instances} instances"
    print(f"wrote {result.layouts} layout(s) as {args.to_format} to {args.output}{note}")
    return 0


def cmd_quality(args) -> int:
    import json

    from .quality import QualityError, image_quality, load_image_dir, load_prompts

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


def cmd_ui(args) -> int:
    from .ui import UIUnavailable

    for flag in ("max_queue", "job_timeout", "max_request_bytes"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: must be positive, got {getattr(args, flag)}")
    try:
        from .ui.server import serve
    except UIUnavailable as err:
        print(f"idruid: error: {err}", file=sys.stderr)
        return 2
    try:
        serve(
            args.checkpoint,
            host=args.host,
            port=args.port,
            device=args.device,
            max_queue=args.max_queue,
            job_timeout=args.job_timeout,
            max_request_bytes=args.max_request_bytes,
        )
    except OSError as err:
        print(f"idruid: error: --host {args.host} --port {args.port}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


def cmd_report(args) -> int:
    from .reports import ReportError, write_report

    try:
        if not args.runs and not args.name:
            raise ReportError("give at least one run folder (RUN_DIR or --name NAME=RUN_DIR)")
        labels = {}
        for item in args.name:
            name, sep, run = item.rpartition("=")
            if not sep or not name or not run:
                raise ReportError(f"--name {item!r}: expected NAME=RUN_DIR")
            labels[run] = name
        path = write_report(args.runs, args.out, labels, window=args.window, spread=args.spread)
    except ReportError as err:
        print(f"idruid: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def cmd_rl_probe(args) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .config import load_config
    from .rl.probe import run_probe

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = load_config(args.config, [f"seed={args.seed}", *args.overrides])
    config.rl.check()
    model = load_checkpoint(args.checkpoint)
    records = run_probe(
        config,
        model,
        args.out,
        args.iterations,
        args.lr,
        args.every,
        args.held_out,
        args.reward,
        checkpoint=args.checkpoint,
    )
    for entry in records:
        print(f"iteration {entry['iteration']}: held-out reward {entry['held_out_reward']:.3f}")
    print(f"wrote {Path(args.out) / 'probe.jsonl'} and probe.png")
    return 0


COMMANDS = {
    "generate": cmd_generate,
    "train": cmd_train,
    "eval": cmd_eval,
    "score": cmd_score,
    "demo": cmd_demo,
    "convert": cmd_convert,
    "quality": cmd_quality,
    "report": cmd_report,
    "rl-probe": cmd_rl_probe,
    "ui": cmd_ui,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("idruid: interrupted (training resumes from its newest checkpoint when rerun)", file=sys.stderr)
        return 130
    except Exception as err:
        if getattr(args, "debug", False):
            raise
        user = isinstance(err, USER_ERRORS) or (isinstance(err, OSError) and err.filename is not None)
        if isinstance(err, OSError) and err.filename is not None and err.strerror:
            message = f"{err.filename}: {err.strerror}"
        elif user:
            message = str(err)
        else:  # a bug, or a failure idruid does not know yet: still one line, the traceback on demand
            message = f"{type(err).__name__}: {err} (rerun with --debug for the traceback)"
        print(f"idruid: error: {' '.join(message.split())}", file=sys.stderr)
        return 2 if user else 1


if __name__ == "__main__":
    sys.exit(main())
