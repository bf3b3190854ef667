"""The user-facing errors live in idruid.errors, below every module; the modules that defined them
before still export the same classes under their old names, which users import."""

import pytest

from idruid import errors


@pytest.mark.parametrize(
    "module, name",
    [
        ("idruid.config", "ConfigError"),
        ("idruid.layout", "LayoutError"),
        ("idruid.checkpoint", "CheckpointError"),
        ("idruid.models.druid_weights", "DruidCheckpointError"),
        ("idruid.model_dirs", "ModelFolderError"),
        ("idruid.eval_benchmarks", "ScoringError"),
        ("idruid.quality", "QualityError"),
        ("idruid.quality.scores", "QualityError"),
        ("idruid.reports", "ReportError"),
        ("idruid.reports.runs", "ReportError"),
    ],
)
def test_old_import_paths_give_the_same_class(module, name):
    old = getattr(__import__(module, fromlist=[name]), name)
    assert old is getattr(errors, name) and issubclass(old, ValueError)


def test_the_authors_checkpoint_error_is_a_checkpoint_error():
    assert issubclass(errors.DruidCheckpointError, errors.CheckpointError)


def test_the_command_line_prints_each_as_one_line():
    from idruid.cli import USER_ERRORS

    shown = (errors.ConfigError, errors.LayoutError, errors.CheckpointError, errors.ModelFolderError)
    assert all(issubclass(error, USER_ERRORS) for error in (*shown, errors.ScoringError))
