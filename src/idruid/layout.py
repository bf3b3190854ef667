"""Layouts: a global prompt, 1-10 instance captions and one box per instance (paper 3.1).

Boxes are normalised ``[x0, y0, x1, y1]`` with the top-left and bottom-right corners,
as in the paper. This module owns the JSON format, its validation (errors name the
field, e.g. ``instances[2].box: x1 must be greater than x0``) and the tensors that
the model and the losses read: padded boxes and validity masks. How a box becomes pixels or
tokens is idruid.boxes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LayoutError
from .textfile import read_text

MAX_INSTANCES = 10  # the paper's maximum (section 4.1)

_LAYOUT_KEYS = {"prompt", "instances", "seed"}
_INSTANCE_KEYS = {"caption", "box"}


@dataclass(frozen=True)
class Instance:
    caption: str
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1


@dataclass(frozen=True)
class Layout:
    prompt: str
    instances: tuple[Instance, ...]
    seed: int | None = None
    # Free-form metadata that never reaches the JSON (e.g. the benchmark level).
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def captions(self) -> list[str]:
        return [inst.caption for inst in self.instances]

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [inst.box for inst in self.instances]

    @property
    def level(self) -> int:
        """COCO-MIG level: the number of instances."""
        return len(self.instances)

    def to_dict(self) -> dict:
        out: dict = {
            "prompt": self.prompt,
            "instances": [{"caption": i.caption, "box": [float(v) for v in i.box]} for i in self.instances],
        }
        if self.seed is not None:
            out["seed"] = self.seed
        return out


def _fail(where: str, problem: str) -> LayoutError:
    return LayoutError(f"{where}: {problem}" if where else problem)


def _check_number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"must be a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise _fail(where, "must be finite")
    return float(value)


def validate_box(box, where: str = "box") -> tuple[float, float, float, float]:
    """Return the box as a float tuple, or raise a LayoutError naming the problem."""
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise _fail(where, "must be a list of 4 numbers [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (_check_number(v, f"{where}[{k}]") for k, v in enumerate(box))
    for name, v in zip(("x0", "y0", "x1", "y1"), (x0, y0, x1, y1), strict=True):
        if not 0.0 <= v <= 1.0:
            raise _fail(where, f"{name}={v:g} is outside [0, 1] (boxes are normalised)")
    if x1 <= x0:
        raise _fail(where, "x1 must be greater than x0 (zero or negative width)")
    if y1 <= y0:
        raise _fail(where, "y1 must be greater than y0 (zero or negative height)")
    return (x0, y0, x1, y1)


def layout_from_dict(obj, where: str = "") -> Layout:
    """Validate one JSON object and build a Layout."""
    prefix = f"{where}." if where else ""
    if not isinstance(obj, dict):
        raise _fail(where or "layout", f"must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _LAYOUT_KEYS)
    if unknown:
        raise _fail(f"{prefix}{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(_LAYOUT_KEYS))})")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _fail(f"{prefix}prompt", "missing or empty")
    instances = obj.get("instances")
    if not isinstance(instances, list):
        raise _fail(f"{prefix}instances", "missing, or not a list")
    if not instances:
        raise _fail(f"{prefix}instances", "must hold at least 1 instance")
    if len(instances) > MAX_INSTANCES:
        raise _fail(
            f"{prefix}instances", f"has {len(instances)} instances, at most {MAX_INSTANCES} are allowed"
        )
    parsed = []
    for k, inst in enumerate(instances):
        here = f"{prefix}instances[{k}]"
        if not isinstance(inst, dict):
            raise _fail(here, "must be a JSON object with 'caption' and 'box'")
        unknown = sorted(set(inst) - _INSTANCE_KEYS)
        if unknown:
            raise _fail(f"{here}.{unknown[0]}", "unknown key (allowed: box, caption)")
        caption = inst.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise _fail(f"{here}.caption", "missing or empty")
        if "box" not in inst:
            raise _fail(f"{here}.box", "missing")
        parsed.append(Instance(caption.strip(), validate_box(inst["box"], f"{here}.box")))
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _fail(f"{prefix}seed", "must be a non-negative integer")
    return Layout(prompt.strip(), tuple(parsed), seed)


def parse_layouts(text: str, source: str = "<input>") -> list[Layout]:
    """Parse one object, a JSON list, or JSON Lines."""
    stripped = text.strip()
    if not stripped:
        raise LayoutError(f"{source}: empty file")
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as whole_error:
        lines = [line for line in stripped.splitlines() if line.strip()]
        if len(lines) < 2:
            raise LayoutError(
                f"{source}: malformed JSON ({whole_error.msg} at line {whole_error.lineno})"
            ) from None
        data = []
        for number, line in enumerate(stripped.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise LayoutError(f"{source}: line {number}: malformed JSON ({err.msg})") from None
        return [layout_from_dict(obj, f"line {n + 1}") for n, obj in enumerate(data)]
    if isinstance(data, list):
        if not data:
            raise LayoutError(f"{source}: the list holds no layout")
        return [layout_from_dict(obj, f"[{n}]") for n, obj in enumerate(data)]
    return [layout_from_dict(data)]


def load_layouts(path: str | Path) -> list[Layout]:
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: layout file not found")
    return parse_layouts(read_text(path, LayoutError), str(path))


def save_layouts(layouts: Iterable[Layout], path: str | Path) -> None:
    """Write JSON Lines, one layout per line."""
    with open(path, "w", encoding="utf-8") as f:
        for layout in layouts:
            f.write(json.dumps(layout.to_dict()) + "\n")


# ----------------------------------------------------------------------------- tensors


def boxes_tensor(
    layouts: Sequence[Layout], max_instances: int = MAX_INSTANCES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded boxes (B, N, 4) and validity (B, N) bool; the first ``max_instances`` are kept."""
    boxes = torch.zeros(len(layouts), max_instances, 4)
    valid = torch.zeros(len(layouts), max_instances, dtype=torch.bool)
    for b, layout in enumerate(layouts):
        kept = layout.boxes[:max_instances]
        if kept:
            boxes[b, : len(kept)] = torch.tensor(kept, dtype=torch.float32)
            valid[b, : len(kept)] = True
    return boxes, valid
