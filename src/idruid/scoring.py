"""Scoring a folder of benchmark images, whatever system made them (paper 4.1, Tables 1-2).

Images are named ``<anything>_<index>.png`` (or .jpg), ``index`` being the layout's benchmark
index, as MIG_Bench's eval_mig.py expects (it reads the index after the last '_'). The
benchmarks:

- ``coco-mig``: the 800 COCO-MIG layouts read from a benchmark folder (idruid.data.coco_mig),
  scored by the official protocol (metrics.score_coco_mig): each image resized to 512x512 as
  cv2 does, GroundingDINO asked for each instance's object name on its own, SAM on the target
  box for the colour check. Also the attribute-leakage rate; there is no LayoutSAM judge.
- ``layoutsam-eval``: LayoutSAM-eval's layouts (CreatiLayout; parquet shards read by
  idruid.data.layoutsam with their DETAILED region captions, the benchmark index being the row
  index over the shards in reading order), scored by a local VLM judge (idruid.judges): the
  spatial question for every box, then colour / texture / shape only where it passes,
  micro-averaged (metrics.aggregate_sam). The COCO-MIG section (ISR / mIoU, leakage) is added
  only when a detector and a segmenter are given.
- ``shapes-mig`` / ``shapes-sam``: the embedded shapes-world benchmarks, scored by the analytic
  detector, segmenter and judge (COCO-MIG protocol, leakage, LayoutSAM-eval protocol); a VLM
  directory given as the judge replaces the analytic one.

Levels are the number of instances of a layout (L1..L10 for LayoutSAM-eval). ``idruid eval``
saves its images under these names and scores them through score_folder, so ``idruid score``
on its folder gives the same numbers. Folders are read and scored ``batch_size`` images at a
time: 5000 LayoutSAM-eval images at 1024 px would not fit in memory at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .layout import Layout

if TYPE_CHECKING:
    from .detectors import Detector, Judge, Segmenter

COCO_MIG = "coco-mig"
LAYOUTSAM_EVAL = "layoutsam-eval"
SHAPES_BENCHMARKS = ("shapes-mig", "shapes-sam")
BENCHMARK_NAMES = (*SHAPES_BENCHMARKS, COCO_MIG, LAYOUTSAM_EVAL)
MIG_RESOLUTION = 512  # COCO-MIG's scorer resizes every image to 512x512
# COCO-MIG scoring protocols -> the side images are resized to (None: scored at their own size).
# "mig-bench": MIG_Bench's eval_mig.py (512 px, SAM), what the paper's Table 1 and most published
# COCO-MIG numbers use; "druid": the I-DRUID authors' evaluation/eval_mig.py (images at their own
# 1024 px, SAM-HQ on the ground-truth box), what their released numbers use. Not comparable.
MIG_PROTOCOLS = {"mig-bench": MIG_RESOLUTION, "druid": None}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_INDEX_PATTERN = re.compile(r"_(\d+)$")
_SHOWN = 5  # how many missing indices or odd files an error lists


class ScoringError(ValueError):
    """Benchmark images or scorers that cannot be used; the message names the file or flag."""


# ----------------------------------------------------------------------------- layouts


def layout_index(layout: Layout, position: int) -> int:
    """The layout's benchmark index (``meta["index"]``), which names its image."""
    index = layout.meta.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ScoringError(f"layout {position} has no benchmark index (meta['index']), got {index!r}")
    return index


