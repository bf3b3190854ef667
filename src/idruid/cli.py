"""The ``idruid`` command: generate, train, eval and demo.

Bad input (a malformed layout, a missing checkpoint, an unknown config key) exits with
status 2 and one line ``idruid: error: <field>: <problem>``, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError
from .config import ConfigError, list_presets
from .layout import LayoutError

USER_ERRORS = (LayoutError, CheckpointError, ConfigError, FileNotFoundError)


SAMPLING_DEFAULTS = {"steps": 20, "cfg": 3.0, "layout_fraction": 0.3, "shift": 1.0}


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """Sampling flags; those left out come from the checkpoint's ``sampling`` settings."""
    parser.add_argument("--checkpoint", help="idruid checkpoint folder (default: the embedded shapes model)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idruid", description="Layout-to-image generation with I-DRUID.")
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
    tr.add_argument("--config", required=True, help=f"preset name ({', '.join(list_presets())}) or YAML file")
    tr.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 model.use_idm=false")

    ev = sub.add_parser("eval", help="generate a benchmark and score it")
    ev.add_argument("--benchmark", required=True, choices=["shapes-mig", "shapes-sam"])
    ev.add_argument("--out", default=None, help="output folder (default runs/eval-<benchmark>)")
    ev.add_argument("--per-level", type=int, default=None, help="only the first N layouts of each level")
    ev.add_argument("--batch-size", type=int, default=100)
    _add_sampling_args(ev)

    demo = sub.add_parser("demo", help="train the embedded model, evaluate it and write a report")
    demo.add_argument("--config", default="shapes", help="preset or YAML file (default shapes)")
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument(
        "--per-level", type=int, default=None, help="evaluate only N layouts per level (quick look)"
    )
    demo.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser


def _load_model(args):
    """Load the checkpoint and fill the sampling flags the user left out from its settings."""
    from .checkpoint import EMBEDDED_CHECKPOINT, load_checkpoint, read_checkpoint_meta

    model = load_checkpoint(args.checkpoint, device=args.device)
    saved = read_checkpoint_meta(args.checkpoint or EMBEDDED_CHECKPOINT).get("sampling", {})
    for name, default in SAMPLING_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, saved.get(name, default))
    return model


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
    model = _load_model(args)
    images = generate(
        model,
        layouts,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        layout_fraction=args.layout_fraction,
        shift=args.shift,
        device=args.device,
    )
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

    config = load_config(args.config, args.overrides)
    out = Path(args.out or f"runs/{Path(args.config).stem}")
    export = train(config, out)
    print(f"model written to {export}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate, tables_markdown

    model = _load_model(args)
    out = Path(args.out or f"runs/eval-{args.benchmark}")
    metrics = evaluate(
        model,
        args.benchmark,
        out,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        layout_fraction=args.layout_fraction,
        shift=args.shift,
        per_level=args.per_level,
        batch_size=args.batch_size,
    )
    print(tables_markdown({args.benchmark: metrics}))
    print(f"metrics, table, grid and images in {out}")
    return 0


def cmd_demo(args) -> int:
    from .checkpoint import load_checkpoint
    from .config import load_config, save_config
    from .demo import write_demo_report
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
            benchmark,
            out / f"eval-{benchmark}",
            steps=config.eval_steps,
            cfg=config.eval_cfg,
            layout_fraction=config.layout_fraction,
            shift=config.shift,
            per_level=args.per_level,
        )
    report = write_demo_report(
        out, results, train_seconds=trained, total_seconds=time.time() - started, per_level=args.per_level
    )
    print(report.read_text())
    print(f"report: {report}")
    return 0


COMMANDS = {"generate": cmd_generate, "train": cmd_train, "eval": cmd_eval, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        message = (
            str(err)
            if not isinstance(err, FileNotFoundError) or not err.filename
            else f"{err.filename}: {err.strerror}"
        )
        print(f"idruid: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("idruid: interrupted (training resumes from its newest checkpoint when rerun)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
