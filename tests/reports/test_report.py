"""Tests for idruid.reports.figures (drawn layouts, grids, metrics JSON, the ISR plot) and idruid.reports
(`idruid report`: Tables 1-3, Figs. 5-6 and grids from hand-made run folders)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from idruid.cli import main as cli_main
from idruid.layout import Instance, Layout
from idruid.reports import ReportError, write_report
from idruid.reports.figures import (
    BOX_PALETTE,
    DARK,
    baselines,
    draw_layout,
    image_grid,
    lambda_sensitivity,
    moving_average,
    plot_isr_by_level,
    reward_curve,
    write_metrics,
)
from idruid.reports.runs import config_key, group_runs, load_runs, read_log, variant_names
from idruid.reports.tables import mean_spread_cell, table_ablation, table_mig, table_sam

GREY = (128, 128, 128)


def _image(height: int = 32, width: int = 32) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def _layout() -> Layout:
    return Layout(
        "a red apple and a blue cup",
        (Instance("a red apple", (0.0, 0.0, 0.5, 0.5)), Instance("a blue cup", (0.5, 0.5, 1.0, 1.0))),
    )


def test_draw_layout_size_and_box_colours():
    drawn = draw_layout(_image(32, 24), _layout(), scale=4, labels=False)
    assert isinstance(drawn, Image.Image) and drawn.size == (96, 128)
    pixels = np.asarray(drawn)
    # the second box's outline runs along its left edge (x = 48), with dark pixels either side
    assert tuple(pixels[100, 48]) == BOX_PALETTE[1]
    assert tuple(pixels[100, 47]) == DARK and tuple(pixels[100, 49]) == DARK
    assert tuple(pixels[30, 30]) == GREY  # the inside is untouched (nearest upscale)


def test_draw_layout_labels_add_pixels():
    plain = np.asarray(draw_layout(_image(), _layout(), labels=False))
    labelled = np.asarray(draw_layout(_image(), _layout(), labels=True))
    assert (plain != labelled).any()


def test_draw_layout_rejects_float_images():
    with pytest.raises(ValueError, match="uint8"):
        draw_layout(np.zeros((8, 8, 3)), _layout())


def test_image_grid_tiles():
    images = [_image() for _ in range(10)]
    grid = image_grid(images, [_layout()] * 10, ncols=4, scale=2)
    tile = 64
    assert grid.size == (4 * tile + 3 * 2, 3 * tile + 2 * 2)
    # one tile per image: the second box's left edge (tile x = 32) shows in 10 of 12 slots
    pixels = np.asarray(grid)
    edges = [pixels[(k // 4) * (tile + 2) + 50, (k % 4) * (tile + 2) + 32] for k in range(12)]
    assert sum(tuple(c) == BOX_PALETTE[1] for c in edges) == 10


def test_image_grid_titles_and_no_layouts():
    grid = image_grid([_image(), _image()], None, ncols=8, scale=1, titles=["a", "b"])
    assert grid.size == (2 * 32 + 2, 32 + 12)
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        image_grid([_image(), _image()], titles=["a"])


def test_write_metrics_round_trip(tmp_path):
    path = write_metrics(tmp_path / "run", "coco_mig", {"b": np.float32(0.5), "a": {"n": np.int64(3)}})
    assert path == tmp_path / "run" / "coco_mig.json"
    text = path.read_text()
    assert json.loads(text) == {"a": {"n": 3}, "b": 0.5}
    assert text.index('"a"') < text.index('"b"')


def test_plot_isr_by_level_draws_one_line_per_run(tmp_path, saved_figures):
    """Each run's ISR (%) per level, x the level numbers; "all" and "avg" are not levels."""
    metrics = {
        "base": {"L2": {"isr": 0.5}, "L3": {"isr": 0.4}, "all": {"isr": 0.45}, "avg": {"isr": 0.45}},
        "ours": {"L2": {"isr": 0.7}, "L4": {"isr": 0.6}, "all": {"isr": 0.65}, "avg": {"isr": 0.65}},
    }
    path = plot_isr_by_level(metrics, tmp_path / "plots" / "isr.png")
    assert path == tmp_path / "plots" / "isr.png" and path.is_file()
    assert list(saved_figures) == ["isr.png"]
    (axes,) = saved_figures["isr.png"].axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert set(lines) == {"base", "ours"}
    assert list(lines["base"].get_xdata()) == [2, 3] and list(lines["base"].get_ydata()) == [50.0, 40.0]
    assert list(lines["ours"].get_xdata()) == [2, 4] and list(lines["ours"].get_ydata()) == [70.0, 60.0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["L2", "L3", "L4"]
    assert axes.get_ylim() == (0.0, 100.0)


# ----------------------------------------------------------------------------- idruid report (run folders)
# Hand-made run folders: config.yaml, log.jsonl and eval folders with numbers chosen here.

SETTINGS = {"cfg": 3.0, "layout_fraction": 1.0, "layouts": 10, "shift": 1.0, "steps": 20, "processes": 1}


def _config(seed=0, use_idm=True, algorithm="none", lambda_dis=1.0, lambda_rl=1.0, threads=2):
    return {
        "model": {"use_idm": use_idm, "resolution": 32},
        "rl": {"algorithm": algorithm, "lambda_rl": lambda_rl},
        "seed": seed,
        "lambda_dis": lambda_dis,
        "threads": threads,
        "steps": 300,
    }


def _metrics(benchmark, isr, miou=0.5, leak=0.0, sam=None, levels=None, seed=0, **settings):
    """metrics.json as `idruid eval` writes it, ISR / mIoU Avg and leakage Avg given."""
    levels = levels or {}
    mig = {key: {"isr": v[0], "miou": v[1], "success_ratio": 0.0} for key, v in levels.items()}
    mig["avg"] = {"isr": isr, "miou": miou, "success_ratio": 0.0}
    mig["all"] = {"isr": isr, "miou": miou, "success_ratio": 0.0}
    metrics = {
        "mig": mig,
        "leakage": {"avg": leak, "rate": leak, "leaked": 0, "instances": 10},
        "settings": {**SETTINGS, **settings, "benchmark": benchmark, "seed": seed},
    }
    if sam is not None:
        metrics["sam"] = {"all": dict(zip(("spatial", "color", "texture", "shape"), sam, strict=True))}
    return metrics


def _run(root, name, config, evals, log=None, grid=True):
    """Write a run folder: evals maps folder name -> metrics (or -> (metrics, quality dict))."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for folder, metrics in evals.items():
        quality = None
        if isinstance(metrics, tuple):
            metrics, quality = metrics
        (run / folder).mkdir()
        (run / folder / "metrics.json").write_text(json.dumps(metrics))
        if quality is not None:
            (run / folder / "quality.json").write_text(json.dumps(quality))
        if grid:
            Image.new("RGB", (8, 8), (10, 20, 30)).save(run / folder / "grid.png")
    if log is not None:
        (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    return run


def _row(markdown: str, name: str) -> list[str]:
    """Cells of the table row whose first cell is ``name``."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r} in\n{markdown}")


