"""Scoring a folder of benchmark images, whatever system made them (paper 4.1, Tables 1-2).

Images are named ``<anything>_<index>.png`` (or .jpg), ``index`` being the layout's benchmark
index, as MIG_Bench's eval_mig.py expects (it reads the index after the last '_'). What each
benchmark is scored by, and how its images are resized, is idruid.eval_benchmarks.

``idruid eval`` saves its images under these names and scores them through score_folder, so
``idruid score`` on its folder gives the same numbers. Folders are read and scored
``batch_size`` images at a time: 5000 LayoutSAM-eval images at 1024 px would not fit in memory
at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ScoringError
from .eval_benchmarks import Benchmark, ScorerSpecs
from .layout import Layout
from .scorers.registry import load_scorer

if TYPE_CHECKING:
    from .scorers.protocols import Detector, Judge, Segmenter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_INDEX_PATTERN = re.compile(r"_(\d+)$")
_SHOWN = 5  # how many missing indices or odd files an error lists


# ----------------------------------------------------------------------------- layouts


def layout_index(layout: Layout, position: int) -> int:
    """The layout's benchmark index (``meta["index"]``), which names its image."""
    index = layout.meta.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ScoringError(f"layout {position} has no benchmark index (meta['index']), got {index!r}")
    return index


# ----------------------------------------------------------------------------- image files


def image_name(benchmark: str, layout: Layout, position: int) -> str:
    """``<benchmark>_<index>.png``: the name ``idruid eval`` gives a layout's image."""
    return f"{benchmark}_{layout_index(layout, position)}.png"


def image_index(path: str | Path) -> int | None:
    """The benchmark index in an image's name (``x_12.png`` -> 12); None when it holds none."""
    match = _INDEX_PATTERN.search(Path(path).stem)
    return int(match.group(1)) if match else None


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def find_images(folder: str | Path, layouts: Sequence[Layout]) -> list[Path]:
    """The image of each layout, in the layouts' order. Images of other indices are ignored;
    a missing one, two for one index, or an image name without an index is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScoringError(f"{folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    unnamed = [p.name for p in files if image_index(p) is None]
    if unnamed:
        raise ScoringError(
            f"{folder}: cannot read a benchmark index from {_listing(unnamed)} "
            "(name images <anything>_<index>.png)"
        )
    by_index: dict[int, list[Path]] = {}
    for path in files:
        by_index.setdefault(image_index(path), []).append(path)
    wanted = [layout_index(layout, k) for k, layout in enumerate(layouts)]
    twice = [
        f"{by_index[i][0].name} and {by_index[i][1].name}" for i in wanted if len(by_index.get(i, [])) > 1
    ]
    if twice:
        raise ScoringError(f"{folder}: two images for one benchmark index: {_listing(twice)}")
    missing = [str(i) for i in wanted if i not in by_index]
    if missing:
        raise ScoringError(
            f"{folder}: no image for {len(missing)} of {len(wanted)} layouts, "
            f"benchmark indices {_listing(missing)} (name images <anything>_<index>.png)"
        )
    return [by_index[i][0] for i in wanted]


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a clear error for a file that is not a readable image."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ScoringError(f"{path}: unreadable image ({err})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header without decoding it."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ScoringError(f"{path}: unreadable image ({err})") from None


def load_images(paths: Sequence[Path], side: int | None, reference: Path | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8: images resized to side x side as MIG_Bench's scorer does (cv2's
    bilinear rule; Benchmark.resize gives the side, 512 for COCO-MIG by its protocol), or, with
    ``side`` None, as they are: unresized images must share the size of ``reference`` (default
    the first path), so a folder read in chunks is checked throughout."""
    from .metrics import resize_linear

    if not paths:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    reference = Path(paths[0] if reference is None else reference)
    size = None if side is not None else image_size(reference)
    images = []
    for path in paths:
        image = load_image(path)
        if side is not None:
            image = resize_linear(image, side, side)
        elif (image.shape[1], image.shape[0]) != size:
            raise ScoringError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]}, {reference.name} is "
                f"{size[0]}x{size[1]}; a benchmark's images share a size"
            )
        images.append(image)
    return np.stack(images)


class FolderImages(Sequence[np.ndarray]):
    """A benchmark's image files as a sequence of (H, W, 3) uint8 arrays read when indexed, as
    load_images reads them: what ``idruid score`` draws its grid from without holding them all."""

    def __init__(self, paths: Sequence[Path], side: int | None) -> None:
        self.paths, self.side = list(paths), side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k):  # an int gives one image (slices are not needed)
        return load_images([self.paths[k]], self.side, self.paths[0])[0]