def select_layouts(
    benchmark: str,
    per_level: int | None = None,
    bench_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[Layout]:
    """The benchmark's layouts in index order, optionally only the first ``per_level`` of each
    level (in index order: COCO-MIG's levels are interleaved), then only the first ``limit``."""
    for flag, value in (("--per-level", per_level), ("--limit", limit)):
        if value is not None and value < 1:
            raise ScoringError(f"{flag} must be at least 1, got {value}")
    if benchmark == LAYOUTSAM_EVAL:
        if bench_dir is None:
            raise ScoringError(
                "layoutsam-eval needs --bench-dir, a LayoutSAM-eval parquet file or a folder of its shards"
            )
        from .data.layoutsam import read_layoutsam

        # Only the rows needed are read when no level filter comes first.
        first = limit if per_level is None else None
        layouts = read_layoutsam(bench_dir, captions="detailed", limit=first).layouts
        if not layouts:
            raise ScoringError(f"--bench-dir {bench_dir}: the LayoutSAM-eval shards hold no rows")
    elif benchmark == COCO_MIG:
        if bench_dir is None:
            raise ScoringError(
                "coco-mig needs --bench-dir, the folder of mig_bench.txt and mig_bench_anno.yaml"
            )
        from .data.coco_mig import read_coco_mig

        layouts = read_coco_mig(bench_dir)
    elif benchmark in SHAPES_BENCHMARKS:
        from .data.shapes import benchmark_layouts

        layouts = benchmark_layouts(benchmark)
    else:
        raise ScoringError(f"benchmark '{benchmark}': unknown (choose from {', '.join(BENCHMARK_NAMES)})")
    if per_level is not None:
        seen: dict[int, int] = {}
        kept = []
        for layout in layouts:
            seen[layout.level] = seen.get(layout.level, 0) + 1
            if seen[layout.level] <= per_level:
                kept.append(layout)
        layouts = kept
    return layouts if limit is None else layouts[:limit]


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


def mig_resize(benchmark: str, protocol: str = "mig-bench") -> int | None:
    """The side a benchmark's images are resized to before scoring (None: as they are)."""
    if protocol not in MIG_PROTOCOLS:
        raise ScoringError(f"--mig-protocol {protocol}: expected one of {', '.join(MIG_PROTOCOLS)}")
    return MIG_PROTOCOLS[protocol] if benchmark == COCO_MIG else None


def load_images(
    paths: Sequence[Path], benchmark: str, reference: Path | None = None, protocol: str = "mig-bench"
) -> np.ndarray:
    """(N, H, W, 3) uint8: COCO-MIG images resized to 512x512 as MIG_Bench's scorer does (cv2's
    bilinear rule; the "druid" protocol keeps them), the other benchmarks' images as they are:
    unresized images must share the size of ``reference`` (default the first path), so a folder
    read in chunks is checked throughout."""
    from .metrics import resize_linear

    if not paths:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    reference = Path(paths[0] if reference is None else reference)
    side = mig_resize(benchmark, protocol)
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

    def __init__(self, paths: Sequence[Path], benchmark: str, protocol: str = "mig-bench") -> None:
        self.paths, self.benchmark, self.protocol = list(paths), benchmark, protocol

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k):  # an int gives one image (slices are not needed)
        return load_images([self.paths[k]], self.benchmark, self.paths[0], self.protocol)[0]


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
    mig_protocol: str = "mig-bench"  # COCO-MIG's protocol (MIG_PROTOCOLS)


class ScorerSpecs(NamedTuple):
    """What scores a benchmark, as given on the command line: registry names or model
    directories; None where that part of the scoring is skipped."""

    detector: str | None
    segmenter: str | None
    judge: str | None


_SHAPES_ONLY = "the analytic {0} reads only the shapes world"


def _check_judge(benchmark: str, judge: str | None) -> str | None:
    from .detectors import JUDGES
    from .judges import check_vlm_dir

    if benchmark in SHAPES_BENCHMARKS:
        judge = judge or "analytic"
    elif judge is None:
        if benchmark == LAYOUTSAM_EVAL:
            raise ScoringError(
                "layoutsam-eval is scored by a vision-language model: give --judge <local VLM directory> "
                f"({_SHAPES_ONLY.format('judge')})"
            )
        return None
    if judge in JUDGES:
        if benchmark not in SHAPES_BENCHMARKS:
            raise ScoringError(
                f"--judge {judge}: {_SHAPES_ONLY.format('judge')}; give a local VLM directory for {benchmark}"
            )
        return judge
    try:
        check_vlm_dir(judge)
    except FileNotFoundError as err:
        raise ScoringError(f"--judge {judge}: {err}") from None
    return judge