def _ablation_runs(tmp_path):
    """Two seeds of IDM (ISR 50 / 60, thread counts differ) and one seed of IDM + PPO (ISR 70)."""
    sam = (0.9, 0.8, 0.7, 0.6)
    return [
        _run(
            tmp_path,
            "idm-s0",
            _config(seed=0, threads=2),
            {
                "eval-shapes-mig": _metrics("shapes-mig", 0.50, 0.40, leak=0.010),
                "eval-shapes-sam": _metrics("shapes-sam", 0.80, sam=sam),
            },
        ),
        _run(
            tmp_path,
            "idm-s1",
            _config(seed=1, threads=1),
            {
                "eval-mig": _metrics("shapes-mig", 0.60, 0.45, leak=0.030, seed=7),
                "eval-sam": _metrics("shapes-sam", 0.90, sam=(1.0, 0.9, 0.8, 0.7)),
            },
        ),
        _run(
            tmp_path,
            "ppo-s0",
            _config(algorithm="ppo"),
            {
                "eval-shapes-mig": _metrics("shapes-mig", 0.70, 0.65, leak=0.0),
            },
        ),
    ]


def test_table3_groups_seeds_with_mean_and_half_range(tmp_path):
    variants = group_runs(load_runs(_ablation_runs(tmp_path)))
    assert [v.name for v in variants] == ["IDM, no RL", "IDM, PPO"]
    assert [len(v.runs) for v in variants] == [2, 1]
    table = table_ablation(variants)
    assert table.splitlines()[0] == (
        "| Variant | seeds | shapes-mig ISR | shapes-mig mIoU | shapes-mig leak | shapes-sam ISR "
        "| Spatial | Color | Texture | Shape |"
    )
    # ISR 50 and 60 -> 55.0 ± 5.0; mIoU 40, 45 -> 42.5 ± 2.5; leak 1, 3 -> 2.00 ± 1.00;
    # shapes-sam ISR 80, 90; spatial 90, 100; colour 80, 90; texture 70, 80; shape 60, 70
    assert _row(table, "IDM, no RL") == [
        "2",
        "55.0 ± 5.0",
        "42.5 ± 2.5",
        "2.00 ± 1.00",
        "85.0 ± 5.0",
        "95.0 ± 5.0",
        "85.0 ± 5.0",
        "75.0 ± 5.0",
        "65.0 ± 5.0",
    ]
    # one seed: the value alone; no shapes-sam eval: "-"
    assert _row(table, "IDM, PPO") == ["1", "70.0", "65.0", "0.00", "-", "-", "-", "-", "-"]


