"""idruid.eval_benchmarks: the registry of benchmarks, what each is scored by, and resolving once."""

import pytest

from idruid.eval_benchmarks import (
    BENCHMARKS,
    MIG_PROTOCOLS,
    BenchmarkRun,
    ScorerSpecs,
    ScoringError,
    check_scorers,
    get_benchmark,
    resolve,
    select_layouts,
)


def test_the_registry_holds_every_benchmark_in_command_line_order():
    shapes = ("shapes-mig", "shapes-sam", "shapes-mig-narrow", "shapes-sam-narrow", "shapes-strips")
    assert tuple(BENCHMARKS) == (*shapes, "coco-mig", "layoutsam-eval")
    assert all(BENCHMARKS[name].shapes_world for name in shapes)
    assert all(name == benchmark.name for name, benchmark in BENCHMARKS.items())
    with pytest.raises(ScoringError, match="benchmark 'layoutsam': unknown"):
        get_benchmark("layoutsam")


def test_resize_and_query_style_per_benchmark():
    coco = BENCHMARKS["coco-mig"]
    assert coco.resize() == MIG_PROTOCOLS["mig-bench"] == 512 and coco.resize("druid") is None
    assert coco.separate_queries and BENCHMARKS["layoutsam-eval"].separate_queries  # GroundingDINO
    for name in ("shapes-mig", "shapes-sam", "layoutsam-eval"):
        assert BENCHMARKS[name].resize() is None
    assert not BENCHMARKS["shapes-mig"].separate_queries
    with pytest.raises(ScoringError, match="--mig-protocol paper"):
        BENCHMARKS["shapes-sam"].resize("paper")  # checked for every benchmark


def test_default_scorers():
    assert check_scorers(BENCHMARKS["shapes-sam"]) == ScorerSpecs("analytic", "analytic", "analytic")
    with pytest.raises(ScoringError, match="coco-mig is scored with GroundingDINO and SAM"):
        check_scorers(BENCHMARKS["coco-mig"])
    with pytest.raises(ScoringError, match="layoutsam-eval is scored by a vision-language model"):
        check_scorers(BENCHMARKS["layoutsam-eval"])
    with pytest.raises(
        ScoringError, match="--judge analytic: the analytic judge reads only the shapes world"
    ):
        check_scorers(BENCHMARKS["coco-mig"], "analytic", "analytic", "analytic")
    assert check_scorers(BENCHMARKS["coco-mig"], "analytic", "analytic") == ScorerSpecs(
        "analytic", "analytic", None
    )


def test_the_judge_rule_defaults_to_the_scripts_and_is_checked():
    assert check_scorers(BENCHMARKS["shapes-sam"]).judge_rule == "generate"
    assert check_scorers(BENCHMARKS["shapes-sam"], judge_rule="logits").judge_rule == "logits"
    with pytest.raises(ScoringError, match="--judge-rule vote: expected one of generate, logits"):
        check_scorers(BENCHMARKS["shapes-sam"], judge_rule="vote")


def test_layouts_need_their_folder_and_are_selected_in_index_order():
    with pytest.raises(ScoringError, match="coco-mig needs --bench-dir"):
        select_layouts(BENCHMARKS["coco-mig"])
    picked = select_layouts(BENCHMARKS["shapes-mig"], per_level=2, limit=3)
    assert [layout.meta["index"] for layout in picked] == [0, 1, 160]


def test_resolve_selects_and_checks_once():
    run = resolve("shapes-mig", per_level=1, judge="analytic")
    assert (
        isinstance(run, BenchmarkRun)
        and run.name == "shapes-mig"
        and run.benchmark is BENCHMARKS["shapes-mig"]
    )
    assert [layout.meta["index"] for layout in run.layouts] == [0, 160, 320, 480, 640]
    assert run.scorers == ScorerSpecs("analytic", "analytic", "analytic") and run.mig_protocol == "mig-bench"
    with pytest.raises(ScoringError, match="--limit must be at least 1"):  # layouts are checked first
        resolve("coco-mig", limit=0)
