"""Resumable checkpoints hold what training changes (trainable weights, optimiser, EMA, scheduler,
RNG, data position) and the base folder's config hashes, never a base folder's frozen backbone or
the text encoders; resuming from one gives the same weights as an uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny_sd3_folder

from idruid.checkpoint import CheckpointError
from idruid.config import ModelConfig, TrainConfig, load_config
from idruid.models import build_model
from idruid.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    return build_tiny_sd3_folder(tmp_path_factory.mktemp("base") / "sd3")


def sd3_config(folder, steps: int) -> TrainConfig:
    model = ModelConfig(
        backbone="sd3", base_model=str(folder), text_encoder="base", codec="vae",
        prompt_max_length=77 + 256, idm_hidden=16, geometry_rank=8,
    )  # fmt: skip
    return TrainConfig(
        model=model, steps=steps, batch_size=2, warmup_steps=1, checkpoint_every=1, log_every=1
    )


def test_a_frozen_backbone_and_its_text_encoders_stay_out_and_resume_is_exact(sd3_folder, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(sd3_config(sd3_folder, 3), straight, progress=False)
    saved = load_file(str(straight / "checkpoints" / "step-0000003" / "model.safetensors"))
    model = build_model(sd3_config(sd3_folder, 3).model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert set(saved) == set(model.trainable_state_dict()) and trainable <= set(saved)
    assert not set(saved) & frozen and not any(k.startswith("text_encoder") for k in saved)
    assert any(k.startswith("transformer.") for k in frozen)  # there was a backbone to leave out
    base = json.loads((straight / "checkpoints" / "step-0000003" / "base.json").read_text())
    assert set(base["configs"]) == {"transformer/config.json"}

    train(sd3_config(sd3_folder, 2), resumed, progress=False)
    train(sd3_config(sd3_folder, 3), resumed, progress=False)
    again = load_file(str(resumed / "checkpoints" / "step-0000003" / "model.safetensors"))
    assert all(torch.equal(again[k], saved[k]) for k in saved)


def test_resume_on_a_changed_base_folder_is_refused(sd3_folder, tmp_path):
    run = tmp_path / "run"
    train(sd3_config(sd3_folder, 1), run, progress=False)
    config_file = sd3_folder / "transformer" / "config.json"
    original = config_file.read_text()
    try:
        config_file.write_text(json.dumps({**json.loads(original), "note": "edited"}))
        with pytest.raises(CheckpointError, match="transformer/config.json differ"):
            train(sd3_config(sd3_folder, 2), run, progress=False)
    finally:
        config_file.write_text(original)


def test_the_embedded_text_encoder_stays_out_of_resumable_checkpoints(tmp_path):
    train(load_config("tiny", ["steps=1", "threads=1"]), tmp_path / "run", progress=False)
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-0000001" / "model.safetensors"))
    model = build_model(load_config("tiny").model)
    assert set(saved) == set(model.trainable_state_dict())
    assert not any(k.startswith("text_encoder") for k in saved)


def test_a_state_of_another_parameter_list_is_refused_by_name(tmp_path, monkeypatch):
    """A training state whose optimiser holds other parameters (here also the adapter's 6
    never-trained caption-token tensors, LayoutModel.unused_prefixes) cannot resume: a
    CheckpointError names the folder (exit status 2), nothing trains on a shifted optimiser."""
    from idruid.models.base import LayoutModel

    run = tmp_path / "run"
    with monkeypatch.context() as other:
        other.setattr(LayoutModel, "unused_prefixes", property(lambda self: ()))
        train(load_config("tiny", ["steps=1", "threads=1"]), run, progress=False)
    state = run / "checkpoints" / "step-0000001"
    with pytest.raises(CheckpointError, match=f"{state}: cannot resume from it .*move it away"):
        train(load_config("tiny", ["steps=2", "threads=1"]), run, progress=False)