def test_table3_std_spread_and_partial_cells(tmp_path):
    runs = [
        _run(tmp_path, f"s{seed}", _config(seed=seed), {"eval-shapes-mig": _metrics("shapes-mig", isr)})
        for seed, isr in enumerate((0.5, 0.6, 0.8))
    ]
    _run(tmp_path, "s3", _config(seed=3), {"eval-shapes-sam": _metrics("shapes-sam", 0.4, sam=(1, 1, 1, 1))})
    variants = group_runs(load_runs([*runs, tmp_path / "s3"]))
    # mean 63.33; sample std sqrt(((-13.33)^2 + (-3.33)^2 + 16.67^2) / 2) = sqrt(466.67 / 2) = 15.28
    table = table_ablation(variants, "std")
    cells = _row(table, "IDM, no RL")
    assert cells[:2] == ["4", "63.3 ± 15.3 (n=3)"]
    assert cells[4] == "40.0 (n=1)"
    assert mean_spread_cell([], 1) == "-"
    assert mean_spread_cell([1.0, 2.0, 4.0], 2, "half-range") == "2.33 ± 1.50"
    # values 1, 2, 4: sample std sqrt((1.78 + 0.11 + 2.78) / 2) = 1.528; / sqrt(3) = 0.882
    assert mean_spread_cell([1.0, 2.0, 4.0], 3, "sem") == "2.333 ± 0.882"


def test_table3_names_from_labels_and_config(tmp_path):
    paths = _ablation_runs(tmp_path)
    labels = {paths[0].resolve(): "I-DRUID", paths[1].resolve(): "I-DRUID"}
    runs = load_runs(paths, labels)
    assert [r.name for r in runs] == [f"I-DRUID ({paths[0]})", f"I-DRUID ({paths[1]})", "ppo-s0"]
    assert [v.name for v in group_runs(runs)] == ["I-DRUID", "IDM, PPO"]
    clash = load_runs(paths, {p.resolve(): "same" for p in paths})
    with pytest.raises(ReportError, match="name 'same' is given to runs of different variants.*rl.algorithm"):
        group_runs(clash)


def test_rl_settings_of_a_run_without_rl_make_no_variant():
    """A row-2 run (no RL) made before a preset's reward changed is a seed of today's row 2; with
    RL the reward makes another variant."""
    old = {
        "seed": 0,
        "steps": 300,
        "rl.algorithm": "none",
        "rl.reward": "iou_conf",
        "rl.reward_threshold": 0.0,
    }
    new = {**old, "seed": 1, "rl.reward": "iou_conf_color", "rl.reward_threshold": 0.25}
    assert config_key(old) == config_key(new)
    assert config_key({**old, "steps": 200}) != config_key(new)  # other settings still count
    with_rl = {**old, "rl.algorithm": "ppo"}
    assert config_key(with_rl) != config_key({**new, "rl.algorithm": "ppo"})


