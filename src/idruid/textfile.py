"""Reading a text file that idruid parses (layouts, configs, idruid.json, benchmark files): a
file that is not UTF-8 (a binary file, a Latin-1 export) fails with the caller's own error type
naming the file and the byte, instead of a UnicodeDecodeError traceback."""

from __future__ import annotations

from pathlib import Path


def read_text(path: str | Path, error: type[Exception]) -> str:
    """The UTF-8 contents of ``path``; ``error(message)`` when they are not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}; a binary file?)") from None
