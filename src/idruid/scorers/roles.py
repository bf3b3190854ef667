"""The scorer roles (detector, segmenter, judge): each one's command-line flag, its analytic
stand-ins by name, and the local model folder that replaces them on real images, with the check
of such a folder (``check_model_dir``).

A leaf of the scorers: the model wrappers (grounding_dino, sam, vlm_judge) check their folder
here, and the registry (idruid.scorers.registry), which loads those wrappers by name, reads the
same table, so no scorer module imports the registry that imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..model_dirs import TRANSFORMERS_MODEL, RequiredFiles, missing_files
from ..textfile import read_json_object
from .analytic import AnalyticDetector, AnalyticJudge, AnalyticSegmenter


@dataclass(frozen=True)
class Role:
    """One kind of scorer and how a command line names it."""

    flag: str  # the command-line option that names it
    analytic: dict[str, Callable[[], object]]  # registry name -> the shapes world's stand-in
    model: str  # what a model folder for this role holds, for messages
    files: RequiredFiles  # what that folder needs
    model_types: tuple[str, ...] | None  # config.json model types accepted (None: any)


SCORERS: dict[str, Role] = {
    "detector": Role(
        "--detector",
        {"analytic": AnalyticDetector},
        "GroundingDINO",
        (
            *TRANSFORMERS_MODEL,
            ("image processor config", ("processor_config.json", "preprocessor_config.json")),
            ("tokenizer", ("tokenizer.json", "vocab.txt")),
        ),
        None,
    ),
    "segmenter": Role(
        "--segmenter",
        {"analytic": AnalyticSegmenter},
        "SAM",
        (
            *TRANSFORMERS_MODEL,
            ("image processor config", ("preprocessor_config.json", "processor_config.json")),
        ),
        ("sam", "sam_hq"),  # transformers' SamModel and SamHQModel, the same prompting
    ),
    "judge": Role(
        "--judge",
        {"analytic": AnalyticJudge},
        "VLM",
        (("config.json", ("config.json",)),),
        None,
    ),
}


def find_role(role: str) -> Role:
    """The role called ``role``; ValueError naming the known ones."""
    if role not in SCORERS:
        raise ValueError(f"unknown scorer role {role!r} (known: {', '.join(SCORERS)})")
    return SCORERS[role]


def check_model_dir(role: str, path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a folder of the role's model; FileNotFoundError naming the flag,
    the path and what is wrong (not a folder, files missing, config.json of another model)."""
    kind = find_role(role)
    directory = Path(path)
    where = f"{kind.flag} {directory}"
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{where}: unknown {role} and no such directory; use one of {sorted(kind.analytic)} "
            f"or a local {kind.model} directory"
        )
    missing = missing_files(directory, kind.files)
    if missing:
        raise FileNotFoundError(f"{where}: not a {kind.model} directory, it lacks {'; '.join(missing)}")
    if kind.model_types is not None:
        config = read_json_object(directory / "config.json", FileNotFoundError, f"{where}: config.json")
        model_type = config.get("model_type")
        if model_type not in kind.model_types:
            accepted = " or ".join(repr(t) for t in kind.model_types)
            raise FileNotFoundError(f"{where}: config.json is for model type {model_type!r}, not {accepted}")
    return directory
