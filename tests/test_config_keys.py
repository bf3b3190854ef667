"""Renamed config keys: old config.yaml files (results/*) still load, read under the new names."""

import pytest
import yaml

from idruid.config import ConfigError, TrainConfig, apply_override, load_config, upgrade_keys
from idruid.reports.runs import current_keys


def test_old_keys_load_as_the_new_ones(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"sigma_sampling": "uniform", "rl": {"steps": 6, "cfg": 2.0}}))
    with pytest.warns(DeprecationWarning, match="'rl.steps' is deprecated"):
        config = load_config(str(path))
    assert config.time_sampling == "uniform" and config.rl.sampling_steps == 6 and config.rl.cfg == 2.0
    assert config.steps == TrainConfig().steps  # the top-level steps (optimiser steps) are untouched


def test_old_override_keys_and_both_names_at_once(tmp_path):
    config = TrainConfig()
    with pytest.warns(DeprecationWarning):
        apply_override(config, "rl.steps=3")
    apply_override(config, "steps=7")
    assert config.rl.sampling_steps == 3 and config.steps == 7
    with pytest.raises(ConfigError, match="both 'rl.steps' and its new name 'rl.sampling_steps'"):
        upgrade_keys({"rl": {"steps": 3, "sampling_steps": 4}})


def test_reports_read_old_runs_under_the_new_names(tmp_path):
    old = {"sigma_sampling": "uniform", "steps": 9, "rl": {"steps": 4}}
    assert current_keys(old, tmp_path / "config.yaml") == {
        "time_sampling": "uniform",
        "steps": 9,
        "rl": {"sampling_steps": 4},
    }
