"""SamplingSettings: the one home of the sampling defaults (idruid.config)."""

import dataclasses

import pytest

from idruid.checkpoint import EMBEDDED_CHECKPOINT, checkpoint_sampling, read_checkpoint_meta
from idruid.config import SamplingSettings, TrainConfig, load_config


def test_defaults_round_trip_and_overrides():
    settings = SamplingSettings()
    assert settings.to_dict() == {
        "steps": 20, "cfg": 3.0, "layout_fraction": 0.3, "shift": 1.0, "guidance": None,
    }  # fmt: skip
    assert SamplingSettings.from_dict(settings.to_dict()) == settings
    assert SamplingSettings.from_dict(None) == settings == SamplingSettings.from_dict({})
    # a newer checkpoint may store more: unknown keys are ignored
    assert SamplingSettings.from_dict({"steps": 7, "sampler": "heun"}) == SamplingSettings(steps=7)
    # None keeps (a flag left out), a value replaces
    assert settings.override(steps=None, cfg=5.0) == SamplingSettings(cfg=5.0)
    with pytest.raises(TypeError, match="unknown sampling settings: seed"):
        settings.override(seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.steps = 3


def test_train_config_and_checkpoints_read_the_same_settings():
    assert TrainConfig().sampling_settings() == SamplingSettings()
    config = load_config("sd3-medium")
    assert config.sampling_settings() == SamplingSettings(steps=28, cfg=7.5, layout_fraction=0.3, shift=3.0)
    saved = read_checkpoint_meta(EMBEDDED_CHECKPOINT)["sampling"]
    assert checkpoint_sampling() == SamplingSettings.from_dict(saved)
    # the embedded model predates the distilled guidance setting (None: a network without one)
    assert checkpoint_sampling().to_dict() == {**saved, "guidance": None}
    # FLUX.1-dev: its distilled guidance in one row, no two-row CFG
    flux = load_config("flux-dev").sampling_settings()
    assert flux == SamplingSettings(steps=28, cfg=1.0, layout_fraction=0.3, guidance=3.5)
