"""The one scorer registry: each role (detector, segmenter, judge) with its command-line flag,
its analytic stand-ins by name, and the local model folder that replaces them on real images
(the table and the folder check are in idruid.scorers.roles; the registry adds the loaders).

A scorer is named on the command line by a registry name ("analytic") or a model directory;
``check_scorer`` checks the directory's files (idruid.model_dirs.missing_files) without loading
anything, so a wrong path fails before transformers reads it as a hub id (and, offline, fails);
``load_scorer`` builds the scorer. The model classes are imported only when a folder is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .roles import SCORERS as SCORERS
from .roles import Role as Role
from .roles import check_model_dir, find_role


def _load_grounding_dino(path: Path, device: str):
    from .grounding_dino import GroundingDinoDetector

    return GroundingDinoDetector.from_pretrained(path, device)


def _load_sam(path: Path, device: str):
    from .sam import SamSegmenter

    return SamSegmenter.from_pretrained(path, device)


def _load_vlm(path: Path, device: str, **options):
    from .vlm_judge import VlmJudge

    return VlmJudge.from_pretrained(path, device, **options)


# role -> (checked folder, device, **options) -> the scorer: the model wrappers, imported by name
LOADERS: dict[str, Callable[..., object]] = {
    "detector": _load_grounding_dino,
    "segmenter": _load_sam,
    "judge": _load_vlm,
}


def check_scorer(role: str, spec: str) -> str:
    """``spec`` if it is one of the role's registry names or a folder of its model (see
    check_model_dir); nothing is loaded."""
    if spec not in find_role(role).analytic:
        check_model_dir(role, spec)
    return spec


def load_scorer(role: str, spec: str, device: str = "cpu", **options):
    """The role's scorer by registry name ("analytic") or model directory, so one command-line
    option covers the shapes world and real images; models are loaded on ``device``, with the
    model's ``options`` (the judge's ``rule``; the analytic scorers take none)."""
    kind = find_role(role)
    if spec in kind.analytic:
        return kind.analytic[spec]()
    return LOADERS[role](check_model_dir(role, spec), device, **options)