def test_variant_names_show_lambdas_only_where_they_vary_and_apply():
    configs = [
        {"model.use_idm": True, "rl.algorithm": "ppo", "lambda_dis": 1.0, "rl.lambda_rl": 1.0},
        {"model.use_idm": True, "rl.algorithm": "ppo", "lambda_dis": 1.0, "rl.lambda_rl": 0.5},
        {"model.use_idm": False, "rl.algorithm": "none", "lambda_dis": 0.0, "rl.lambda_rl": 1.0},
        {"model.use_idm": True, "rl.algorithm": "none", "lambda_dis": 0.5, "rl.lambda_rl": 1.0, "steps": 9},
        {"model.use_idm": True, "rl.algorithm": "none", "lambda_dis": 0.5, "rl.lambda_rl": 1.0, "steps": 7},
    ]
    assert variant_names(configs) == [
        "IDM, PPO, λ_dis=1, λ_rl=1",
        "IDM, PPO, λ_dis=1, λ_rl=0.5",
        "no IDM, no RL",
        "IDM, no RL, λ_dis=0.5 (steps=9)",
        "IDM, no RL, λ_dis=0.5 (steps=7)",
    ]


def test_seeds_evaluated_differently_are_refused(tmp_path):
    a = _run(tmp_path, "a", _config(seed=0), {"e": _metrics("shapes-mig", 0.5, cfg=3.0)})
    b = _run(tmp_path, "b", _config(seed=1), {"e": _metrics("shapes-mig", 0.6, cfg=7.5)})
    with pytest.raises(ReportError, match=r"different settings \(cfg\)"):
        group_runs(load_runs([a, b]))


def test_scorers_left_implicit_by_older_evals_read_as_analytic(tmp_path):
    """Evaluations written before `detector` / `segmenter` were recorded used the analytic ones."""
    old = _run(tmp_path, "old", _config(seed=0), {"e": _metrics("shapes-mig", 0.5)})
    new = _run(tmp_path, "new", _config(seed=1), {"e": _metrics("shapes-mig", 0.6, detector="analytic")})
    assert len(group_runs(load_runs([old, new]))) == 1
    other = _run(tmp_path, "gdino", _config(seed=2), {"e": _metrics("shapes-mig", 0.6, detector="/m/gdino")})
    with pytest.raises(ReportError, match=r"different settings \(detector\)"):
        group_runs(load_runs([old, other]))


def test_table1_cells_equal_the_metrics(tmp_path):
    levels = {
        "L2": (0.8125, 0.75),
        "L3": (0.5, 0.123456),
        "L4": (0.25, 0.0),
        "L5": (1.0, 0.999949),
        "L6": (0.0, 0.5),
    }
    coco = _metrics("coco-mig", 0.5125, 0.4734, levels=levels)
    coco["mig"]["all"] = {"isr": 0.6, "miou": 0.41, "success_ratio": 0.0}  # all instances: L6 weighs more
    run = _run(
        tmp_path,
        "r",
        _config(),
        {
            "eval-coco-mig": coco,
            "eval-shapes-sam": _metrics("shapes-sam", 0.1, sam=(0.5, 0.25, 0.125, 0.0625)),
        },
    )
    runs = load_runs([run])
    table = table_mig(runs, "coco-mig")
    assert table.splitlines()[0].startswith(
        "| Method | ISR L2 | ISR L3 | ISR L4 | ISR L5 | ISR L6 | ISR Avg | ISR All |"
    )
    assert _row(table, "r")[:14] == [
        "81.25",
        "50.00",
        "25.00",
        "100.00",
        "0.00",
        "51.25",  # Avg: the mean of the levels
        "60.00",  # All
        "75.00",
        "12.35",
        "0.00",
        "99.99",
        "50.00",
        "47.34",
        "41.00",
    ]
    assert "Avg: mean of levels (I-DRUID Table 1); All: all instances (eval_mig.py)." in table
    assert _row(table_sam(runs, "shapes-sam"), "r") == ["50.00", "25.00", "12.50", "6.25"]
    report = write_report([run], tmp_path / "out").read_text()
    table1 = report[report.index("## Table 1") : report.index("## Table 2")]
    table2 = report[report.index("## Table 2") : report.index("## Table 3")]
    assert "### coco-mig" in table1 and "shapes-sam" not in table1
    assert "### shapes-sam" in table2 and "coco-mig" not in table2


