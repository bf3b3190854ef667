"""The one scorer registry: each role (detector, segmenter, judge) with its command-line flag,
its analytic stand-ins by name, and the local model folder that replaces them on real images.

A scorer is named on the command line by a registry name ("analytic") or a model directory;
``check_scorer`` checks the directory's files (idruid.model_dirs.missing_files) without loading
anything, so a wrong path fails before transformers reads it as a hub id (and, offline, fails);
``load_scorer`` builds the scorer. The model classes are imported only when a folder is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..model_dirs import TRANSFORMERS_MODEL, RequiredFiles, missing_files
from ..textfile import read_json_object
from .analytic import AnalyticDetector, AnalyticJudge, AnalyticSegmenter


def _load_grounding_dino(path: Path, device: str):
    from .grounding_dino import GroundingDinoDetector

    return GroundingDinoDetector.from_pretrained(path, device)


def _load_sam(path: Path, device: str):
    from .sam import SamSegmenter

    return SamSegmenter.from_pretrained(path, device)


def _load_vlm(path: Path, device: str, **options):
    from .vlm_judge import VlmJudge

    return VlmJudge.from_pretrained(path, device, **options)


@dataclass(frozen=True)
class Role:
    """One kind of scorer and how a command line names it."""

    flag: str  # the command-line option that names it
    analytic: dict[str, Callable[[], object]]  # registry name -> the shapes world's stand-in
    model: str  # what a model folder for this role holds, for messages
    files: RequiredFiles  # what that folder needs
    model_types: tuple[str, ...] | None  # config.json model types accepted (None: any)
    load: Callable[..., object]  # (checked folder, device, **options) -> the scorer


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
        _load_grounding_dino,
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
        _load_sam,
    ),
    "judge": Role(
        "--judge",
        {"analytic": AnalyticJudge},
        "VLM",
        (("config.json", ("config.json",)),),
        None,
        _load_vlm,
    ),
}


def _role(role: str) -> Role:
    if role not in SCORERS:
        raise ValueError(f"unknown scorer role {role!r} (known: {', '.join(SCORERS)})")
    return SCORERS[role]


def check_model_dir(role: str, path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a folder of the role's model; FileNotFoundError naming the flag,
    the path and what is wrong (not a folder, files missing, config.json of another model)."""
    kind = _role(role)
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


def check_scorer(role: str, spec: str) -> str:
    """``spec`` if it is one of the role's registry names or a folder of its model (see
    check_model_dir); nothing is loaded."""
    if spec not in _role(role).analytic:
        check_model_dir(role, spec)
    return spec


def load_scorer(role: str, spec: str, device: str = "cpu", **options):
    """The role's scorer by registry name ("analytic") or model directory, so one command-line
    option covers the shapes world and real images; models are loaded on ``device``, with the
    model's ``options`` (the judge's ``rule``; the analytic scorers take none)."""
    kind = _role(role)
    if spec in kind.analytic:
        return kind.analytic[spec]()
    return kind.load(check_model_dir(role, spec), device, **options)
