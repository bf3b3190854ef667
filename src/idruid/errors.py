"""The errors idruid raises for a user's mistake: each one's message names the file, key, flag or
field at fault, and the command line prints it as one line without a traceback (idruid.cli).

They live here, below every other module and importing none, so that any module can raise or
catch one without importing the module that first needed it (a model reading the authors'
checkpoint raises ``CheckpointError`` without importing the checkpoint loader, which imports the
models). The modules that defined them before still export them under the old names
(``idruid.config.ConfigError``, ``idruid.checkpoint.CheckpointError``, ...).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


class LayoutError(ValueError):
    """A layout that cannot be used; the message names the field and the problem."""


class CheckpointError(ValueError):
    """A checkpoint directory that does not exist or is not an idruid checkpoint."""


class DruidCheckpointError(CheckpointError):
    """A folder that is not a usable I-DRUID authors' checkpoint."""


class ModelFolderError(ValueError):
    """A model folder's file that exists but cannot be read (malformed JSON, a truncated
    safetensors file); the message names the file."""


class ScoringError(ValueError):
    """Benchmark images or scorers that cannot be used; the message names the file or flag."""


class QualityError(ValueError):
    """Bad input to a quality metric: the message names the argument, file or command-line flag."""


class ReportError(ValueError):
    """A run folder the report cannot use; the message names the folder or file."""
