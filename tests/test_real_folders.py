"""Real SD3 and SD1.5 diffusers folders (tiny random weights in exactly their layouts) load through
the user-facing config: backbone, text encoders, VAE and noise schedule from the folder; sampling
decodes latents with the VAE; training encodes images with it; checkpoints hold idruid's weights."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import build_tiny_sd3_folder, build_tiny_sd15_folder

from idruid.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from idruid.config import ConfigError, ModelConfig, TrainConfig
from idruid.diffusion import EpsProcess, FlowProcess
from idruid.layout import Instance, Layout
from idruid.models import build_model
from idruid.models.sd3_text import SD3TextEncoder
from idruid.models.vae import VaeCodec
from idruid.sampling import SamplingSettings, sample
from idruid.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

SCENES = [
    Layout("a red circle and a blue square", (
        Instance("a red circle", (0.05, 0.1, 0.45, 0.5)),
        Instance("a blue square", (0.5, 0.5, 0.95, 0.9)),
    )),
    Layout("a green triangle", (Instance("a green triangle", (0.2, 0.2, 0.8, 0.7)),)),
]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {"sd3": build_tiny_sd3_folder(root / "sd3"), "sd15": build_tiny_sd15_folder(root / "sd15")}


def config_for(backbone: str, folder: Path, **extra) -> ModelConfig:
    """What a user writes for a real folder: the backbone, its folder for weights, text and VAE."""
    length = {"sd3": 77 + 256, "sd15": 77}[backbone]
    return ModelConfig(
        backbone=backbone, base_model=str(folder), text_encoder="base", codec="vae",
        prompt_max_length=length, idm_hidden=16, geometry_rank=8, **extra,
    )  # fmt: skip


@pytest.mark.parametrize("backbone", ["sd3", "sd15"])
def test_folder_loads_every_component(folders, backbone):
    torch.manual_seed(0)
    model = build_model(config_for(backbone, folders[backbone]))
    assert isinstance(model.codec, VaeCodec)
    assert model.latent_shape == ((16, 16, 16) if backbone == "sd3" else (4, 16, 16))
    assert isinstance(model.process, FlowProcess if backbone == "sd3" else EpsProcess)
    if backbone == "sd3":
        assert isinstance(model.text_encoder, SD3TextEncoder) and model.text_encoder.hidden_size == 96
    # the backbone's own weights are frozen; idruid trains the adapter and the IDM processors
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("adapter.") or ".processor." in n for n in trainable)
    # sampling denoises VAE latents and decodes them: images at the config's resolution
    images = sample(model, SCENES, SamplingSettings(steps=2, cfg=2.0, layout_fraction=1.0))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert images.abs().max() <= 1.0


@pytest.mark.parametrize("backbone", ["sd3", "sd15"])
def test_training_on_a_folder_and_its_checkpoint(folders, backbone, tmp_path):
    config = TrainConfig(model=config_for(backbone, folders[backbone]), steps=2, batch_size=2, warmup_steps=1,
                         checkpoint_every=1, log_every=1)  # fmt: skip
    if backbone == "sd15":
        config.time_sampling = "uniform"
    export = train(config, tmp_path / "run", progress=False)
    loaded = load_checkpoint(export)
    keys = set(loaded.trainable_state_dict())
    assert not any(k.startswith(("codec.", "text_encoder.")) for k in keys)
    backbone_attr = loaded.backbone_attr + "."
    assert all(".processor." in k for k in keys if k.startswith(backbone_attr))  # no base weights saved
    x = torch.randn(2, *loaded.latent_shape)
    t = torch.tensor([0.7, 0.2]) if backbone == "sd3" else torch.tensor([700.0, 200.0])
    cond = loaded.encode_text(SCENES)
    with torch.no_grad():
        again = load_checkpoint(save_checkpoint(loaded, tmp_path / "again"))
        assert torch.equal(loaded(x, t, cond)[0], again(x, t, cond)[0])


def test_sd15_checkpoint_refuses_another_noise_schedule(folders, tmp_path):
    import json
    import shutil

    model = build_model(config_for("sd15", folders["sd15"]))
    save_checkpoint(model, tmp_path / "ckpt")
    moved = tmp_path / "other"
    shutil.copytree(folders["sd15"], moved)
    scheduler = moved / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler.read_text())
    scheduler.write_text(json.dumps({**config, "beta_end": 0.02}))
    with pytest.raises(CheckpointError, match="beta_end: 0.012 recorded vs 0.02 found"):
        load_checkpoint(tmp_path / "ckpt", base_model=moved)


def test_sd15_lora_round_trip(folders, tmp_path):
    pytest.importorskip("peft")
    torch.manual_seed(0)
    model = build_model(config_for("sd15", folders["sd15"], lora_rank=2))
    lora = [n for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and all(n.startswith("unet.") and ".processor." not in n for n in lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    x, t, cond = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 50.0]), model.encode_text(SCENES)
    with torch.no_grad():
        ours, theirs = model(x, t, cond)[0], loaded(x, t, cond)[0]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)


def test_folder_settings_that_cannot_work_are_refused(folders):
    with pytest.raises(ConfigError, match="model.codec=vae loads the VAE of model.base_model"):
        build_model(ModelConfig(codec="vae"))
    with pytest.raises(ConfigError, match="model.text_encoder=base"):
        build_model(ModelConfig(text_encoder="base"))
    with pytest.raises(ConfigError, match="takes 16 input channels but model.codec 'pixels' gives 3"):
        build_model(ModelConfig(base_model=str(folders["sd3"]), text_encoder="base", prompt_max_length=333))
    # a folder of another pipeline is refused before anything loads, naming what reads it
    other = "is a StableDiffusion3Pipeline folder, not the StableDiffusionPipeline folder the sd15 backbone"
    presets = "sd3-medium or sd35-medium or sd35-large or sd3-druid"
    with pytest.raises(ConfigError, match=f"{other} reads; use the {presets} preset"):
        build_model(config_for("sd15", folders["sd3"]))
    with pytest.raises(ConfigError, match="use the sd15 preset \\(model.backbone=sd15\\)"):
        build_model(config_for("sd3", folders["sd15"]))


def test_a_folder_of_a_pipeline_no_backbone_reads_is_named(folders, tmp_path):
    """What a FLUX.1 folder given to the sd3-medium preset did before the flux backbone (its
    refusal naming the flux presets: tests/models/test_flux.py): diffusers failed deep inside with
    a shape mismatch; the model_index.json names the pipeline first."""
    from idruid.config import load_config

    other = tmp_path / "other"
    shutil.copytree(folders["sd3"], other)
    (other / "model_index.json").write_text('{"_class_name": "KandinskyV22Pipeline"}')
    config = load_config("sd3-medium", [f"model.base_model={other}", "model.resolution=32"])
    named = f"'{other}' is a KandinskyV22Pipeline folder, .*; no registered backbone reads it"
    with pytest.raises(ConfigError, match=named):
        build_model(config.model)


@pytest.mark.parametrize(("preset", "backbone"), [("sd3-medium", "sd3"), ("sd15", "sd15")])
def test_real_weight_presets_build_on_a_folder_and_name_what_they_need(folders, preset, backbone):
    from idruid.config import load_config

    config = load_config(preset, [f"model.base_model={folders[backbone]}", "model.resolution=32"])
    model = build_model(config.model)
    assert model.prediction_type == ("flow" if backbone == "sd3" else "eps")
    assert model.text_encoder.max_length == config.model.prompt_max_length  # the whole prompt is kept
    with pytest.raises(ConfigError, match="rl.prompts is not set"):
        config.rl.check()
    config.rl.prompts = "shapes"
    with pytest.raises(ConfigError, match="rl.detector is not set"):
        config.rl.check()
