"""``key=value`` overrides are read as the type of the setting they set, not as YAML: a word a
string setting takes stays a string (``mixed_precision=no`` was YAML's False and failed later
in accelerate), and a value the type cannot take is refused at once, naming the key."""

import re

import pytest

from idruid.config import ConfigError, TrainConfig, apply_override, load_config, parse_setting


def test_mixed_precision_no_stays_the_string():
    config = load_config("tiny", ["mixed_precision=no"])
    assert config.mixed_precision == "no"
    assert load_config("tiny", ["mixed_precision=bf16"]).mixed_precision == "bf16"


@pytest.mark.parametrize("word", ["no", "off", "yes", "on", "none", "null", "1e-4", "True"])
def test_a_string_setting_keeps_every_word(word):
    config = TrainConfig()
    apply_override(config, f"lr_schedule={word}")
    assert config.lr_schedule == word


def test_choices_named_none_stay_strings():
    config = load_config("tiny", ["rl.algorithm=none", "rl.advantage_std=none", "rl.held_out_off=none"])
    assert (config.rl.algorithm, config.rl.advantage_std, config.rl.held_out_off) == ("none",) * 3
    config.rl.check()


def test_numbers_and_booleans_by_type():
    config = load_config(
        "tiny",
        ["steps=1_000", "learning_rate=1e-4", "lambda_dis=1", "model.use_idm=off", "rl.detach_uncond=YES"],
    )
    assert config.steps == 1000 and isinstance(config.steps, int)
    assert config.learning_rate == 1e-4  # YAML read 1e-4 as the string "1e-4"
    assert config.lambda_dis == 1.0 and isinstance(config.lambda_dis, float)
    assert config.model.use_idm is False and config.rl.detach_uncond is True


def test_settings_that_may_be_none():
    config = load_config(
        "tiny",
        ["rl.segmenter=null", "rl.detector=None", "init_from=", "model.lora_alpha=none", "rl.prompts='none'"],
    )
    assert config.rl.segmenter is None and config.rl.detector is None and config.init_from is None
    assert config.model.lora_alpha is None
    assert config.rl.prompts == "none"  # quoted: the string
    apply_override(config, "model.lora_alpha=8")
    assert config.model.lora_alpha == 8.0 and isinstance(config.model.lora_alpha, float)
    apply_override(config, "model.base_model=/models/sd3")
    assert config.model.base_model == "/models/sd3"


def test_lists_read_item_by_item():
    config = TrainConfig()
    apply_override(config, "model.lora_targets=to_q,to_out.0,no")
    assert config.model.lora_targets == ["to_q", "to_out.0", "no"]
    apply_override(config, "model.lora_targets=[]")
    assert config.model.lora_targets == []
    apply_override(config, "model.lora_targets=null")
    assert config.model.lora_targets is None


@pytest.mark.parametrize(
    "item, message",
    [
        ("steps=2.5", "override 'steps=2.5': steps takes an integer, got '2.5'"),
        ("rl.batch_size=many", "rl.batch_size takes an integer, got 'many'"),
        ("learning_rate=fast", "learning_rate takes a number, got 'fast'"),
        ("model.use_idm=maybe", "model.use_idm takes true or false"),
        ("model.lora_alpha=big", "model.lora_alpha takes a number"),
        ("rl=ppo", "rl is a section"),
        ("steps=", "steps takes an integer, got ''"),
    ],
)
def test_a_bad_value_names_the_key(item, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", [item])


def test_renamed_keys_are_read_by_their_new_type():
    config = TrainConfig()
    with pytest.warns(DeprecationWarning):
        apply_override(config, "rl.steps=4")
    assert config.rl.sampling_steps == 4
    refused = pytest.raises(ConfigError, match=r"rl\.sampling_steps takes an integer")
    with pytest.warns(DeprecationWarning), refused:
        apply_override(config, "rl.steps=four")
    with pytest.warns(DeprecationWarning):
        apply_override(config, "sigma_sampling=uniform")
    assert config.time_sampling == "uniform"


def test_parse_setting_alone():
    assert parse_setting(str, ' "quoted" ', "x") == "quoted"
    assert parse_setting(float | None, "2", "x") == 2.0
    assert parse_setting(list[int], "1,2", "x") == [1, 2]


def test_a_backbone_setting_is_read_by_the_type_its_backbone_declares():
    """``model.network.KEY=VALUE`` keeps the text until the backbone (known only once the config is
    complete) reads it by its setting's type; the deprecated flat key lands in the same place."""
    from idruid.models.registry import resolve_network

    config = TrainConfig()
    config.model.backbone = "sd15"
    apply_override(config, "model.network.unet_channels=[16, 32, 64]")
    deprecated = "'model.num_heads' is deprecated, read as 'model.network.num_heads'"
    with pytest.warns(DeprecationWarning, match=deprecated):
        apply_override(config, "model.num_heads=2")
    assert config.model.network == {"unet_channels": "[16, 32, 64]", "num_heads": "2"}
    settings = resolve_network(config.model)
    resolved = {"unet_channels": [16, 32, 64], "unet_layers_per_block": 1, "num_heads": 2}
    assert settings.__dict__ == resolved and config.model.network == resolved
    apply_override(config, "model.network.unet_channels=[16, x]")
    with pytest.raises(ConfigError, match="model.network.unet_channels\\[1\\] takes an integer, got ' x'"):
        resolve_network(config.model)
    config.model.network = {"num_heads": 2.5}  # from a YAML file: checked, not parsed
    with pytest.raises(ConfigError, match="model.network.num_heads takes int, got 2.5"):
        resolve_network(config.model)
    config.model.network = {"patch_size": 2}
    with pytest.raises(ConfigError, match="model.network.patch_size: not a setting of the sd15 backbone"):
        resolve_network(config.model)
