"""End to end on a tiny model: encode, predict, sample, train 2 steps, resume, save/load."""

import json

import numpy as np
import pytest
import torch

from idruid.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint
from idruid.config import ConfigError, ModelConfig, load_config
from idruid.diffusion import euler_step
from idruid.layout import Instance, Layout
from idruid.models.sd3 import SD3LayoutModel
from idruid.sampling import SamplingSettings, generate, layout_steps, sample
from idruid.train import train

TINY = ModelConfig(idm_hidden=32, network=dict(num_layers=2, num_heads=2, head_dim=32))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SD3LayoutModel(TINY).eval()


def layouts(n=3):
    out = []
    for k in range(n):
        inst = tuple(
            Instance(f"a {c} {s}", (0.1 + 0.4 * j, 0.1, 0.4 + 0.4 * j, 0.5))
            for j, (c, s) in enumerate([("red", "circle"), ("blue", "square")][: 1 + k % 2])
        )
        out.append(Layout("a photo of shapes", inst, seed=k))
    return out


def test_forward_shapes_and_contract(model):
    cond = model.encode_text(layouts())
    assert cond.caption_hidden.shape[:2] == (3, 10) and cond.valid.sum() == 4
    x = torch.randn(3, 3, 32, 32)
    v, maps = model(x, torch.tensor([0.9, 0.5, 0.1]), cond, record_attention=True)
    assert model.prediction_type == "flow" and v.shape == x.shape
    # trimmed to 2 instances
    assert len(maps) == TINY.network["num_layers"] and maps[0][0].shape == (3, 2, 2, 64)
    with pytest.raises(ValueError, match=r"expected \(B, 3, h, w\)"):
        model(torch.randn(3, 4, 32, 32), torch.rand(3), cond)


def test_padding_to_ten_does_not_change_predictions(model):
    """Trimming padded slots is an optimisation only: compare against the untrimmed branch."""
    cond = model.encode_text(layouts())
    x, sigma = torch.randn(3, 3, 32, 32), torch.tensor([0.9, 0.5, 0.1])
    for proc in model.transformer.attn_processors.values():
        torch.nn.init.normal_(proc.to_out.weight, std=0.1)
    trimmed, _ = model(x, sigma, cond)
    cond.trimmed = lambda: cond  # bypass the trimming
    full, _ = model(x, sigma, cond)
    for proc in model.transformer.attn_processors.values():
        torch.nn.init.zeros_(proc.to_out.weight)
    assert torch.allclose(trimmed, full, atol=1e-5)


def test_sampling_schedule_and_determinism(model):
    sigmas = model.process.times(10)
    assert (
        sigmas.shape == (11,)
        and sigmas[0] == 1.0
        and sigmas[-1] == 0.0
        and torch.all(sigmas[1:] < sigmas[:-1])
    )
    assert layout_steps(10, 0.3) == 3 and layout_steps(10, 0.0) == 0 and layout_steps(10, 1.0) == 10
    x = torch.ones(2, 1, 1, 1)
    assert torch.allclose(
        euler_step(torch.full_like(x, 2.0), x, torch.tensor([1.0, 0.5]), torch.tensor([0.9, 0.25])),
        torch.tensor([0.8, 0.5]).view(2, 1, 1, 1),
    )
    a = sample(model, layouts(2), SamplingSettings(steps=3, cfg=2.0))
    b = sample(model, layouts(2), SamplingSettings(steps=3, cfg=2.0))
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    images = generate(model, layouts(3), SamplingSettings(steps=2), batch_size=2, progress=False)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8


def test_two_step_training_resume_and_round_trip(tmp_path):
    config = load_config("tiny", ["steps=2", "checkpoint_every=1"])
    export = train(config, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    assert log[0]["l_dis"] is not None  # IDM on: L_dis is part of the loss
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "loss.png").is_file()
    assert len(list((tmp_path / "run" / "checkpoints").glob("step-*"))) == 2
    # resume: two more steps start from step 2
    config.steps = 4
    train(config, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    # save / load round trip gives identical predictions
    loaded = load_checkpoint(export)
    again = tmp_path / "again"
    save_checkpoint(loaded, again)
    reloaded = load_checkpoint(again)
    cond = loaded.encode_text(layouts(2))
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.7, 0.2])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, cond)[0], reloaded(x, sigma, cond)[0])
    assert read_checkpoint_meta(again)["model"]["network"]["num_layers"] == 2