def test_table2_takes_numeric_quality_entries(tmp_path):
    quality = {"fid": 12.3456, "inception_score": 3.5, "num_images": 10, "clip_model": "tiny", "flag": True}
    a = _run(
        tmp_path,
        "a",
        _config(),
        {"eval-shapes-sam": (_metrics("shapes-sam", 0.5, sam=(1, 1, 1, 1)), quality)},
    )
    b = _run(
        tmp_path, "b", _config(seed=1), {"eval-shapes-sam": _metrics("shapes-sam", 0.5, sam=(0, 0, 0, 0))}
    )
    # `idruid quality --images EVAL/images` writes images/quality.json: found there too
    (b / "eval-shapes-sam" / "images").mkdir()
    (b / "eval-shapes-sam" / "images" / "quality.json").write_text(json.dumps({"clip_score": 25.0}))
    table = table_sam(load_runs([a, b]), "shapes-sam")
    assert table.splitlines()[0] == (
        "| Method | Spatial | Color | Texture | Shape | fid | inception_score | num_images | clip_score |"
    )
    assert _row(table, "a") == ["100.00", "100.00", "100.00", "100.00", "12.35", "3.5", "10", "-"]
    assert _row(table, "b") == ["0.00", "0.00", "0.00", "0.00", "-", "-", "-", "25"]


def test_moving_average_equals_a_naive_loop():
    values = [3.0, -1.0, 4.0, 1.5, 9.0, 2.0, 6.5]
    for window in (1, 3, 10):
        naive = []
        for i in range(len(values)):
            chunk = values[max(0, i - window + 1) : i + 1]
            naive.append(sum(chunk) / len(chunk))
        np.testing.assert_allclose(moving_average(values, window), naive, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="window"):
        moving_average(values, 0)


def test_reward_curve_from_a_hand_made_log(tmp_path):
    log = [
        {"step": 25, "l_ldm": 0.1},  # stage 1 only: no reward
        {"step": 50, "l_ldm": 0.1, "rl_reward": 2.0},
        {"step": 75, "l_ldm": 0.1, "rl_reward": 4.0},
        {"step": 75, "l_ldm": 0.1, "rl_reward": 5.0},  # resumed run logs step 75 again: later wins
        {"step": 100, "l_ldm": 0.1, "rl_reward": 8.0},
    ]
    run = _run(tmp_path, "r", _config(algorithm="ppo"), {"e": _metrics("shapes-mig", 0.5)}, log=log)
    steps, rewards = reward_curve(load_runs([run])[0])
    assert steps.tolist() == [50, 75, 100] and rewards.tolist() == [2.0, 5.0, 8.0]
    np.testing.assert_allclose(moving_average(rewards, 2), [2.0, 3.5, 6.5])


def test_lambda_sensitivity_points_and_baseline(tmp_path):
    runs = [
        _run(tmp_path, "d05", _config(lambda_dis=0.5), {"e": _metrics("shapes-mig", 0.40)}),
        _run(tmp_path, "d1s0", _config(lambda_dis=1.0), {"e": _metrics("shapes-mig", 0.50)}),
        _run(tmp_path, "d1s1", _config(lambda_dis=1.0, seed=1), {"e": _metrics("shapes-mig", 0.70)}),
        _run(tmp_path, "ppo", _config(algorithm="ppo", lambda_dis=2.0), {"e": _metrics("shapes-mig", 0.9)}),
        _run(tmp_path, "base", _config(use_idm=False, lambda_dis=0.0), {"e": _metrics("shapes-mig", 0.2)}),
    ]
    loaded = load_runs(runs)
    (line,) = lambda_sensitivity(loaded, "lambda_dis", ["shapes-mig"])  # ppo and base vary nothing
    assert line.lambdas == [0.5, 1.0] and line.label == "IDM, no RL"
    np.testing.assert_allclose(line.mean, [40.0, 60.0])
    np.testing.assert_allclose(line.spread, [0.0, 10.0])
    assert lambda_sensitivity(loaded, "rl.lambda_rl", ["shapes-mig"]) == []
    assert baselines(group_runs(loaded), ["shapes-mig"]) == {"baseline: no IDM, no RL": {"shapes-mig": 20.0}}


def _line_data(axes) -> dict[str, tuple[list, list]]:
    """label -> (x, y) of the lines drawn on ``axes`` (unlabelled ones left out)."""
    return {
        line.get_label(): ([float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()])
        for line in axes.get_lines()
        if not line.get_label().startswith("_")
    }


