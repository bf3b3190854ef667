"""Folders written whole or not at all: write into ``<name>.partial``, flush it to disk, then
rename it into place, so that a process killed at any moment leaves either the old folder or
the new one, never half of one (a rename within one filesystem is atomic)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(target: Path) -> Path:
    """Where ``target`` is written before it is renamed into place."""
    return target.with_name(target.name + PARTIAL_SUFFIX)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folder entries themselves to disk, so that the
    rename that follows cannot land before the data it names (a power cut, not only a kill)."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename stays atomic
        pass
    finally:
        os.close(fd)


def replace_dir(partial: Path, target: Path) -> None:
    """Rename the finished ``partial`` folder to ``target``; an existing ``target`` is moved
    aside first and deleted only after the new one is in place."""
    fsync_tree(partial)
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)
