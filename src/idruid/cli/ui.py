"""``idruid ui``: the browser layout editor (idruid.ui), its limits checked before it starts."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from ..ui.limits import JOB_TIMEOUT, MAX_QUEUE, MAX_REQUEST_BYTES


def add_ui(sub) -> None:
    """``idruid ui``."""
    ui = sub.add_parser("ui", help="layout editor in the browser: draw boxes, caption them, generate")
    ui.add_argument(
        "--checkpoint",
        help="idruid checkpoint folder or the I-DRUID authors' one (default: the embedded shapes model)",
    )
    ui.add_argument(
        "--base", default=None, help="base folder: where a checkpoint's moved, or the authors' SD3 folder"
    )
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


def cmd_ui(args) -> int:
    from ..ui import UIUnavailable

    for flag in ("max_queue", "job_timeout", "max_request_bytes"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: must be positive, got {getattr(args, flag)}")
    try:
        from ..ui.server import serve
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
            base=args.base,
        )
    except OSError as err:
        print(f"idruid: error: --host {args.host} --port {args.port}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


COMMANDS = {"ui": cmd_ui}