def test_report_writes_plots_grids_and_embeds_them(tmp_path, saved_figures):
    log = [{"step": 10 * k, "l_ldm": 0.1, "rl_reward": float(k)} for k in range(1, 6)]
    runs = [
        _run(
            tmp_path,
            "a",
            _config(lambda_dis=0.5),
            {"eval-shapes-mig": _metrics("shapes-mig", 0.4, levels={"L2": (0.5, 0.5), "L3": (0.3, 0.3)})},
        ),
        _run(
            tmp_path,
            "b",
            _config(lambda_dis=1.0, algorithm="ppo"),
            {"eval-shapes-mig": _metrics("shapes-mig", 0.6, levels={"L2": (0.7, 0.5), "L3": (0.5, 0.3)})},
            log=log,
        ),
        _run(
            tmp_path,
            "c",
            _config(lambda_dis=2.0),
            {"eval-shapes-mig": _metrics("shapes-mig", 0.5)},
            grid=False,
        ),
    ]
    out = tmp_path / "report"
    report = write_report(runs, out, window=2).read_text()
    for name in ("isr-shapes-mig.png", "lambda_dis.png", "reward.png"):
        assert (out / "plots" / name).is_file() and f"](plots/{name})" in report
    assert sorted(saved_figures) == ["isr-shapes-mig.png", "lambda_dis.png", "reward.png"]
    # Table 1 as a figure: each run's ISR (%) per level (c has no per-level numbers)
    (isr,) = saved_figures["isr-shapes-mig.png"].axes
    assert _line_data(isr) == {"a": ([2, 3], [50.0, 30.0]), "b": ([2, 3], [70.0, 50.0]), "c": ([], [])}
    # Fig. 5: a and c differ only in lambda_dis (b also in its RL stage): ISR Avg against lambda_dis
    (sensitivity,) = saved_figures["lambda_dis.png"].axes
    assert sensitivity.get_title() == "shapes-mig" and sensitivity.get_xlabel().startswith("λ_dis")
    (bars,) = sensitivity.containers
    assert bars.get_label() == "IDM, no RL"
    assert list(bars.lines[0].get_xdata()) == [0.5, 2.0] and list(bars.lines[0].get_ydata()) == [40.0, 50.0]
    # Fig. 6: b's raw reward (thin) and its moving average over 2 logs (bold, labelled)
    (reward,) = saved_figures["reward.png"].axes
    raw, smooth = reward.get_lines()
    assert list(raw.get_ydata()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert _line_data(reward) == {"b": ([10, 20, 30, 40, 50], [1.0, 1.5, 2.5, 3.5, 4.5])}
    assert smooth.get_linewidth() > raw.get_linewidth()
    assert not (out / "plots" / "rl.lambda_rl.png").exists()
    assert "No runs differ only in λ_rl" in report
    grid = out / "grids" / "00-a-shapes-mig.png"
    assert grid.read_bytes() == (runs[0] / "eval-shapes-mig" / "grid.png").read_bytes()
    assert "](grids/00-a-shapes-mig.png)" in report
    assert f"c, shapes-mig: no grid.png in {runs[2] / 'eval-shapes-mig'}" in report


def test_report_without_rl_notes_the_missing_reward_curve(tmp_path):
    run = _run(tmp_path, "a", _config(), {"e": _metrics("shapes-mig", 0.5)}, log=[{"step": 1, "l_ldm": 0.2}])
    report = write_report([run], tmp_path / "out").read_text()
    assert "No run logged an RL reward" in report
    assert not (tmp_path / "out" / "plots" / "reward.png").exists()


def test_report_errors_name_the_folder_or_line(tmp_path):
    no_config = tmp_path / "no-config"
    (no_config / "eval").mkdir(parents=True)
    with pytest.raises(ReportError, match=f"{no_config}: no config.yaml"):
        write_report([no_config], tmp_path / "out")
    no_eval = _run(tmp_path, "no-eval", _config(), {})
    with pytest.raises(ReportError, match=f"{no_eval}: no eval folder"):
        write_report([no_eval], tmp_path / "out")
    with pytest.raises(ReportError, match="no run folders given"):
        write_report([], tmp_path / "out")
    twice = _run(
        tmp_path, "twice", _config(), {"x": _metrics("shapes-mig", 0.5), "y": _metrics("shapes-mig", 0.6)}
    )
    with pytest.raises(ReportError, match=r"several eval folders score shapes-mig \(x, y\)"):
        write_report([twice], tmp_path / "out")
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\n\n{"step": 2,\n')
    with pytest.raises(ReportError, match="bad.jsonl line 3: not valid JSON"):
        read_log(tmp_path / "bad.jsonl")


def test_preferred_eval_folder_wins_and_others_are_noted(tmp_path):
    run = _run(
        tmp_path,
        "r",
        _config(),
        {
            "eval-mig": _metrics("shapes-mig", 0.5),
            "eval-mig-lf03": _metrics("shapes-mig", 0.1),
            "probe": {"mig": {}},  # no settings.benchmark: not an eval folder of the report
        },
    )
    (loaded,) = load_runs([run])
    assert loaded.evals["shapes-mig"].path.name == "eval-mig"
    assert loaded.notes == [
        "probe: metrics.json has no settings.benchmark, not used",
        "eval-mig-lf03: also scores shapes-mig, not used (eval-mig is)",
    ]


def test_cli_report(tmp_path, capsys):
    paths = _ablation_runs(tmp_path)
    out = tmp_path / "out"
    args = ["report", str(paths[0]), str(paths[1]), "--out", str(out), "--name", f"Ours={paths[2]}"]
    assert cli_main(args) == 0
    report = (out / "report.md").read_text()
    table3 = report[report.index("## Table 3") :]
    assert _row(table3, "Ours")[:2] == ["1", "70.0"]
    assert _row(table3, "IDM, no RL")[:2] == ["2", "55.0 ± 5.0"]
    assert cli_main(["report", "--out", str(out)]) == 2
    assert "give at least one run folder" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert f"{tmp_path / 'missing'}: not a folder" in capsys.readouterr().err


def test_report_spec_names_rows_by_globs_relative_to_the_spec(tmp_path, capsys):
    paths = _ablation_runs(tmp_path / "runs")
    spec = tmp_path / "table.yaml"
    spec.write_text(
        "spread: std\nrows:\n"
        '  - name: "IDM alone"\n    runs: [runs/idm-s*]\n'
        '  - name: "not run yet"\n    runs: [runs/missing-s*]\n'
        f'  - name: "with RL"\n    runs: [runs/{paths[2].name}]\n'
    )
    out = tmp_path / "out"
    assert cli_main(["report", "--spec", str(spec), "--out", str(out)]) == 0
    table3 = (out / "report.md").read_text().split("## Table 3")[1]
    std = np.std([50, 60], ddof=1)  # the spec's spread
    assert _row(table3, "IDM alone")[:2] == ["2", f"55.0 ± {std:.1f}"]
    assert _row(table3, "with RL")[:2] == ["1", "70.0"] and "not run yet" not in table3
    spec.write_text("rows:\n  - name: x\n    runs: [nothing-*]\n")
    assert cli_main(["report", "--spec", str(spec), "--out", str(out)]) == 2
    assert f"{spec}: no row's runs exist" in capsys.readouterr().err
    spec.write_text("rows:\n  - runs: [a]\n")
    assert cli_main(["report", "--spec", str(spec), "--out", str(out)]) == 2
    assert "row 1 needs a 'name'" in capsys.readouterr().err


def test_report_collect_keeps_the_summaries_and_leaves_weights_and_images(tmp_path, capsys):
    run = _ablation_runs(tmp_path / "runs")[0]
    (run / "model").mkdir()
    (run / "model" / "model.safetensors").write_bytes(b"weights")
    (run / "eval-shapes-mig" / "images").mkdir()
    (run / "eval-shapes-mig" / "images" / "0.png").write_bytes(b"png")
    (run / "eval-shapes-mig" / "audit.json").write_text("{}")
    out = tmp_path / "results"
    (out / "kept").mkdir(parents=True)
    (out / "kept" / "stale.json").write_text("{}")  # the copy replaces what was there
    assert cli_main(["report", "--collect", "--name", f"kept={run}", "--out", str(out)]) == 0
    copied = sorted(p.relative_to(out / "kept").as_posix() for p in (out / "kept").rglob("*") if p.is_file())
    expected = ["config.yaml", "eval-shapes-mig/audit.json", "eval-shapes-mig/metrics.json"]
    expected += ["eval-shapes-sam/metrics.json"]
    assert set(expected) <= set(copied)
    assert not any(word in name for name in copied for word in ("images", "model", "stale"))
    for name in copied:
        assert (out / "kept" / name).read_bytes() == (run / name).read_bytes()
    assert cli_main(["report", "--collect", str(tmp_path), "--out", str(out)]) == 2
    assert "not a run folder (no config.yaml)" in capsys.readouterr().err
