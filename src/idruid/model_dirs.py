"""Checks of local model folders (GroundingDINO, SAM, VLMs, ...) before transformers reads them.

Offline, transformers reads a path that is not a folder as a hub id and fails with a network
error; checking the files first gives an error that names what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# (what the file is, the names it may have): one entry per required file
RequiredFiles = Sequence[tuple[str, Sequence[str]]]


def missing_files(directory: Path, required: RequiredFiles) -> list[str]:
    """Descriptions of the required files that ``directory`` lacks (empty when none)."""
    return [
        f"{what} (one of {', '.join(names)})" if len(names) > 1 else what
        for what, names in required
        if not any((directory / name).is_file() for name in names)
    ]