def test_baseline_config_trains_without_idc(tmp_path):
    config = load_config("tiny", ["model.use_idm=false", "steps=1"])
    train(config, tmp_path, progress=False)
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert record["l_dis"] is None


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not an idruid checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "idruid.json").write_text('{"format": "other"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="format 'other'"):
        load_checkpoint(tmp_path)


def test_config_overrides_and_errors():
    config = load_config("shapes", ["steps=7", "model.use_idm=false", "lambda_dis=0.5"])
    assert config.steps == 7 and config.model.use_idm is False and config.lambda_dis == 0.5
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("shapes", ["model.nope=1"])
    with pytest.raises(ConfigError, match="no such file or preset"):
        load_config("does-not-exist")


def test_learning_rate_schedules():
    from idruid.train import lr_factor

    config = load_config("tiny", ["warmup_steps=10", "steps=110", "lr_schedule=cosine"])
    assert lr_factor(0, config) == pytest.approx(0.1) and lr_factor(9, config) == pytest.approx(1.0)
    assert lr_factor(10, config) == pytest.approx(1.0) and lr_factor(60, config) == pytest.approx(0.5)
    assert lr_factor(110, config) == pytest.approx(0.0, abs=1e-9)
    config.lr_schedule = "constant"
    assert lr_factor(100, config) == 1.0
    config.lr_schedule = "step"
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor(50, config)


def test_unknown_lr_schedule_fails_before_training(tmp_path):
    config = load_config("tiny", ["lr_schedule=step", "steps=1"])
    with pytest.raises(ValueError, match="lr_schedule 'step'"):
        train(config, tmp_path, progress=False)
    assert not (tmp_path / "log.jsonl").exists()


def test_init_from_loads_weights_and_refuses_another_config(tmp_path, model):
    from idruid.checkpoint import load_trained_weights

    save_checkpoint(model, tmp_path / "ckpt")
    fresh = SD3LayoutModel(TINY).eval()
    load_trained_weights(fresh, tmp_path / "ckpt")
    cond = model.encode_text(layouts(2))
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.5, 0.9])
    with torch.no_grad():
        assert torch.equal(fresh(x, sigma, cond)[0], model(x, sigma, cond)[0])
    other = SD3LayoutModel(ModelConfig(idm_hidden=16, network=dict(num_layers=2, num_heads=2, head_dim=32)))
    with pytest.raises(CheckpointError, match="idm_hidden: 32 vs 16"):
        load_trained_weights(other, tmp_path / "ckpt")


def test_x0_output_is_turned_into_the_velocity():
    """With model.output = "x0" the backbone predicts the clean image; the model returns
    v = (x_t - x0_hat) / max(sigma, 0.05), which is noise - x0 when x0_hat is exact."""
    from idruid.diffusion import SIGMA_FLOOR

    torch.manual_seed(0)
    net = SD3LayoutModel(
        ModelConfig(idm_hidden=32, network=dict(num_layers=2, num_heads=2, head_dim=32, output="x0"))
    )
    x0, noise = torch.rand(3, 3, 32, 32) * 2 - 1, torch.randn(3, 3, 32, 32)
    sigma = torch.tensor([0.9, 0.3, 0.01])
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    v = net._velocity(x0, x_t, sigma)
    torch.testing.assert_close(v[:2], (noise - x0)[:2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(v[2], (x_t[2] - x0[2]) / SIGMA_FLOOR)  # floored, stays finite
    cond = net.encode_text(layouts(3))
    with torch.no_grad():
        raw = net.transformer(
            hidden_states=x_t,
            encoder_hidden_states=cond.prompt_hidden,
            pooled_projections=cond.prompt_pooled,
            timestep=sigma * 1000.0,
            return_dict=False,
        )[0]
        torch.testing.assert_close(net(x_t, sigma, cond, layout_on=False)[0], net._velocity(raw, x_t, sigma))
    with pytest.raises(ValueError, match="model.network.output .eps.: expected one of velocity, x0"):
        SD3LayoutModel(ModelConfig(network=dict(num_layers=2, num_heads=2, head_dim=32, output="eps")))


@pytest.mark.parametrize("preset", ["tiny", "tiny-sd15"])
def test_a_model_cast_to_bf16_takes_float32_inputs(preset):
    """DeepSpeed's bf16 engine casts the whole model and feeds it the loader's float32 tensors:
    the model casts its inputs to its weights' dtype, and predicts what the float32 model does."""
    from idruid.models import build_model

    torch.manual_seed(0)
    full = build_model(load_config(preset).model).eval()
    for param in full.trainable_parameters():  # a trained-looking branch, not the zero residual
        torch.nn.init.normal_(param, std=0.05) if param.ndim > 1 else None
    half = build_model(load_config(preset).model).eval()
    half.load_state_dict(full.state_dict())
    half.to(torch.bfloat16)
    cond = full.encode_text(layouts(2))
    x = torch.randn(2, *full.latent_shape)
    t = full.process.times(4)[1:3]
    with torch.no_grad():
        expected, _ = full(x, t, cond)
        out, _ = half(x, t, cond)
    assert out.dtype == torch.bfloat16
    assert (out.float() - expected).abs().mean() < 0.05 * expected.abs().mean()
