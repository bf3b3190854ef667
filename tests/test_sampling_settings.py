"""SamplingSettings: the one home of the sampling defaults (idruid.config)."""

import dataclasses

import pytest

from idruid.checkpoint import EMBEDDED_CHECKPOINT, checkpoint_sampling, read_checkpoint_meta
from idruid.config import SamplingSettings, TrainConfig, load_config


def test_defaults_round_trip_and_overrides():
    settings = SamplingSettings()
    assert settings.to_dict() == {
        "steps": 20, "cfg": 3.0, "layout_fraction": 0.3, "shift": 1.0, "guidance": None,
        "skip_layers": None, "skip_layer_scale": 2.8, "skip_layer_start": 0.01, "skip_layer_stop": 0.2,
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
    # the embedded model predates the distilled and skip-layer guidance settings (None: off)
    later = {k: v for k, v in SamplingSettings().to_dict().items() if k.startswith(("guidance", "skip_"))}
    assert checkpoint_sampling().to_dict() == {**saved, **later}
    # FLUX.1-dev: its distilled guidance in one row, no two-row CFG
    flux = load_config("flux-dev").sampling_settings()
    assert flux == SamplingSettings(steps=28, cfg=1.0, layout_fraction=0.3, guidance=3.5)


def test_skip_layers_from_json_and_flags_reach_the_sampler(tmp_path):
    """skip_layers read back from a checkpoint's JSON (a list) is the tuple given; ``idruid
    generate --skip-layers 1 --skip-layer-scale 3 --skip-layer-stop 0.5`` samples what
    idruid.sampling.sample does with those settings, and not what it does without them."""
    import json

    import numpy as np
    from PIL import Image

    from idruid.checkpoint import load_checkpoint
    from idruid.cli import main
    from idruid.layout import Instance, Layout, save_layouts
    from idruid.sampling import generate

    settings = SamplingSettings(skip_layers=(1, 2))
    assert SamplingSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    layout = Layout("a red circle", (Instance("a red circle", (0.1, 0.2, 0.6, 0.7)),), seed=3)
    save_layouts([layout], tmp_path / "layout.json")
    flags = ["--skip-layers", "1", "--skip-layer-scale", "3", "--skip-layer-stop", "0.5", "--steps", "8"]
    assert main(["generate", str(tmp_path / "layout.json"), "--out", str(tmp_path / "a.png"), *flags]) == 0
    written = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    base = checkpoint_sampling().override(steps=8)
    with_skip = base.override(skip_layers=(1,), skip_layer_scale=3.0, skip_layer_stop=0.5)
    model = load_checkpoint(EMBEDDED_CHECKPOINT)
    expected, plain = (generate(model, [layout], s, progress=False)[0] for s in (with_skip, base))
    np.testing.assert_array_equal(written, expected)
    assert np.abs(expected.astype(int) - plain.astype(int)).max() > 0
