"""Convert layouts between idruid's JSON and the formats other layout-to-image tools read.

Every conversion goes through idruid Layouts: one reader and one writer per format, in
FORMATS. The JSON formats are read from one object, a JSON list or JSON Lines, and written
as JSON Lines (one layout gives a one-line file, which is also a plain JSON object).

- ``idruid``: idruid layout JSON (idruid.layout).
- ``gligen``: ``{"prompt", "phrases": [...], "locations": [[x0, y0, x1, y1], ...]}``, normalised
  (GLIGEN's inference ``meta``; diffusers' ``gligen_phrases`` / ``gligen_boxes``).
- ``migc``: ``{"prompt_list": [global, phrase1, ...], "bboxes": [[x0, y0, x1, y1], ...]}``,
  normalised: one entry of the ``prompt`` / ``bboxes`` batches MIGC's pipeline takes.
- ``instancediffusion``: InstanceDiffusion's input JSON ``{"caption", "width", "height",
  "annos": [{"bbox": [x, y, w, h], "caption"}, ...]}`` with boxes in pixels (masks,
  points and scribbles are not read: idruid layouts have boxes only).
- ``layoutsam``: LayoutSAM rows (idruid.data.layoutsam) as JSON Lines, or ``.parquet`` shards
  when reading; pixel ``bbox_list`` string, captions in ``detail_region_captions`` or
  ``region_captions``.
- ``coco-mig``: a folder with ``mig_bench.txt`` + ``mig_bench_anno.yaml``, or that YAML alone
  (idruid.data.coco_mig); equal captions of a layout become one phrase with several boxes.

Pixel formats take the image size from the file when reading (kept in ``meta``); writing
uses ``width`` / ``height`` from the options when given, else the layout's own size, else
512. Readers of the other tools' formats keep the first MAX_INSTANCES instances (paper 4.1)
and count the layouts they cut; idruid JSON and COCO-MIG refuse more than MAX_INSTANCES.
An optional ``seed`` travels as an extra key in the JSON formats (not in COCO-MIG).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from idruid.data import coco_mig, layoutsam
from idruid.errors import LayoutError
from idruid.layout import (
    MAX_INSTANCES,
    Instance,
    Layout,
    load_layouts,
    save_layouts,
    validate_box,
)
from idruid.textfile import read_text

DEFAULT_SIZE = 512


@dataclass(frozen=True)
class ConvertOptions:
    width: int | None = None  # image width for writing pixel formats (None: the layout's own, else 512)
    height: int | None = None  # image height, likewise
    captions: str = "detailed"  # LayoutSAM caption field: "detailed" or "short"
    clip: bool = False  # cut pixel boxes that leave the image instead of failing
    max_instances: int = MAX_INSTANCES  # readers keep the first this many instances


# ----------------------------------------------------------------------------- JSON records


def read_records(path: str | Path) -> list[tuple[str, object]]:
    """``(where, object)`` for each record of one object, a JSON list or JSON Lines."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: file not found")
    text = read_text(path, LayoutError).strip()
    if not text:
        raise LayoutError(f"{path}: empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as whole_error:
        lines = text.splitlines()
        if sum(1 for line in lines if line.strip()) < 2:
            raise LayoutError(
                f"{path}: malformed JSON ({whole_error.msg} at line {whole_error.lineno})"
            ) from None
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}: line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise LayoutError(f"{path}: line {number}: malformed JSON ({err.msg})") from None
        return records
    if isinstance(data, list):
        if not data:
            raise LayoutError(f"{path}: the list holds no record")
        return [(f"{path}: [{k}]", obj) for k, obj in enumerate(data)]
    return [(str(path), data)]


