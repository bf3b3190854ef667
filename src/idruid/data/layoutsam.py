"""LayoutSAM / LayoutSAM-eval (CreatiLayout) rows: reader for the parquet shards, row writer.

A row holds ``global_caption``, ``bbox_list`` (a STRING such as ``"[[10, 20, 200, 300], ...]"``
of pixel ``x0, y0, x1, y1`` boxes), ``region_captions`` (short) and ``detail_region_captions``
(detailed) - lists of strings, or strings holding such a list as in the released eval set -
plus ``width`` and ``height`` of the image; the eval set has ``file_name``, training metadata
may have ``image_path`` (both kept in ``meta``; an idruid ``seed`` column is read too). With the
detailed captions as the instances' captions, the short ones, where the file has them, go to
``meta["short_captions"]``: LayoutSAM-eval's judge names a box's subject by them.
Boxes are divided by the image size; values past the image by no more than float noise
are clipped to [0, 1], a box really outside the image is an error.

The paper keeps the first 10 instances of a sample (4.1); rows with more are truncated
and counted (``meta["instances_total"]`` keeps the original count).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idruid.errors import LayoutError
from idruid.layout import MAX_INSTANCES, Instance, Layout

CAPTION_FIELDS = {"detailed": "detail_region_captions", "short": "region_captions"}
REQUIRED_COLUMNS = ("global_caption", "bbox_list", "width", "height")
OPTIONAL_COLUMNS = ("image_path", "file_name", "seed")
BOX_TOLERANCE = 1e-6  # in normalised units: how far past the image edge counts as float noise


def caption_field(captions: str) -> str:
    if captions not in CAPTION_FIELDS:
        raise LayoutError(f"captions must be one of {', '.join(CAPTION_FIELDS)}, got {captions!r}")
    return CAPTION_FIELDS[captions]


def _literal(value, where: str):
    """A list given as such or as its text (Python or JSON literal)."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise LayoutError(f"{where}: cannot parse {value[:80]!r} as a list") from None
    return value


def image_side(value, where: str) -> float:
    """A positive image side; numbers or numeric strings."""
    if isinstance(value, bool) or value is None:
        raise LayoutError(f"{where}: must be a positive number, got {value!r}")
    try:
        size = float(value)
    except (TypeError, ValueError):
        raise LayoutError(f"{where}: must be a positive number, got {value!r}") from None
    if not np.isfinite(size) or size <= 0:
        raise LayoutError(f"{where}: must be a positive number, got {value!r}")
    return size


def normalise_pixel_boxes(
    boxes,
    width: float,
    height: float,
    where: str,
    item: str = "bbox_list[{k}]",
    clip: bool = False,
    shown: list | None = None,
) -> np.ndarray:
    """Pixel ``x0, y0, x1, y1`` boxes (n, 4) -> normalised (n, 4), checked.

    Values within BOX_TOLERANCE past an edge are clipped; farther is an error unless
    ``clip`` (then the box is cut to the image). A box with no area is always an error.
    Errors name box k as ``item.format(k=k)`` and show it as ``shown[k]`` (the input as written).
    """
    field = item.split("[")[0]
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise LayoutError(f"{where}: {field}: must be a list of [x0, y0, x1, y1] number lists") from None
    if array.ndim != 2 or array.shape[1] != 4:
        raise LayoutError(
            f"{where}: {field}: must be a list of [x0, y0, x1, y1] boxes, got shape {array.shape}"
        )
    shown = array.tolist() if shown is None else shown
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        k = int(np.argmax(bad))
        raise LayoutError(f"{where}: {item.format(k=k)}: {shown[k]} holds a non-finite value")
    norm = array / np.array([width, height, width, height])  # (n, 4)
    tolerance = np.inf if clip else BOX_TOLERANCE
    outside = ((norm < -tolerance) | (norm > 1 + tolerance)).any(axis=1)
    if outside.any():
        k = int(np.argmax(outside))
        raise LayoutError(
            f"{where}: {item.format(k=k)}: box {shown[k]} lies outside the {width:g}x{height:g} image"
        )
    norm = norm.clip(0.0, 1.0)
    empty = (norm[:, 2] <= norm[:, 0]) | (norm[:, 3] <= norm[:, 1])
    if empty.any():
        k = int(np.argmax(empty))
        raise LayoutError(
            f"{where}: {item.format(k=k)}: box {shown[k]} has no area (needs x1 > x0 and y1 > y0"
            + (" inside the image)" if clip else ")")
        )
    return norm


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LayoutError(f"{where}: must be a non-empty string, got {value!r}")
    return value.strip()


