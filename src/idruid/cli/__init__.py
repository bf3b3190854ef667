"""The ``idruid`` command: the parser, the command table and the one error rule.

One module per group of commands: generate.py (generate, eval, score), train.py (train, demo,
rl-probe), report.py (report, quality), convert.py and ui.py; each adds its subcommands' flags
and lists its commands in ``COMMANDS``.

Bad input (a malformed layout, a missing or corrupt checkpoint, an unknown config key, a file
that cannot be read) exits with status 2 and one line ``idruid: error: <field>: <problem>``; any
other failure with status 1 and one line; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import CheckpointError, ConfigError, LayoutError, ModelFolderError, ScoringError
from . import convert, generate, report, train, ui

USER_ERRORS = (LayoutError, CheckpointError, ConfigError, FileNotFoundError, ScoringError, ModelFolderError)
DEBUG_HELP = "print the traceback of an error instead of its one-line message"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idruid", description="Layout-to-image generation with I-DRUID.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    generate.add_generate(sub)
    train.add_train(sub)
    generate.add_eval(sub)
    generate.add_score(sub)
    train.add_demo(sub)
    convert.add_convert(sub)
    report.add_quality(sub)
    ui.add_ui(sub)
    train.add_rl_probe(sub)
    report.add_report(sub)
    for command in sub.choices.values():  # --debug also after the command (SUPPRESS: no override)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


COMMANDS = {**generate.COMMANDS, **train.COMMANDS, **convert.COMMANDS, **report.COMMANDS, **ui.COMMANDS}


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
