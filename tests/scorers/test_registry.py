"""The one scorer registry: registry names, model folders checked before loading, one loader."""

import json

import pytest

from idruid.scorers import roles
from idruid.scorers.analytic import AnalyticDetector, AnalyticJudge, AnalyticSegmenter
from idruid.scorers.registry import LOADERS, SCORERS, check_model_dir, check_scorer, load_scorer


def test_each_role_has_a_flag_and_its_analytic_stand_in():
    assert {role: kind.flag for role, kind in SCORERS.items()} == {
        "detector": "--detector",
        "segmenter": "--segmenter",
        "judge": "--judge",
    }
    for role, cls in (
        ("detector", AnalyticDetector),
        ("segmenter", AnalyticSegmenter),
        ("judge", AnalyticJudge),
    ):
        assert check_scorer(role, "analytic") == "analytic"
        assert isinstance(load_scorer(role, "analytic"), cls)
    with pytest.raises(ValueError, match="unknown scorer role 'reward'"):
        load_scorer("reward", "analytic")


def test_the_table_and_the_folder_check_are_the_roles_module_and_every_role_has_a_loader():
    """The table sits in scorers.roles, which the model wrappers import, so they never import the
    registry that loads them; the registry adds one loader per role."""
    assert SCORERS is roles.SCORERS and check_model_dir is roles.check_model_dir
    assert set(LOADERS) == set(SCORERS)


def test_folder_checks_name_the_flag_the_path_and_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--segmenter nope: unknown segmenter and no such directory"):
        check_scorer("segmenter", "nope")
    with pytest.raises(
        FileNotFoundError, match=r"--detector .*: not a GroundingDINO directory, it lacks config\.json"
    ):
        check_model_dir("detector", tmp_path)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model type None, not 'sam' or 'sam_hq'"):
        check_model_dir("segmenter", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam_hq"}))
    assert check_model_dir("segmenter", tmp_path) == tmp_path
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(FileNotFoundError, match="config.json: not a JSON object"):
        check_model_dir("segmenter", tmp_path)
    # the judge's folder needs only config.json; the detector's also a tokenizer
    assert check_model_dir("judge", tmp_path) == tmp_path
    with pytest.raises(FileNotFoundError, match=r"lacks tokenizer \(one of tokenizer.json, vocab.txt\)"):
        check_model_dir("detector", tmp_path)