def layout_from_row(
    row: dict,
    where: str,
    captions: str = "detailed",
    max_instances: int = MAX_INSTANCES,
    clip: bool = False,
    index: int | None = None,
) -> Layout:
    """One LayoutSAM row -> Layout (first ``max_instances`` instances); errors name ``where``."""
    field = caption_field(captions)
    if not isinstance(row, dict):
        raise LayoutError(f"{where}: must be an object with LayoutSAM fields, got {type(row).__name__}")
    for name in (*REQUIRED_COLUMNS, field):
        if row.get(name) is None:
            raise LayoutError(f"{where}: {name}: missing")
    prompt = _text(row["global_caption"], f"{where}: global_caption")
    width = image_side(row["width"], f"{where}: width")
    height = image_side(row["height"], f"{where}: height")
    boxes = _literal(row["bbox_list"], f"{where}: bbox_list")
    texts = _literal(row[field], f"{where}: {field}")
    if not isinstance(boxes, list | tuple) or not boxes:
        raise LayoutError(f"{where}: bbox_list: must be a non-empty list of boxes")
    if not isinstance(texts, list | tuple):
        raise LayoutError(f"{where}: {field}: must be a list of strings")
    if len(texts) != len(boxes):
        raise LayoutError(f"{where}: {len(boxes)} boxes in bbox_list but {len(texts)} {field}")
    norm = normalise_pixel_boxes(boxes, width, height, where, clip=clip)
    kept = min(len(boxes), max_instances)
    instances = tuple(
        Instance(_text(texts[k], f"{where}: {field}[{k}]"), tuple(float(v) for v in norm[k]))
        for k in range(kept)
    )
    meta: dict = {"width": whole_number(width), "height": whole_number(height), "instances_total": len(boxes)}
    short = CAPTION_FIELDS["short"]
    if captions == "detailed" and row.get(short) is not None:
        subjects = _literal(row[short], f"{where}: {short}")
        if not isinstance(subjects, list | tuple) or len(subjects) != len(boxes):
            raise LayoutError(f"{where}: {short}: must be a list of {len(boxes)} strings, one per box")
        meta["short_captions"] = [_text(subjects[k], f"{where}: {short}[{k}]") for k in range(kept)]
    if index is not None:
        meta["index"] = index
    for name in ("image_path", "file_name"):
        if row.get(name) is not None:
            meta[name] = row[name]
    seed = row.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise LayoutError(f"{where}: seed: must be a non-negative integer, got {seed!r}")
    return Layout(prompt, instances, seed, meta=meta)


def whole_number(size: float) -> int | float:
    """An image side as an int when it is whole (so written JSON says 512, not 512.0)."""
    return int(size) if float(size).is_integer() else size


# ----------------------------------------------------------------------------- parquet


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "reading LayoutSAM parquet files needs pyarrow: pip install 'idruid[data]'"
        ) from None
    return pq


