"""What the page submits: a layout plus sampling settings, checked on the server.

The layout goes through ``idruid.layout.layout_from_dict`` (the one validator of idruid JSON);
its LayoutError names the field (``instances[2].box: ...``), which ``field_errors`` turns back
into the box the page should mark. The page runs the same checks itself before submitting;
these are the ones that count.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

from ..errors import LayoutError
from ..layout import MAX_INSTANCES, Layout, layout_from_dict

MAX_STEPS = 200  # a page request runs on a shared model: keep one job bounded
MAX_CFG = 30.0

_INSTANCE_PATH = re.compile(r"^instances\[(\d+)\](?:\.(\w+))?")


@dataclass(frozen=True)
class FieldError:
    """One problem for the page to show: beside box ``box`` (0-based) or beside ``field``."""

    field: str  # "caption", "box", "instances", "prompt", "seed", "steps", "cfg", ...
    message: str  # the problem alone, e.g. "missing or empty"
    box: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class PayloadError(ValueError):
    """A submission the server refuses; ``errors`` says where, for the page."""

    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class GenerateRequest:
    layout: Layout  # its seed is always set: the page's seed field
    steps: int
    cfg: float


def field_errors(err: LayoutError, layout_obj) -> list[FieldError]:
    """Map a LayoutError back to the page: ``instances[k].<field>`` marks box k; too many
    instances marks every box past the limit; anything else marks a page-level field."""
    path, sep, problem = str(err).partition(": ")
    if not sep:
        return [FieldError("layout", str(err))]
    match = _INSTANCE_PATH.match(path)
    if match:
        return [FieldError(match.group(2) or "instance", problem, int(match.group(1)))]
    if path == "instances" and isinstance(layout_obj, dict) and isinstance(layout_obj.get("instances"), list):
        surplus = range(MAX_INSTANCES, len(layout_obj["instances"]))
        if surplus:
            return [FieldError("instances", problem, k) for k in surplus]
    return [FieldError(path, problem)]


def _int_setting(payload: dict, name: str, low: int, high: int) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PayloadError([FieldError(name, f"must be a whole number from {low} to {high}, got {value!r}")])
    return value


def _float_setting(payload: dict, name: str, low: float, high: float) -> float:
    value = payload.get(name)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        raise PayloadError([FieldError(name, f"must be a number from {low:g} to {high:g}, got {value!r}")])
    return float(value)


def parse_generate_request(payload, default_seed: int = 0) -> GenerateRequest:
    """``{"layout": <idruid JSON>, "steps": int, "cfg": float}`` -> GenerateRequest, or PayloadError."""
    if not isinstance(payload, dict):
        raise PayloadError([FieldError("request", "must be a JSON object with layout, steps and cfg")])
    layout_obj = payload.get("layout")
    try:
        layout = layout_from_dict(layout_obj)
    except LayoutError as err:
        raise PayloadError(field_errors(err, layout_obj)) from None
    steps = _int_setting(payload, "steps", 1, MAX_STEPS)
    cfg = _float_setting(payload, "cfg", 0.0, MAX_CFG)
    if layout.seed is None:
        layout = replace(layout, seed=default_seed)
    return GenerateRequest(layout, steps, cfg)
