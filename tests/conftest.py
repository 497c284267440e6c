"""Fixtures shared by several test files."""

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


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per worker under ``-n N`` (pytest-xdist): N workers of 2 threads each on
    a 2-core machine oversubscribe it, and the suite's small workloads only lose by it."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