def parquet_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """A parquet file, a folder of shards (``*.parquet``, sorted) or a list of either."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            shards = sorted(item.glob("*.parquet"))
            if not shards:
                raise LayoutError(f"{item}: no *.parquet file in this folder")
            files.extend(shards)
        elif item.is_file():
            files.append(item)
        else:
            raise LayoutError(f"{item}: LayoutSAM parquet file or folder not found")
    if not files:
        raise LayoutError("no LayoutSAM parquet file given")
    return files


def iter_layoutsam(
    paths: str | Path | Iterable[str | Path],
    captions: str = "detailed",
    max_instances: int = MAX_INSTANCES,
    clip: bool = False,
    batch_size: int = 1024,
) -> Iterator[Layout]:
    """Stream Layouts from LayoutSAM shards; only the layout columns are read (never images).

    ``meta["index"]`` counts rows over all shards in order; errors name the file and row.
    """
    pq = _pyarrow_parquet()
    field = caption_field(captions)
    index = 0
    for path in parquet_files(paths):
        try:
            shard = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for a non-parquet file
            raise LayoutError(f"{path}: not a readable parquet file ({err})") from None
        names = set(shard.schema_arrow.names)
        missing = [name for name in (*REQUIRED_COLUMNS, field) if name not in names]
        if missing:
            raise LayoutError(
                f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(sorted(names))})"
            )
        optional = [*OPTIONAL_COLUMNS, *([CAPTION_FIELDS["short"]] if captions == "detailed" else [])]
        columns = [*REQUIRED_COLUMNS, field, *(name for name in optional if name in names)]
        row_in_file = 0
        for rows in _decoded_batches(shard, path, columns, batch_size):
            for row in rows:
                yield layout_from_row(
                    row, f"{path}: row {row_in_file}", captions, max_instances, clip, index=index
                )
                row_in_file += 1
                index += 1


def _decoded_batches(shard, path: Path, columns: list[str], batch_size: int) -> Iterator[list[dict]]:
    """The shard's rows as Python dicts, batch by batch; corrupt pages or strings that are not
    UTF-8 (found only when decoded) become a LayoutError naming the file."""
    batches = shard.iter_batches(batch_size=batch_size, columns=columns)
    done = 0
    while True:
        try:
            batch = next(batches, None)
            rows = None if batch is None else batch.to_pylist()
        except Exception as err:  # pyarrow raises several types (and UnicodeDecodeError) for corrupt data
            raise LayoutError(f"{path}: corrupt parquet data after row {done} ({err})") from None
        if rows is None:
            return
        done += len(rows)
        yield rows


@dataclass
class LayoutSamData:
    layouts: list[Layout]
    truncated: int  # rows that had more than max_instances instances


def read_layoutsam(
    paths: str | Path | Iterable[str | Path],
    captions: str = "detailed",
    max_instances: int = MAX_INSTANCES,
    clip: bool = False,
    limit: int | None = None,
) -> LayoutSamData:
    """All (or the first ``limit``) rows as Layouts, with the count of truncated rows.

    ``captions="detailed"`` (LayoutSAM-eval's protocol) or ``"short"``.
    """
    layouts = []
    for layout in iter_layoutsam(paths, captions, max_instances, clip):
        if limit is not None and len(layouts) >= limit:
            break
        layouts.append(layout)
    truncated = sum(layout.meta["instances_total"] > layout.level for layout in layouts)
    return LayoutSamData(layouts, truncated)


# ----------------------------------------------------------------------------- writing


def pixel_value(value: float) -> int | float:
    """A pixel coordinate, written as an integer when it is one up to float noise."""
    nearest = round(value)
    return int(nearest) if abs(value - nearest) <= 1e-9 * max(1.0, abs(value)) else float(value)


def layoutsam_row(layout: Layout, width: float, height: float, captions: str = "detailed") -> dict:
    """A LayoutSAM row for ``layout`` on a ``width`` x ``height`` image (captions in one field)."""
    scale = (width, height, width, height)
    boxes = [[pixel_value(v * s) for v, s in zip(inst.box, scale, strict=True)] for inst in layout.instances]
    row: dict = {
        "global_caption": layout.prompt,
        "bbox_list": str(boxes),
        caption_field(captions): layout.captions,
        "width": whole_number(width),
        "height": whole_number(height),
    }
    if layout.seed is not None:
        row["seed"] = layout.seed
    for name in ("image_path", "file_name"):
        if name in layout.meta:
            row[name] = layout.meta[name]
    return row