def write_records(records: Sequence[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _object(obj, where: str, keys: str) -> dict:
    if not isinstance(obj, dict):
        raise LayoutError(f"{where}: must be a JSON object with {keys}, got {type(obj).__name__}")
    return obj


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LayoutError(f"{where}: must be a non-empty string, got {value!r}")
    return value.strip()


def _list(obj: dict, key: str, where: str) -> list:
    value = obj.get(key)
    if not isinstance(value, list) or not value:
        raise LayoutError(f"{where}: {key}: missing, or not a non-empty list")
    return value


def _seed(obj: dict, where: str) -> int | None:
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise LayoutError(f"{where}: seed: must be a non-negative integer, got {seed!r}")
    return seed


def _layout(
    prompt: str,
    captions: Sequence[str],
    boxes: Sequence[tuple[float, float, float, float]],
    seed: int | None,
    options: ConvertOptions,
    meta: dict | None = None,
) -> Layout:
    """A Layout of the first ``options.max_instances`` instances; ``meta`` gains the full count."""
    instances = tuple(Instance(c, tuple(b)) for c, b in zip(captions, boxes, strict=True))
    meta = {**(meta or {}), "instances_total": len(instances)}
    return Layout(prompt, instances[: options.max_instances], seed, meta=meta)


def _normalised_boxes(values: list, where: str, field: str) -> list[tuple[float, float, float, float]]:
    return [validate_box(box, f"{where}: {field}[{k}]") for k, box in enumerate(values)]


def _write_size(layout: Layout, options: ConvertOptions) -> tuple[float, float]:
    width = options.width or layout.meta.get("width") or DEFAULT_SIZE
    height = options.height or layout.meta.get("height") or DEFAULT_SIZE
    return width, height


# ----------------------------------------------------------------------------- idruid


def read_idruid(path: Path, options: ConvertOptions) -> list[Layout]:
    return load_layouts(path)


def write_idruid(layouts: Sequence[Layout], path: Path, options: ConvertOptions) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_layouts(layouts, path)


# ----------------------------------------------------------------------------- gligen


def read_gligen(path: Path, options: ConvertOptions) -> list[Layout]:
    layouts = []
    for where, obj in read_records(path):
        obj = _object(obj, where, "prompt, phrases and locations")
        prompt = _text(obj.get("prompt"), f"{where}: prompt")
        phrases, locations = _list(obj, "phrases", where), _list(obj, "locations", where)
        if len(phrases) != len(locations):
            raise LayoutError(f"{where}: {len(phrases)} phrases but {len(locations)} locations")
        captions = [_text(p, f"{where}: phrases[{k}]") for k, p in enumerate(phrases)]
        boxes = _normalised_boxes(locations, where, "locations")
        layouts.append(_layout(prompt, captions, boxes, _seed(obj, where), options))
    return layouts


def write_gligen(layouts: Sequence[Layout], path: Path, options: ConvertOptions) -> None:
    records = []
    for layout in layouts:
        record: dict = {"prompt": layout.prompt, "phrases": layout.captions, "locations": _boxes(layout)}
        records.append(_with_seed(record, layout))
    write_records(records, path)


def _boxes(layout: Layout) -> list[list[float]]:
    return [[float(v) for v in box] for box in layout.boxes]


def _with_seed(record: dict, layout: Layout) -> dict:
    if layout.seed is not None:
        record["seed"] = layout.seed
    return record


# ----------------------------------------------------------------------------- migc


def read_migc(path: Path, options: ConvertOptions) -> list[Layout]:
    layouts = []
    for where, obj in read_records(path):
        obj = _object(obj, where, "prompt_list and bboxes")
        prompt_list, bboxes = _list(obj, "prompt_list", where), _list(obj, "bboxes", where)
        if len(prompt_list) != len(bboxes) + 1:
            raise LayoutError(
                f"{where}: prompt_list holds {len(prompt_list)} entries for {len(bboxes)} bboxes; "
                "it must hold the global prompt and then one phrase per box"
            )
        prompt = _text(prompt_list[0], f"{where}: prompt_list[0]")
        captions = [_text(p, f"{where}: prompt_list[{k}]") for k, p in enumerate(prompt_list[1:], start=1)]
        boxes = _normalised_boxes(bboxes, where, "bboxes")
        layouts.append(_layout(prompt, captions, boxes, _seed(obj, where), options))
    return layouts


def write_migc(layouts: Sequence[Layout], path: Path, options: ConvertOptions) -> None:
    records = [
        _with_seed({"prompt_list": [layout.prompt, *layout.captions], "bboxes": _boxes(layout)}, layout)
        for layout in layouts
    ]
    write_records(records, path)


# ----------------------------------------------------------------------------- instancediffusion


def read_instancediffusion(path: Path, options: ConvertOptions) -> list[Layout]:
    layouts = []
    for where, obj in read_records(path):
        obj = _object(obj, where, "caption, width, height and annos")
        prompt = _text(obj.get("caption"), f"{where}: caption")
        width = layoutsam.image_side(obj.get("width"), f"{where}: width")
        height = layoutsam.image_side(obj.get("height"), f"{where}: height")
        annos = _list(obj, "annos", where)
        captions, xywh = [], []
        for k, anno in enumerate(annos):
            anno = _object(anno, f"{where}: annos[{k}]", "bbox and caption")
            captions.append(_text(anno.get("caption"), f"{where}: annos[{k}].caption"))
            box = anno.get("bbox")
            if (
                not isinstance(box, list)
                or len(box) != 4
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
            ):
                raise LayoutError(f"{where}: annos[{k}].bbox: must be [x, y, w, h] in pixels, got {box!r}")
            xywh.append(box)
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in xywh]
        norm = layoutsam.normalise_pixel_boxes(
            xyxy, width, height, where, item="annos[{k}].bbox", clip=options.clip, shown=xywh
        )
        boxes = [tuple(float(v) for v in row) for row in norm]
        meta = {"width": layoutsam.whole_number(width), "height": layoutsam.whole_number(height)}
        layouts.append(_layout(prompt, captions, boxes, _seed(obj, where), options, meta))
    return layouts


def write_instancediffusion(layouts: Sequence[Layout], path: Path, options: ConvertOptions) -> None:
    px = layoutsam.pixel_value
    records = []
    for layout in layouts:
        width, height = _write_size(layout, options)
        annos = [
            {
                "bbox": [px(x0 * width), px(y0 * height), px((x1 - x0) * width), px((y1 - y0) * height)],
                "mask": [],
                "category_name": "",
                "caption": inst.caption,
            }
            for inst in layout.instances
            for x0, y0, x1, y1 in [inst.box]
        ]
        record = {"caption": layout.prompt, "width": width, "height": height, "annos": annos}
        records.append(_with_seed(record, layout))
    write_records(records, path)


# ----------------------------------------------------------------------------- layoutsam


def read_layoutsam_rows(path: Path, options: ConvertOptions) -> list[Layout]:
    """JSON Lines rows, or parquet shards (a ``.parquet`` file or a folder of them)."""
    if path.suffix == ".parquet" or path.is_dir():
        data = layoutsam.read_layoutsam(path, options.captions, options.max_instances, options.clip)
        return data.layouts
    return [
        layoutsam.layout_from_row(row, where, options.captions, options.max_instances, options.clip, index=k)
        for k, (where, row) in enumerate(read_records(path))
    ]


def write_layoutsam_rows(layouts: Sequence[Layout], path: Path, options: ConvertOptions) -> None:
    rows = [
        layoutsam.layoutsam_row(layout, *_write_size(layout, options), options.captions) for layout in layouts
    ]
    write_records(rows, path)


# ----------------------------------------------------------------------------- coco-mig


def read_coco_mig(path: Path, options: ConvertOptions) -> list[Layout]:
    """A benchmark folder, or the annotation YAML alone."""
    if path.is_dir():
        return coco_mig.read_coco_mig(path)
    return coco_mig.read_coco_mig_annotation(path)


def write_coco_mig(layouts: Sequence[Layout], path: Path, options: ConvertOptions) -> None:
    """A ``.yaml`` / ``.yml`` path gets the annotation alone, any other path becomes a folder."""
    if path.suffix in (".yaml", ".yml"):
        path.parent.mkdir(parents=True, exist_ok=True)
        coco_mig.write_coco_mig_annotation(layouts, path)
    else:
        coco_mig.write_coco_mig(layouts, path)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Format:
    read: Callable[[Path, ConvertOptions], list[Layout]]
    write: Callable[[Sequence[Layout], Path, ConvertOptions], None]


FORMATS: dict[str, Format] = {
    "idruid": Format(read_idruid, write_idruid),
    "gligen": Format(read_gligen, write_gligen),
    "migc": Format(read_migc, write_migc),
    "instancediffusion": Format(read_instancediffusion, write_instancediffusion),
    "layoutsam": Format(read_layoutsam_rows, write_layoutsam_rows),
    "coco-mig": Format(read_coco_mig, write_coco_mig),
}


def _format(name: str) -> Format:
    if name not in FORMATS:
        raise LayoutError(f"unknown layout format {name!r} (known: {', '.join(FORMATS)})")
    return FORMATS[name]


def read_layouts(path: str | Path, format: str, options: ConvertOptions | None = None) -> list[Layout]:
    return _format(format).read(Path(path), options or ConvertOptions())


def write_layouts(
    layouts: Sequence[Layout], path: str | Path, format: str, options: ConvertOptions | None = None
) -> None:
    if not layouts:
        raise LayoutError("no layout to write")
    _format(format).write(list(layouts), Path(path), options or ConvertOptions())


@dataclass(frozen=True)
class ConvertResult:
    layouts: int  # how many were converted
    truncated: int  # how many had more than max_instances instances and lost the rest


def convert(
    source: str | Path,
    target: str | Path,
    from_format: str,
    to_format: str,
    options: ConvertOptions | None = None,
) -> ConvertResult:
    """Read ``source`` in ``from_format`` and write it to ``target`` in ``to_format``."""
    options = options or ConvertOptions()
    _format(to_format)  # fail on a bad target format before reading
    layouts = read_layouts(source, from_format, options)
    write_layouts(layouts, target, to_format, options)
    truncated = sum(layout.meta.get("instances_total", layout.level) > layout.level for layout in layouts)
    return ConvertResult(len(layouts), truncated)
