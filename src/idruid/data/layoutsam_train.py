"""LayoutSAM image-layout pairs for stage-1 training (paper 4.1), in ShapesPairedDataset's item format.

Rows come from the LayoutSAM parquet shards (``idruid.data.layoutsam``); the image is read from
``image_root / image_path``. Each image is centre-cropped to a square (side = its shorter side,
integer pixel offsets ``(W - S) // 2`` and ``(H - S) // 2``) and that square is resized to
``resolution`` (bicubic). Boxes follow the crop exactly: in crop pixels ``box - offset``,
divided by ``S``, clipped to [0, 1]; a box with no visible area left is dropped. The paper's
cap then keeps the first 10 visible instances (``meta["instances_total"]`` is the row's count,
``meta["instances_visible"]`` the count inside the crop). A layout may end with no instance
(all boxes outside the crop); the model then sees only the global prompt.

The dataset keeps the layout columns of each shard as an in-memory pyarrow table (no open
file), so it pickles and works with DataLoader workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from idruid.data.layoutsam import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    _pyarrow_parquet,
    caption_field,
    layout_from_row,
    parquet_files,
)
from idruid.data.shapes import image_to_tensor
from idruid.errors import LayoutError
from idruid.layout import MAX_INSTANCES, Instance, Layout

ASPECT_TOLERANCE = 0.01  # relative: the image file's aspect vs the row's width / height


def center_square(width: int, height: int) -> tuple[int, int, int]:
    """The centred square crop of a ``width`` x ``height`` image: (left, top, side) in pixels."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def crop_boxes(
    boxes: np.ndarray, width: int, height: int, left: int, top: int, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised boxes (n, 4) of a ``width`` x ``height`` image -> boxes normalised to the square
    crop at (left, top) of ``side`` pixels, clipped to it, and the (n,) mask of boxes still visible."""
    pixels = boxes * np.array([width, height, width, height], dtype=np.float64)
    cropped = ((pixels - np.array([left, top, left, top])) / side).clip(0.0, 1.0)  # (n, 4)
    visible = (cropped[:, 2] > cropped[:, 0]) & (cropped[:, 3] > cropped[:, 1])
    return cropped, visible


def _pil_image():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("loading LayoutSAM images needs Pillow: pip install 'idruid[data]'") from None
    return Image


class LayoutSamPairedDataset(torch.utils.data.Dataset):
    """LayoutSAM pairs ``{"image": (3, R, R) float in [-1, 1], "layout": Layout}``.

    ``shards``: a parquet file, a folder of shards or a list of either; every shard needs an
    ``image_path`` column (relative to ``image_root``). A missing image file is an error naming
    the file and the row, unless ``skip_missing``: then the rows whose file is missing are
    dropped in one scan here, counted in ``self.skipped`` and reported by a warning.
    """

    def __init__(
        self,
        shards: str | Path | Iterable[str | Path],
        image_root: str | Path,
        resolution: int,
        captions: str = "detailed",
        skip_missing: bool = False,
        max_instances: int = MAX_INSTANCES,
    ):
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        field = caption_field(captions)
        self.image_root = Path(image_root)
        self.resolution, self.captions, self.max_instances = resolution, captions, max_instances
        self.files = parquet_files(shards)
        self.tables = [self._read_shard(path, field) for path in self.files]
        sizes = [table.num_rows for table in self.tables]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (shards + 1,)
        rows = np.arange(self.starts[-1], dtype=np.int64)  # global row numbers over all shards
        self.skipped = 0
        if skip_missing:
            present = self._present_rows()
            self.skipped = int((~present).sum())
            rows = rows[present]
            if self.skipped:
                warnings.warn(
                    f"LayoutSAM: skipped {self.skipped} of {len(present)} rows whose image file is "
                    f"missing under {self.image_root}",
                    stacklevel=2,
                )
        self.rows = rows

    @staticmethod
    def _read_shard(path: Path, field: str):
        pq = _pyarrow_parquet()
        try:
            shard = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for a non-parquet file
            raise LayoutError(f"{path}: not a readable parquet file ({err})") from None
        names = set(shard.schema_arrow.names)
        missing = [name for name in (*REQUIRED_COLUMNS, field, "image_path") if name not in names]
        if missing:
            raise LayoutError(
                f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(sorted(names))})"
            )
        columns = [*REQUIRED_COLUMNS, field, *(name for name in OPTIONAL_COLUMNS if name in names)]
        try:
            table = shard.read(columns=columns)  # in memory; the file is closed again
            table.validate(full=True)  # strings that are not UTF-8 would fail only mid-training
        except Exception as err:  # pyarrow raises several types for corrupt data
            raise LayoutError(f"{path}: corrupt parquet data ({err})") from None
        return table

    def _where(self, row: int) -> str:
        shard = int(np.searchsorted(self.starts, row, side="right")) - 1
        return f"{self.files[shard]}: row {row - int(self.starts[shard])}"

    def _present_rows(self) -> np.ndarray:
        """(rows,) bool: whether each row's image file exists (one stat per row)."""
        present = np.zeros(int(self.starts[-1]), dtype=bool)
        for k, table in enumerate(self.tables):
            for i, path in enumerate(table.column("image_path").to_pylist()):
                if path is None:
                    raise LayoutError(f"{self._where(int(self.starts[k]) + i)}: image_path: missing")
                present[int(self.starts[k]) + i] = (self.image_root / path).is_file()
        return present

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.rows):
            raise IndexError(index)
        row = int(self.rows[index])
        shard = int(np.searchsorted(self.starts, row, side="right")) - 1
        record = self.tables[shard].slice(row - int(self.starts[shard]), 1).to_pylist()[0]
        where = self._where(row)
        if record.get("image_path") is None:
            raise LayoutError(f"{where}: image_path: missing")
        # Every instance first: the cap applies to the instances left visible by the crop.
        layout = layout_from_row(record, where, self.captions, max_instances=10**9, index=row)
        path = self.image_root / record["image_path"]
        if not path.is_file():
            raise FileNotFoundError(
                f"{where}: image file {path} not found (image_root={self.image_root}, "
                f"image_path={record['image_path']!r}); pass skip_missing=True to drop such rows"
            )
        image, crop = self._load(path, layout, where)
        return {"image": image, "layout": self._cropped_layout(layout, crop)}

    def _load(self, path: Path, layout: Layout, where: str) -> tuple[torch.Tensor, tuple[int, ...]]:
        Image = _pil_image()
        try:
            with Image.open(path) as file:
                picture = file.convert("RGB")
        except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise LayoutError(f"{where}: image {path} is unreadable ({err})") from None
        width, height = picture.size
        row_aspect = layout.meta["width"] / layout.meta["height"]
        if abs(width / height - row_aspect) > ASPECT_TOLERANCE * row_aspect:
            raise LayoutError(
                f"{where}: image {path} is {width}x{height} but the row says "
                f"{layout.meta['width']}x{layout.meta['height']} (aspect differs, boxes would not fit)"
            )
        left, top, side = center_square(width, height)
        square = picture.resize(
            (self.resolution, self.resolution),
            Image.Resampling.BICUBIC,
            box=(left, top, left + side, top + side),
        )
        return image_to_tensor(np.array(square, dtype=np.uint8)), (width, height, left, top, side)

    def _cropped_layout(self, layout: Layout, crop: tuple[int, ...]) -> Layout:
        width, height, left, top, side = crop
        boxes, visible = crop_boxes(np.array(layout.boxes, dtype=np.float64), *crop)
        kept = np.flatnonzero(visible)[: self.max_instances]
        instances = tuple(
            Instance(layout.instances[k].caption, tuple(float(v) for v in boxes[k])) for k in kept
        )
        meta = {**layout.meta, "instances_visible": int(visible.sum()), "crop": (left, top, side)}
        return Layout(layout.prompt, instances, layout.seed, meta=meta)