def check_scorers(
    benchmark: str,
    detector: str | None = None,
    segmenter: str | None = None,
    judge: str | None = None,
    mig_protocol: str = "mig-bench",
) -> ScorerSpecs:
    """The detector, segmenter and judge specs, checked without loading a model (so that
    ``idruid eval`` fails before generating): a registry name or a directory holding the model's
    files. The shapes benchmarks default to the analytic ones; COCO-MIG needs GroundingDINO and
    SAM and takes a VLM judge if given one; LayoutSAM-eval needs a VLM judge and adds the COCO-MIG
    section when given both a detector and a segmenter. The "druid" COCO-MIG protocol needs a
    SAM-HQ directory."""
    from .detectors import DETECTORS, SEGMENTERS, check_grounding_dino_dir
    from .segmenters import check_sam_dir, sam_model_type

    mig_resize(benchmark, mig_protocol)  # a known protocol

    if benchmark == COCO_MIG and (detector is None or segmenter is None):
        raise ScoringError(
            "coco-mig is scored with GroundingDINO and SAM: give --detector <GroundingDINO directory> "
            "and --segmenter <SAM directory>"
        )
    if benchmark == LAYOUTSAM_EVAL and (detector is None) != (segmenter is None):
        raise ScoringError(
            "layoutsam-eval's COCO-MIG section needs both --detector and --segmenter (or neither, "
            "to score with the judge alone)"
        )
    judge = _check_judge(benchmark, judge)
    if benchmark == LAYOUTSAM_EVAL and detector is None:
        return ScorerSpecs(None, None, judge)
    detector = detector or "analytic"
    segmenter = segmenter or "analytic"
    if detector not in DETECTORS:
        if not Path(detector).is_dir():
            raise ScoringError(
                f"--detector {detector}: unknown detector; use one of {sorted(DETECTORS)} "
                "or a local GroundingDINO directory"
            )
        try:
            check_grounding_dino_dir(detector)
        except FileNotFoundError as err:
            raise ScoringError(f"--detector {detector}: {err}") from None
    if segmenter not in SEGMENTERS:
        try:
            check_sam_dir(segmenter)
        except FileNotFoundError as err:
            raise ScoringError(str(err)) from None
        if mig_protocol == "druid" and sam_model_type(segmenter) != "sam_hq":
            raise ScoringError(
                f"--segmenter {segmenter}: the druid protocol segments with SAM-HQ, this is "
                f"{sam_model_type(segmenter)!r}"
            )
    return ScorerSpecs(detector, segmenter, judge)


def load_scorers(
    benchmark: str,
    detector: str | None = None,
    segmenter: str | None = None,
    device: str = "cpu",
    judge: str | None = None,
    mig_protocol: str = "mig-bench",
) -> Scorers:
    """The models named by check_scorers, loaded on ``device``."""
    from .detectors import load_detector
    from .judges import load_judge
    from .segmenters import load_segmenter

    specs = check_scorers(benchmark, detector, segmenter, judge, mig_protocol)
    return Scorers(
        load_detector(specs.detector, device) if specs.detector else None,
        load_segmenter(specs.segmenter, device) if specs.segmenter else None,
        load_judge(specs.judge, device) if specs.judge else None,
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
    benchmark: str,
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
                resize_to=mig_resize(benchmark, scorers.mig_protocol),
                separate_queries=benchmark not in SHAPES_BENCHMARKS,  # GroundingDINO: one name per query
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
    benchmark: str,
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
    benchmark: str,
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
    protocol = scorers.mig_protocol
    chunks = (
        (load_images(paths[s : s + batch_size], benchmark, paths[0], protocol), layouts[s : s + batch_size])
        for s in starts
    )
    levels = [lay.level for lay in layouts]
    metrics = _score_chunks(benchmark, chunks, levels, scorers, progress and len(starts) > 1)
    return metrics, FolderImages(paths, benchmark, protocol)
