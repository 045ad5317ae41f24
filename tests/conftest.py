"""Fixtures only (what test modules share otherwise is in tests/support/): every test that
touches MLflow gets its own sqlite store in a temp dir."""

import shutil
from pathlib import Path

import pytest

from support import PowercapTree


# The waits a test would otherwise sit out (joulebench.timings), short for this process and every
# CLI it starts: a store that went away is given 2 s at a run's end, not 30. A test of a wait's
# length sets its own value in the environment it gives the CLI.
SHORT_WAITS = {"JOULEBENCH_OUTAGE_GRACE_SECONDS": "2", "JOULEBENCH_OUTAGE_POLL_SECONDS": "0.5",
               "JOULEBENCH_HEALTH_PAUSE_SECONDS": "0.2", "JOULEBENCH_SLURM_POLL_SECONDS": "1"}


@pytest.fixture(scope="session", autouse=True)
def short_waits():
    with pytest.MonkeyPatch.context() as patch:
        for variable, seconds in SHORT_WAITS.items():
            patch.setenv(variable, seconds)
        yield


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made once: creating them costs seconds per test."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, empty_store):
    """A fresh working directory whose default store ./mlflow.db (the CLI's default) is empty."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def package_and_dram(tmp_path: Path) -> PowercapTree:
    """A powercap tree with one package zone and its DRAM subzone (RAPL on this host)."""
    return (
        PowercapTree(tmp_path / "powercap")
        .zone("intel-rapl:0", "package-0", 5_000_000)
        .zone("intel-rapl:0:2", "dram", 7_000_000)
    )