def save_images(folder: str | Path, benchmark: str, images: np.ndarray, layouts: Sequence[Layout]) -> None:
    """Each image as ``<folder>/<benchmark>_<index>.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, (image, layout) in enumerate(zip(images, layouts, strict=True)):
        Image.fromarray(image).save(folder / image_name(benchmark, layout, k))


# ----------------------------------------------------------------------------- scorers


@dataclass
class Scorers:
    """The models that score a benchmark."""

    detector: Detector | None  # COCO-MIG's detector; None (with segmenter) skips that section
    segmenter: Segmenter | None
    judge: Judge | None  # LayoutSAM-eval's judge; None where the benchmark is scored without one
    mig_protocol: str = "mig-bench"  # COCO-MIG's protocol (benchmarks.MIG_PROTOCOLS)


def load_scorers(specs: ScorerSpecs, device: str = "cpu", mig_protocol: str = "mig-bench") -> Scorers:
    """The models named by checked specs (benchmarks.check_scorers), loaded on ``device``."""
    return Scorers(
        load_scorer("detector", specs.detector, device) if specs.detector else None,
        load_scorer("segmenter", specs.segmenter, device) if specs.segmenter else None,
        load_scorer("judge", specs.judge, device, rule=specs.judge_rule) if specs.judge else None,
        mig_protocol,
    )


# ----------------------------------------------------------------------------- scoring


def merge_leakage(parts: Sequence[dict]) -> dict:
    """metrics.leakage of all images from its results on disjoint chunks of them: counts add up
    per level and overall, rates are recomputed from them, "avg" is the mean of the level rates."""
    levels = sorted({k for part in parts for k in part if re.fullmatch(r"L\d+", k)}, key=lambda k: int(k[1:]))

    def summary(counts: list[dict]) -> dict:
        leaked = sum(c["leaked"] for c in counts)
        total = sum(c["instances"] for c in counts)
        return {"rate": leaked / total if total else 0.0, "leaked": leaked, "instances": total}

    per_level = {lv: summary([part[lv] for part in parts if lv in part]) for lv in levels}
    rates = [v["rate"] for v in per_level.values()]
    return {**summary(list(parts)), **per_level, "avg": float(np.mean(rates)) if rates else 0.0}


def _score_chunks(
    benchmark: Benchmark,
    chunks: Iterable[tuple[np.ndarray, Sequence[Layout]]],
    levels: list[int],
    scorers: Scorers,
    progress: bool,
) -> dict:
    """Metrics of (images, layouts) chunks scored one after another: "mig" and "leakage" with a
    detector and segmenter, "sam" with a judge."""
    from tqdm import tqdm

    from .metrics import aggregate_mig, aggregate_sam, leakage, score_coco_mig, score_layoutsam

    coco_section = scorers.detector is not None
    if coco_section != (scorers.segmenter is not None):
        raise ValueError("scorers need a detector and a segmenter together (or neither)")
    if not coco_section and scorers.judge is None:
        raise ValueError("scorers hold neither a detector nor a judge: nothing to score with")
    mig_rows, leak_parts, judgements = [], [], []
    for images, layouts in tqdm(chunks, desc="scoring", unit="batch", disable=not progress):
        if coco_section:
            mig_rows += score_coco_mig(
                images,
                layouts,
                scorers.detector,
                scorers.segmenter,
                resize_to=benchmark.resize(scorers.mig_protocol),
                separate_queries=benchmark.separate_queries,
            )
            leak_parts.append(leakage(images, layouts))
        if scorers.judge is not None:
            judgements += score_layoutsam(images, layouts, scorers.judge)
    metrics = {}
    if coco_section:
        metrics["mig"] = aggregate_mig(mig_rows, levels)
        metrics["leakage"] = merge_leakage(leak_parts)
    if scorers.judge is not None:
        metrics["sam"] = aggregate_sam(judgements, levels)
    return metrics


def _starts(count: int, batch_size: int) -> range:
    if batch_size < 1:
        raise ScoringError(f"the scoring batch size must be at least 1, got {batch_size}")
    return range(0, count, batch_size)


def score_benchmark(
    benchmark: Benchmark,
    images: np.ndarray,
    layouts: Sequence[Layout],
    scorers: Scorers,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Metrics of images (N, H, W, 3) uint8 made for ``layouts``: "mig" (ISR / mIoU / success
    ratio by level) and "leakage" when the scorers have a detector, "sam" when they have a judge.
    The scorers see ``batch_size`` images at a time (each image is scored on its own, so the
    chunking does not change the numbers)."""
    if len(images) != len(layouts):
        raise ValueError(f"{len(images)} images but {len(layouts)} layouts")
    starts = _starts(len(layouts), batch_size)
    chunks = [(images[s : s + batch_size], layouts[s : s + batch_size]) for s in starts]
    levels = [lay.level for lay in layouts]
    return _score_chunks(benchmark, chunks, levels, scorers, progress and len(starts) > 1)


def score_folder(
    benchmark: Benchmark,
    folder: str | Path,
    layouts: Sequence[Layout],
    scorers: Scorers,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[dict, FolderImages]:
    """Metrics of the folder's images for ``layouts`` (see score_benchmark), read ``batch_size``
    at a time, and the images as scored (COCO-MIG's at 512x512 by MIG_Bench's protocol), read
    again when indexed."""
    paths = find_images(folder, layouts)
    starts = _starts(len(layouts), batch_size)
    side = benchmark.resize(scorers.mig_protocol)
    chunks = (
        (load_images(paths[s : s + batch_size], side, paths[0]), layouts[s : s + batch_size]) for s in starts
    )
    levels = [lay.level for lay in layouts]
    metrics = _score_chunks(benchmark, chunks, levels, scorers, progress and len(starts) > 1)
    return metrics, FolderImages(paths, side)
