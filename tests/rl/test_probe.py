"""The held-out reward, ``idruid rl-probe`` and the report's probe table."""

import json

import numpy as np
import pytest
import torch

from idruid.cli import main
from idruid.config import load_config
from idruid.data.shapes import prompt_only_layout
from idruid.metrics.checks import leak_counts
from idruid.models.sd3 import SD3LayoutModel
from idruid.reports import write_report
from idruid.rl.held_out import HELD_OUT_START, HeldOutReward, held_out_sets
from idruid.rl.probe import signal_fraction
from idruid.rl.rewards import LayoutReward
from idruid.sampling import sample, to_uint8
from idruid.scorers.registry import load_scorer
from idruid.train import train

PROBE = ["rl.algorithm=ppo", "rl.sampling_steps=3", "rl.batch_size=4", "rl.group_size=2"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return train(load_config("tiny", ["steps=1"]), tmp_path_factory.mktemp("run"), progress=False)


def test_held_out_reward_is_the_mean_reward_of_fixed_layouts_and_noise():
    """The same weights give the same value whatever the global RNG does, and the value is the
    detector's reward of the ODE samples of the layouts from index HELD_OUT_START on."""
    config = load_config("tiny", PROBE)
    torch.manual_seed(0)
    model = SD3LayoutModel(config.model).eval()
    reward = LayoutReward(load_scorer("detector", "analytic"), "iou_conf")
    held_out = HeldOutReward(config, reward, 3, model.latent_shape, seed=5)
    torch.manual_seed(123)
    first = held_out(model, batch_size=2)
    torch.randn(100)
    assert held_out(model, batch_size=3) == pytest.approx(first, abs=1e-6)
    layouts = [prompt_only_layout(HELD_OUT_START + k, config.rl.prompt_seed, resolution=32) for k in range(3)]
    assert held_out.layouts == layouts
    noise = torch.randn((3, *model.latent_shape), generator=torch.Generator().manual_seed(5))
    images = sample(
        model, layouts, config.sampling_settings().override(steps=3, cfg=config.rl.cfg), x_init=noise
    )
    assert first == pytest.approx(float(reward(to_uint8(images), layouts).mean()), abs=1e-5)
    counts = np.array(leak_counts(to_uint8(images), layouts))
    measured = held_out.measure(model, batch_size=2)
    assert measured["reward"] == pytest.approx(first, abs=1e-6)
    assert measured["leakage"] == pytest.approx(counts[:, 0].sum() / counts[:, 1].sum())


def test_held_out_sets_of_the_prompts_geometry_and_the_off_geometry():
    config = load_config("tiny", PROBE)
    model = SD3LayoutModel(config.model).eval()
    reward = LayoutReward(load_scorer("detector", "analytic"), "iou_conf")
    sets = held_out_sets(config, reward, 3, model.latent_shape)
    assert list(sets) == ["held_out", "held_out_off"]
    for name, geometry in (("held_out", "coco"), ("held_out_off", "strips")):
        expected = [
            prompt_only_layout(HELD_OUT_START + k, 1, resolution=32, geometry=geometry) for k in range(3)
        ]
        assert sets[name].layouts == expected and sets[name].geometry == geometry
    assert sets["held_out"].layouts != sets["held_out_off"].layouts
    only = held_out_sets(load_config("tiny", [*PROBE, "rl.held_out_off=none"]), reward, 3, model.latent_shape)
    assert list(only) == ["held_out"]


def test_rl_probe_command_and_its_report(tmp_path, tiny_checkpoint, capsys, saved_figures):
    out = tmp_path / "probe"
    args = ["rl-probe", "--checkpoint", str(tiny_checkpoint), "--config", "tiny", "--out", str(out)]
    args += ["--iterations", "2", "--every", "1", "--held-out", "2", "--threads", "1", *PROBE]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert all(np.isfinite(r["held_out_reward"]) and np.isfinite(r["held_out_off_reward"]) for r in records)
    assert records[1]["rl_age"] == 0 and records[1]["rl_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert (out / "probe.png").is_file() and json.loads((out / "probe.json").read_text())["iterations"] == 2
    # probe.png: the held-out reward of every record, and the rollouts' mean reward where logged
    (axes,) = saved_figures["probe.png"].axes
    held_out_line, off_line, *rollout_lines = axes.get_lines()
    assert list(held_out_line.get_xdata()) == [0, 1, 2]
    np.testing.assert_allclose(held_out_line.get_ydata(), [r["held_out_reward"] for r in records])
    np.testing.assert_allclose(off_line.get_ydata(), [r["held_out_off_reward"] for r in records])
    rollouts = [(r["iteration"], r["rl_reward"]) for r in records if r.get("rl_reward") is not None]
    assert rollouts and [r["iteration"] for r in records[1:]] == [i for i, _ in rollouts]
    (rollout_line,) = rollout_lines
    assert list(rollout_line.get_xdata()) == [i for i, _ in rollouts]
    np.testing.assert_allclose(rollout_line.get_ydata(), [v for _, v in rollouts])
    assert "iteration 2: held-out reward" in capsys.readouterr().out

    report = write_report([out], tmp_path / "report", {out: "default"}).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| default"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    expected = [f"{r['held_out_reward']:.3f}" for r in records]
    assert cells[1:4] == expected
    assert cells[4] == f"{records[-1]['held_out_reward'] - records[0]['held_out_reward']:+.3f}"
    assert cells[5] == f"{records[-1]['held_out_off_reward'] - records[0]['held_out_off_reward']:+.3f}"
    leak = records[0]["held_out_leakage"], records[-1]["held_out_leakage"]
    assert cells[6] == f"{100 * leak[0]:.2f} -> {100 * leak[1]:.2f}"
    # the report's probe figure: one line per probe, named as the report names it
    (axes,) = saved_figures["rl-probes.png"].axes
    (line,) = axes.get_lines()
    assert line.get_label() == "default" and list(line.get_xdata()) == [0, 1, 2]
    np.testing.assert_allclose(line.get_ydata(), [r["held_out_reward"] for r in records])


def test_signal_fraction_is_the_mean_cross_product_over_the_mean_square():
    """Against a naive loop over the distinct pairs, and hand-worked extremes."""
    torch.manual_seed(0)
    grads = torch.randn(5, 7) + torch.tensor([1.0, -2.0, 0, 0, 0, 0, 0.5])
    pairs = [float(grads[i] @ grads[j]) for i in range(5) for j in range(5) if i != j]
    naive = np.mean(pairs) / np.mean([float(g @ g) for g in grads])
    assert signal_fraction(grads) == pytest.approx(naive, rel=1e-6)
    same = torch.tensor([[3.0, 4.0]] * 4)
    assert signal_fraction(same) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # <g1, g2> = -1, |g|^2 = 1
    assert signal_fraction(opposite) == pytest.approx(-1.0)
    noise = torch.randn(400, 50)  # zero mean: about 0, with SE sqrt(2) / (K sqrt(P)) = 5e-4
    assert abs(signal_fraction(noise)) < 0.01
    with pytest.raises(ValueError, match="at least two"):
        signal_fraction(grads[:1])


def test_rl_probe_direction_mode_measures_slopes_and_leaves_the_weights(tmp_path, tiny_checkpoint, capsys):
    """``rl-probe --direction``: K gradients, the held-out reward moved both ways along their mean
    and a random direction; the model is measured at its own weights before and after the moves."""
    from idruid.checkpoint import load_checkpoint
    from idruid.rl.direction import run_direction_check

    out = tmp_path / "direction"
    args = ["rl-probe", "--direction", "--checkpoint", str(tiny_checkpoint), "--config", "tiny"]
    args += ["--out", str(out), "--gradients", "2", "--sizes", "1,30", "--held-out", "2", "--threads", "1"]
    args += PROBE
    assert main(args) == 0
    result = json.loads((out / "direction.json").read_text())
    assert (out / "config.yaml").is_file() and result["gradients"] == 2 and len(result["gradient_norms"]) == 2
    for direction in ("along_mean_gradient", "along_random_direction"):
        assert set(result[direction]) == {"1.0", "30.0"}
        for move in result[direction].values():
            assert move["slope"] == pytest.approx((move["plus"] - move["minus"]) / 2)
    assert result["along_mean_gradient"]["30.0"]["plus"] != result["along_mean_gradient"]["30.0"]["minus"]
    assert np.isfinite(result["signal_fraction"]) and result["signal_fraction"] <= 1.0 + 1e-9
    # the moves put the weights back: measuring again at the checkpoint's weights gives the same reward
    config = load_config("tiny", ["seed=0", *PROBE])
    model = load_checkpoint(str(tiny_checkpoint))
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    again = run_direction_check(config, model, tmp_path / "again", 2, 1e-4, [30.0], 2, 0)
    assert all(torch.equal(before[k], v) for k, v in model.trainable_state_dict().items())
    assert again["held_out_reward"] == pytest.approx(result["held_out_reward"], abs=1e-6)
    assert main([*args[:2], "--sizes", "big", "--checkpoint", str(tiny_checkpoint), "--config", "tiny"]) == 2
    assert "--sizes 'big'" in capsys.readouterr().err


def test_rl_probe_opens_the_authors_checkpoint_through_the_one_loader(tmp_path):
    """``--checkpoint`` takes any format ``idruid.loader.open_model`` opens: here the authors'
    folder on an SD3 folder (``--base``), with 10 rollout steps so that the RL window has steps
    with their layout branch on (their floor rounding gives it 3 of 10)."""
    from tiny_models import build_tiny_druid_folder, build_tiny_sd3_folder

    druid, base = build_tiny_druid_folder(tmp_path / "druid"), build_tiny_sd3_folder(tmp_path / "sd3")
    out = tmp_path / "probe"
    args = ["rl-probe", "--checkpoint", str(druid), "--base", str(base), "--config", "tiny"]
    args += ["--out", str(out)]
    args += ["--iterations", "1", "--held-out", "2", "--threads", "1", "--lr", "1e-2"]
    args += ["rl.algorithm=ppo", "rl.sampling_steps=10", "rl.batch_size=2", "rl.group_size=2"]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1]
    assert records[1]["rl_ratio"] == pytest.approx(1.0, abs=1e-4)
    no_base = [*args[:3], *args[5:7], "--out", str(tmp_path / "no-base"), *args[9:]]
    assert main(no_base) == 2  # their folder needs its SD3 folder
