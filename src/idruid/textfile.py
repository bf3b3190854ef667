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


def read_json_object(path: str | Path, error: type[Exception], label: str | None = None) -> dict:
    """The JSON object in ``path`` (UTF-8); ``error`` with one line ``<label>: malformed JSON
    (...)`` or ``<label>: not a JSON object`` otherwise. ``label`` names the file in the caller's
    terms (default: its path), e.g. ``checkpoint 'runs/x': idruid.json``."""
    import json

    label = label or str(path)
    try:
        value = json.loads(read_text(path, error))
    except json.JSONDecodeError as err:
        raise error(f"{label}: malformed JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(value, dict):
        raise error(f"{label}: not a JSON object")
    return value
