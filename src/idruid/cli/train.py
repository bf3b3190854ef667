"""``idruid train``, ``demo`` and ``rl-probe``: the commands that train a model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import ModelConfig, list_presets
from ..errors import ConfigError
from ..models.registry import backbone, names


def add_train(sub) -> None:
    """``idruid train``."""
    tr = sub.add_parser("train", help="stage-1 training (resumes when the run folder has checkpoints)")
    tr.add_argument(
        "--config",
        help=f"preset name ({', '.join(list_presets())}) or YAML file (default: the --backbone's preset)",
    )
    tr.add_argument(
        "--backbone",
        choices=names(),
        help="a registered backbone (model.backbone); without --config it trains the backbone's "
        "embedded preset (idruid.models.registry); with one, the config must use it",
    )
    tr.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 model.use_idm=false")


def add_demo(sub) -> None:
    """``idruid demo``."""
    demo = sub.add_parser("demo", help="train the embedded model, evaluate it and write a report")
    demo.add_argument(
        "--config", default="shapes-full", help="preset or YAML file (default shapes-full: stage 1 + RL)"
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument(
        "--per-level", type=int, default=None, help="evaluate only N layouts per level (quick look)"
    )
    demo.add_argument("overrides", nargs="*", help="key=value overrides")


def add_rl_probe(sub) -> None:
    """``idruid rl-probe``."""
    probe = sub.add_parser(
        "rl-probe",
        help="train a checkpoint on L_rl alone and plot the held-out reward (does the RL estimator learn?)",
    )
    probe.add_argument(
        "--checkpoint", help="a checkpoint folder of any format idruid opens (default: the embedded model)"
    )
    probe.add_argument("--base", help="its base folder (the authors' checkpoint's SD3 folder, a moved one)")
    probe.add_argument("--config", default="shapes-rl", help="preset or YAML file whose rl.* settings run")
    probe.add_argument("--out", default="runs/rl-probe", help="folder for probe.jsonl and probe.png")
    probe.add_argument("--iterations", type=int, default=60)
    probe.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    probe.add_argument("--every", type=int, default=15, help="held-out reward every N iterations")
    probe.add_argument("--held-out", type=int, default=96, help="held-out prompt-only layouts (default 96)")
    probe.add_argument("--reward", choices=["detector", "brightness"], default="detector")
    probe.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument(
        "--direction",
        action="store_true",
        help="instead of training: does the mean of --gradients RL gradients point uphill (direction.json)",
    )
    probe.add_argument("--gradients", type=int, default=8, help="--direction: RL gradients drawn (default 8)")
    probe.add_argument(
        "--sizes", default="0.3,1,3", help="--direction: move sizes in units of --lr, each taken both ways"
    )
    probe.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rl.baseline=critic")


def cmd_train(args) -> int:
    from ..config import load_config
    from ..train import train

    chosen = backbone(args.backbone or ModelConfig.backbone)
    if args.config is None and chosen.preset is None:
        raise ConfigError(f"--backbone {chosen.name} has no embedded preset: name one with --config")
    name = args.config or chosen.preset
    config = load_config(name, args.overrides)
    if args.backbone is not None and config.model.backbone != args.backbone:
        raise ConfigError(
            f"--backbone {args.backbone}, but config '{name}' builds model.backbone={config.model.backbone} "
            f"(the {args.backbone} preset is {chosen.preset})"
        )
    out = Path(args.out or f"runs/{Path(name).stem}")
    export = train(config, out)
    print(f"model written to {export}")
    return 0


def cmd_demo(args) -> int:
    from ..config import load_config, save_config
    from ..demo import training_summary, write_demo_report
    from ..eval_benchmarks import resolve
    from ..evaluate import evaluate
    from ..loader import open_model
    from ..train import train

    config = load_config(args.config, args.overrides)
    out = Path(args.out)
    started = time.time()
    export = train(config, out)
    save_config(config, out / "config.yaml")
    trained = time.time() - started
    model, _ = open_model(export)
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


def cmd_rl_probe(args) -> int:
    import torch

    from ..config import load_config
    from ..loader import open_model
    from ..rl.probe import run_probe

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from accelerate import PartialState

    config = load_config(args.config, [f"seed={args.seed}", *args.overrides])
    model, _ = open_model(args.checkpoint, args.base)  # any format the loader opens (idruid.loader)
    if args.direction:
        return _direction(args, config, model)
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
    if PartialState().is_main_process:  # run_probe's Accelerator made the state; every rank holds the records
        for entry in records:
            print(f"iteration {entry['iteration']}: held-out reward {entry['held_out_reward']:.3f}")
        print(f"wrote {Path(args.out) / 'probe.jsonl'} and probe.png")
    return 0


def _direction(args, config, model) -> int:
    """``rl-probe --direction`` (idruid.rl.direction)."""
    from ..rl.direction import run_direction_check

    try:
        sizes = [float(size) for size in args.sizes.split(",")]
    except ValueError as err:
        raise ConfigError(f"--sizes {args.sizes!r}: expected comma-separated numbers") from err
    config.rl.check()
    result = run_direction_check(
        config, model, args.out, args.gradients, args.lr, sizes, args.held_out, args.seed, args.checkpoint
    )
    print(json.dumps({k: v for k, v in result.items() if k != "gradient_norms"}, indent=1))
    print(f"wrote {Path(args.out) / 'direction.json'}")
    return 0


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "rl-probe": cmd_rl_probe}
