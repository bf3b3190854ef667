"""``idruid generate``, ``eval`` and ``score``: images from a checkpoint, and benchmark scores.

``generate`` and ``eval`` share the sampling flags and the checkpoint loading (an idruid checkpoint,
or the I-DRUID authors' one on an SD3 folder); ``eval`` and ``score`` share the benchmark and
scorer flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LayoutError
from ..eval_benchmarks import BENCHMARKS
from ..scorers.vlm_judge import ANSWER_RULES, DEFAULT_RULE


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
    parser.add_argument(
        "--guidance",
        type=float,
        help="distilled guidance scale of a guidance-distilled backbone, given to it as an input in one "
        "row (FLUX.1-dev: 3.5, with --cfg 1; default: the checkpoint's, else the backbone's)",
    )
    parser.add_argument(
        "--skip-layers",
        type=_block_list,
        help="skip-layer guidance (SD3 / SD3.5): the transformer blocks left out of its extra "
        "conditional pass, as 7,8,9 (SD3.5-medium's card); default off",
    )
    parser.add_argument(
        "--skip-layer-scale", type=float, help="skip-layer guidance scale (default 2.8, diffusers')"
    )
    parser.add_argument(
        "--skip-layer-start",
        type=float,
        help="skip-layer guidance runs on the steps i with steps x start < i < steps x stop "
        "(default 0.01)",
    )
    parser.add_argument("--skip-layer-stop", type=float, help="see --skip-layer-start (default 0.2)")
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
        "--judge-rule",
        choices=ANSWER_RULES,
        default=DEFAULT_RULE,
        help="how a VLM judge's answer is read: generate (CreatiLayout's script: a written answer "
        "holding 'Yes' or 'yes'; greedy; the default) or logits (logit of 'Yes' above 'No')",
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


def add_generate(sub) -> None:
    """``idruid generate``."""
    gen = sub.add_parser(
        "generate", help="generate images from a layout file (JSON object, list or JSON Lines)"
    )
    gen.add_argument("layout", help="layout file")
    gen.add_argument(
        "--out", required=True, help="PNG file for one layout, a folder for several ({k:05d}.png)"
    )
    _add_sampling_args(gen)


def add_eval(sub) -> None:
    """``idruid eval``."""
    ev = sub.add_parser(
        "eval", help="generate a benchmark and score it (split across processes under accelerate launch)"
    )
    ev.add_argument("--benchmark", required=True, choices=tuple(BENCHMARKS))
    ev.add_argument("--out", default=None, help="output folder (default runs/eval-<benchmark>)")
    ev.add_argument("--batch-size", type=int, default=100)
    _add_scorer_args(ev)
    _add_sampling_args(ev)


def add_score(sub) -> None:
    """``idruid score``."""
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


def _load_model(args):
    """Open the checkpoint (idruid.loader.open_model: any format); returns it and its sampling
    settings with the flags the user gave (``--steps`` and so on) in place of the saved ones."""
    from ..loader import open_model

    benchmark = getattr(args, "benchmark", None)
    model, saved = open_model(args.checkpoint, args.base, args.device, benchmark, mask_rows=args.mask_rows)
    settings = saved.override(
        steps=args.steps,
        cfg=args.cfg,
        layout_fraction=args.layout_fraction,
        shift=args.shift,
        guidance=args.guidance,
        skip_layers=args.skip_layers,
        skip_layer_scale=args.skip_layer_scale,
        skip_layer_start=args.skip_layer_start,
        skip_layer_stop=args.skip_layer_stop,
    )
    return model, settings


def _block_list(text: str) -> tuple[int, ...]:
    """'7,8,9' -> (7, 8, 9)."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected block indices such as 7,8,9") from None


def cmd_generate(args) -> int:
    from PIL import Image

    from ..layout import load_layouts
    from ..sampling import generate

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


def cmd_eval(args) -> int:
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from ..evaluate import evaluate, tables_markdown

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
    from ..eval_benchmarks import resolve

    return resolve(
        args.benchmark,
        args.per_level,
        args.bench_dir,
        args.limit,
        args.detector,
        args.segmenter,
        args.judge,
        args.mig_protocol,
        args.judge_rule,
    )


def cmd_score(args) -> int:
    from ..evaluate import tables_markdown, write_outputs
    from ..scoring import load_scorers, score_folder

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
        "judge_rule": specs.judge_rule,
        "mig_protocol": args.mig_protocol,
    }
    out = Path(args.out or f"runs/score-{args.benchmark}")
    write_outputs(out, args.benchmark, metrics, images, layouts)
    print(tables_markdown({args.benchmark: metrics}))
    print(f"metrics, table and grid in {out}")
    return 0


COMMANDS = {"generate": cmd_generate, "eval": cmd_eval, "score": cmd_score}
