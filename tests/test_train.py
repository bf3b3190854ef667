"""idruid.train: a 3-step run's log (L = L_ldm + lambda_dis L_dis recomputed from its logged parts)
and exported model, and the EMA's warm-up by hand.

(Resuming, the LR schedule, ema_count and the RL log records are tested in test_model.py and
test_rl_stage.py; the paired losses themselves in test_paired.py.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from idruid.checkpoint import load_checkpoint, read_checkpoint_meta
from idruid.config import load_config
from idruid.data.shapes import ShapesPairedDataset
from idruid.stage1 import collate
from idruid.train import EMA, train

STAGE1_KEYS = {"step", "loss", "l_ldm", "l_dis", "l_rl", "lr", "steps_per_s"}


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    """The tiny preset trained 3 steps, with lambda_dis = 0.5 and a 4-step warm-up (LR factors
    1/4 -> 2/4, 3/4, 4/4 after steps 1, 2, 3)."""
    out = tmp_path_factory.mktemp("train") / "run"
    overrides = ["steps=3", "lambda_dis=0.5", "warmup_steps=4", "learning_rate=0.002", "checkpoint_every=10"]
    config = load_config("tiny", overrides)
    figures = []
    savefig = Figure.savefig
    with pytest.MonkeyPatch.context() as patch:  # keep loss.png's figure to read its lines back
        patch.setattr(Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k)))
        export = train(config, out, progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return config, out, export, log, figures[-1]


def test_a_three_step_run_logs_every_step_with_the_stage1_keys(three_steps):
    config, _, _, log, _ = three_steps
    assert [r["step"] for r in log] == [1, 2, 3]
    for record in log:
        assert set(record) == STAGE1_KEYS
        assert record["l_rl"] is None  # no RL stage
        for key in ("loss", "l_ldm", "l_dis", "steps_per_s"):
            assert math.isfinite(record[key]) and record[key] > 0
        assert 0 < record["l_dis"] < 2  # a softplus of a difference of means in [0, 1]
    # the learning rate after step s is lr * (s + 1) / warm-up
    assert [r["lr"] for r in log] == pytest.approx([0.002 * 2 / 4, 0.002 * 3 / 4, 0.002 * 4 / 4])
    assert config.lambda_dis == 0.5


def test_the_logged_loss_is_l_ldm_plus_lambda_dis_times_l_dis(three_steps):
    _, _, _, log, _ = three_steps
    for record in log:
        assert record["loss"] == pytest.approx(record["l_ldm"] + 0.5 * record["l_dis"], rel=1e-5)


def test_loss_png_plots_the_logged_losses(three_steps):
    _, out, _, log, loss_figure = three_steps
    assert (out / "loss.png").is_file()
    ldm_axes, dis_axes = loss_figure.axes[:2]
    (ldm,) = ldm_axes.get_lines()
    assert list(ldm.get_xdata()) == [1, 2, 3] and list(ldm.get_ydata()) == [r["l_ldm"] for r in log]
    dis = dis_axes.get_lines()[0]
    assert list(dis.get_ydata()) == [r["l_dis"] for r in log]


def test_the_run_exports_a_loadable_model_with_its_settings(three_steps):
    config, out, export, _, _ = three_steps
    assert export == out / "model"
    meta = read_checkpoint_meta(export)
    assert meta["train_steps"] == 3 and meta["sampling"] == config.sampling_settings().to_dict()
    model = load_checkpoint(export)
    assert model.latent_shape == (3, 32, 32)
    batch = collate([ShapesPairedDataset(size=2, seed=0, resolution=32)[k] for k in range(2)])
    cond = model.encode_text(batch["layouts"])
    with torch.no_grad():
        prediction, _ = model(torch.randn(2, 3, 32, 32), torch.tensor([0.8, 0.3]), cond)
    assert prediction.shape == (2, 3, 32, 32) and torch.isfinite(prediction).all()
    (checkpoint,) = (out / "checkpoints").iterdir()  # checkpoint_every=10: the last step only
    assert checkpoint.name.startswith("step-") and int(checkpoint.name[5:]) == 3


def test_ema_warm_up_by_hand():
    """decay = min(decay, (1 + n) / (10 + n)) at count n: 0.1 at n = 0, 2/11 at n = 1, then the
    configured 0.5 once (1 + n) / (10 + n) exceeds it (n = 20: 21/30)."""
    weight = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([weight], decay=0.5)
    expected = 0.0
    for count, value in ((0, 1.0), (1, 3.0), (20, 3.0), (21, -1.0)):
        with torch.no_grad():
            weight.fill_(value)
        ema.update(count)
        decay = min(0.5, (1 + count) / (10 + count))
        expected = decay * expected + (1 - decay) * value
        torch.testing.assert_close(ema.shadow[0], torch.full((2,), expected))
    assert expected == pytest.approx(((0.9 * 2 / 11 + 9 / 11 * 3) * 0.5 + 1.5) * 0.5 - 0.5)
    # the shadow goes into the exported weights; a saved EMA restores into a fresh one
    target = torch.nn.Parameter(torch.zeros(2))
    ema.copy_to([target])
    torch.testing.assert_close(target.detach(), ema.shadow[0])
    fresh = EMA([torch.nn.Parameter(torch.zeros(2))], decay=0.9)
    fresh.load_state_dict(ema.state_dict())
    assert fresh.decay == 0.5
    np.testing.assert_allclose(fresh.shadow[0].numpy(), ema.shadow[0].numpy())
