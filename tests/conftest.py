"""Fixtures shared by the test modules."""

import sys
from pathlib import Path

import pytest
import torch

# the asset builders' modules (scripts/mini_clip.py: the embedded text encoder's pretraining) are
# tested like the package's
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run many small ops: on a busy 2-core machine, two threads make each op wait on
    the other core (a tiny GroundingDINO forward took 1.8 s instead of 0.01 s). Modules that load
    tiny transformers models use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib figures saved while the test runs, by file name (``loss.png``; a name saved
    twice keeps the later figure, as the file does): plotting functions that return only a path can
    then be checked on what they drew (lines' data, titles), not on PNG bytes."""
    from pathlib import Path

    from matplotlib.figure import Figure

    figures = {}
    savefig = Figure.savefig

    def recording_savefig(self, fname, *args, **kwargs):
        figures[Path(fname).name] = self
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return figures


@pytest.fixture(scope="session")
def sam_dir(tmp_path_factory):
    """A tiny random SAM folder (tiny_models.build_tiny_sam), built once per test session."""
    from tiny_models import build_tiny_sam

    path = tmp_path_factory.mktemp("sam")
    build_tiny_sam(path)
    return path
