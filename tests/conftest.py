"""Fixtures shared by several test files, and the session's own HOME (``pytest_configure``)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from convzoo.cli import main


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch resnet20 run on 200 8x8 digits (seconds on a CPU)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "--data", "digits", "--set", "data.image_size=8", "--set",
                 "data.limit=200", "--batch-size", "32", "--epochs", "1", "--out", str(out),
                 "--name", "r", "--set", "train.loggers=[]"]) == 0
    return out / "r"


@pytest.fixture(scope="session")
def large_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of 80x72 JPEGs (``imagedata.large_tree``), for the per-image CPU stage."""
    from imagedata import large_tree

    return large_tree(tmp_path_factory.mktemp("large") / "photos")


@pytest.fixture
def one_thread():
    """Run a test's small CPU workloads single-threaded: with 2 threads on a 2-core machine that
    is also running other jobs, OpenMP oversubscription makes them up to 50x slower. Modules
    use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REAL_HOME = os.environ.get("HOME", "")


def pytest_configure(config: pytest.Config) -> None:
    """A HOME of the session's own, so that nothing a test runs (the default data.root
    ``~/.cache/convzoo``, trackers' and libraries' dot-folders, subprocesses, which inherit it)
    writes into the developer's home: before, every suite run left hundreds of decode caches
    and locks of its temporary folders in ``~/.cache/convzoo/cache``. Removed at the end.

    And one torch thread per worker under ``-n N`` (pytest-xdist): N workers of 2 threads each
    on a 2-core machine oversubscribe it, and the suite's small workloads only lose by it."""
    home = tempfile.mkdtemp(prefix="convzoo-tests-home-")
    config.stash[HOME_KEY] = home
    os.environ["HOME"] = home
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(HOME_KEY, None)
    if home:
        os.environ["HOME"] = REAL_HOME
        shutil.rmtree(home, ignore_errors=True)


HOME_KEY = pytest.StashKey[str]()
