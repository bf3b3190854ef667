"""The benchmark registry (paper 4.1, Tables 1-2): each benchmark's layouts, default scorers,
resize and query style, resolved once from the command line.

- ``shapes-mig`` / ``shapes-sam`` (and ``shapes-mig-narrow``, ``shapes-sam-narrow``,
  ``shapes-strips``: idruid.data.shapes.splits): the embedded shapes-world benchmarks, scored by
  the analytic detector, segmenter and judge (COCO-MIG protocol, leakage, LayoutSAM-eval
  protocol); a VLM directory given as the judge replaces the analytic one.
- ``coco-mig``: the 800 COCO-MIG layouts read from a benchmark folder (idruid.data.coco_mig),
  scored by the official protocol: each image resized to 512x512 as cv2 does, GroundingDINO
  asked for each instance's object name on its own, SAM on the target box for the colour
  check. Also the attribute-leakage rate; a VLM judge only if given one.
- ``layoutsam-eval``: LayoutSAM-eval's layouts (CreatiLayout; parquet shards read by
  idruid.data.layoutsam with their DETAILED region captions, the benchmark index being the row
  index over the shards in reading order), scored by a local VLM judge; the COCO-MIG section
  (ISR / mIoU, leakage) is added only when a detector and a segmenter are given.

Levels are the number of instances of a layout (L1..L10 for LayoutSAM-eval).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .data.shapes.splits import BENCHMARKS as SHAPES_BENCHMARKS
from .errors import ScoringError
from .layout import Layout
from .scorers.registry import check_scorer
from .scorers.roles import SCORERS
from .scorers.sam import sam_model_type
from .scorers.vlm_judge import ANSWER_RULES, DEFAULT_RULE

MIG_RESOLUTION = 512  # COCO-MIG's scorer resizes every image to 512x512
# COCO-MIG scoring protocols -> the side images are resized to (None: scored at their own size).
# "mig-bench": MIG_Bench's eval_mig.py (512 px, SAM), what the paper's Table 1 and most published
# COCO-MIG numbers use; "druid": the I-DRUID authors' evaluation/eval_mig.py (images at their own
# 1024 px, SAM-HQ on the ground-truth box), what their released numbers use. Not comparable.
MIG_PROTOCOLS = {"mig-bench": MIG_RESOLUTION, "druid": None}

_SHAPES_ONLY = "the analytic {0} reads only the shapes world"


# (bench_dir or None, how many leading rows are needed or None for all) -> layouts in index order
LayoutReader = Callable[[Path | None, int | None], list[Layout]]


@dataclass(frozen=True)
class Benchmark:
    """What a benchmark is scored on and by."""

    name: str
    read_layouts: LayoutReader
    shapes_world: bool  # the analytic scorers are its defaults (and the analytic judge reads only it)
    needs_detector: bool  # --detector and --segmenter are required (else optional, both or neither)
    needs_judge: bool  # --judge is required (else optional)
    mig_resize: bool  # images are resized as the COCO-MIG protocol says (MIG_PROTOCOLS)
    separate_queries: bool  # the detector is asked one object name per prompt, as COCO-MIG's scorer

    def resize(self, protocol: str = "mig-bench") -> int | None:
        """The side the images are resized to before scoring (None: as they are)."""
        if protocol not in MIG_PROTOCOLS:
            raise ScoringError(f"--mig-protocol {protocol}: expected one of {', '.join(MIG_PROTOCOLS)}")
        return MIG_PROTOCOLS[protocol] if self.mig_resize else None


def _shapes_reader(name: str) -> LayoutReader:
    def read(bench_dir: Path | None, first: int | None) -> list[Layout]:
        from .data.shapes import benchmark_layouts

        return benchmark_layouts(name)

    return read


def _need_bench_dir(name: str, what: str, bench_dir: Path | None) -> Path:
    if bench_dir is None:
        raise ScoringError(f"{name} needs --bench-dir, {what}")
    return bench_dir


def _read_coco_mig(bench_dir: Path | None, first: int | None) -> list[Layout]:
    from .data.coco_mig import read_coco_mig

    return read_coco_mig(
        _need_bench_dir("coco-mig", "the folder of mig_bench.txt and mig_bench_anno.yaml", bench_dir)
    )


def _read_layoutsam_eval(bench_dir: Path | None, first: int | None) -> list[Layout]:
    from .data.layoutsam import read_layoutsam

    what = "a LayoutSAM-eval parquet file or a folder of its shards"
    layouts = read_layoutsam(
        _need_bench_dir("layoutsam-eval", what, bench_dir), captions="detailed", limit=first
    ).layouts
    if not layouts:
        raise ScoringError(f"--bench-dir {bench_dir}: the LayoutSAM-eval shards hold no rows")
    return layouts


# both shapes benchmarks: rendered in the shapes world, scored by the analytic tools at their own size
_SHAPES = {
    "shapes_world": True,
    "needs_detector": False,
    "needs_judge": False,
    "mig_resize": False,
    "separate_queries": False,
}
BENCHMARKS: dict[str, Benchmark] = {
    **{name: Benchmark(name, _shapes_reader(name), **_SHAPES) for name in SHAPES_BENCHMARKS},
    "coco-mig": Benchmark(
        "coco-mig",
        _read_coco_mig,
        shapes_world=False,
        needs_detector=True,
        needs_judge=False,
        mig_resize=True,
        separate_queries=True,
    ),
    "layoutsam-eval": Benchmark(
        "layoutsam-eval",
        _read_layoutsam_eval,
        shapes_world=False,
        needs_detector=False,
        needs_judge=True,
        mig_resize=False,
        separate_queries=True,
    ),
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ScoringError(f"benchmark '{name}': unknown (choose from {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


# ----------------------------------------------------------------------------- layouts


def select_layouts(
    benchmark: Benchmark,
    per_level: int | None = None,
    bench_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[Layout]:
    """The benchmark's layouts in index order, optionally only the first ``per_level`` of each
    level (in index order: COCO-MIG's levels are interleaved), then only the first ``limit``."""
    for flag, value in (("--per-level", per_level), ("--limit", limit)):
        if value is not None and value < 1:
            raise ScoringError(f"{flag} must be at least 1, got {value}")
    # Only the rows needed are read when no level filter comes first.
    layouts = benchmark.read_layouts(bench_dir, limit if per_level is None else None)
    if per_level is not None:
        seen: dict[int, int] = {}
        kept = []
        for layout in layouts:
            seen[layout.level] = seen.get(layout.level, 0) + 1
            if seen[layout.level] <= per_level:
                kept.append(layout)
        layouts = kept
    return layouts if limit is None else layouts[:limit]


# ----------------------------------------------------------------------------- scorers


class ScorerSpecs(NamedTuple):
    """What scores a benchmark, as given on the command line: registry names or model
    directories; None where that part of the scoring is skipped."""

    detector: str | None
    segmenter: str | None
    judge: str | None
    judge_rule: str = DEFAULT_RULE  # how a VLM judge's answer is read (vlm_judge.ANSWER_RULES)


def _check_judge(benchmark: Benchmark, judge: str | None) -> str | None:
    if benchmark.shapes_world:
        judge = judge or "analytic"
    elif judge is None:
        if benchmark.needs_judge:
            raise ScoringError(
                f"{benchmark.name} is scored by a vision-language model: give --judge <local VLM directory> "
                f"({_SHAPES_ONLY.format('judge')})"
            )
        return None
    if judge in SCORERS["judge"].analytic and not benchmark.shapes_world:
        raise ScoringError(
            f"--judge {judge}: {_SHAPES_ONLY.format('judge')}; "
            f"give a local VLM directory for {benchmark.name}"
        )
    return check_scorer("judge", judge)


def check_scorers(
    benchmark: Benchmark,
    detector: str | None = None,
    segmenter: str | None = None,
    judge: str | None = None,
    mig_protocol: str = "mig-bench",
    judge_rule: str = DEFAULT_RULE,
) -> ScorerSpecs:
    """The detector, segmenter and judge specs, checked without loading a model (so that
    ``idruid eval`` fails before generating): a registry name or a directory holding the model's
    files. The shapes benchmarks default to the analytic ones; COCO-MIG needs GroundingDINO and
    SAM and takes a VLM judge if given one; LayoutSAM-eval needs a VLM judge and adds the COCO-MIG
    section when given both a detector and a segmenter. The "druid" COCO-MIG protocol needs a
    SAM-HQ directory."""
    benchmark.resize(mig_protocol)  # a known protocol
    if judge_rule not in ANSWER_RULES:
        raise ScoringError(f"--judge-rule {judge_rule}: expected one of {', '.join(ANSWER_RULES)}")
    if benchmark.needs_detector and (detector is None or segmenter is None):
        raise ScoringError(
            f"{benchmark.name} is scored with GroundingDINO and SAM: "
            "give --detector <GroundingDINO directory> and --segmenter <SAM directory>"
        )
    if not benchmark.shapes_world and (detector is None) != (segmenter is None):
        raise ScoringError(
            f"{benchmark.name}'s COCO-MIG section needs both --detector and --segmenter (or neither, "
            "to score with the judge alone)"
        )
    judge = _check_judge(benchmark, judge)
    if not benchmark.shapes_world and detector is None:
        return ScorerSpecs(None, None, judge, judge_rule)
    detector = check_scorer("detector", detector or "analytic")
    segmenter = check_scorer("segmenter", segmenter or "analytic")
    if segmenter not in SCORERS["segmenter"].analytic and mig_protocol == "druid":
        if sam_model_type(segmenter) != "sam_hq":
            raise ScoringError(
                f"--segmenter {segmenter}: the druid protocol segments with SAM-HQ, this is "
                f"{sam_model_type(segmenter)!r}"
            )
    return ScorerSpecs(detector, segmenter, judge, judge_rule)


# ----------------------------------------------------------------------------- resolved once


@dataclass(frozen=True)
class BenchmarkRun:
    """A benchmark resolved once from the command line: its selected layouts and checked scorers."""

    benchmark: Benchmark
    layouts: list[Layout]
    scorers: ScorerSpecs
    mig_protocol: str = "mig-bench"  # COCO-MIG's scoring protocol (MIG_PROTOCOLS)

    @property
    def name(self) -> str:
        return self.benchmark.name


def resolve(
    name: str,
    per_level: int | None = None,
    bench_dir: str | Path | None = None,
    limit: int | None = None,
    detector: str | None = None,
    segmenter: str | None = None,
    judge: str | None = None,
    mig_protocol: str = "mig-bench",
    judge_rule: str = DEFAULT_RULE,
) -> BenchmarkRun:
    """The benchmark ``name`` with its layouts selected (see select_layouts) and its scorers
    checked (see check_scorers), in that order, nothing loaded."""
    benchmark = get_benchmark(name)
    layouts = select_layouts(benchmark, per_level, bench_dir, limit)
    specs = check_scorers(benchmark, detector, segmenter, judge, mig_protocol, judge_rule)
    return BenchmarkRun(benchmark, layouts, specs, mig_protocol)
