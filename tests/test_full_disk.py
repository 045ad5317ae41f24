"""A filesystem that fills up under a run: a real small tmpfs, filled for real, the installed
``joulebench`` run in a subprocess.

The promise: a full disk (ENOSPC; SQLite's "database or disk is full") wherever the run meets
it is one line on stderr — nothing else, however much MLflow logs about the failed calls —
naming the full filesystem and the fix, exit 75, and the run in a true state: FAILED where the
store could record that, else RUNNING with its end kept for ``joulebench resend``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from support import run_cli
from support.campaign import LONG, QUICK, running_cell_with_an_epoch, runs, start, wait_for

# Every test here fills a real filesystem under a training process.
pytestmark = pytest.mark.slow

ONE_EPOCH = [*QUICK, "--epochs", "1", "--limit-train-batches", "1"]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs, unmounted however the test ends. Mounting needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write zeros into ``disk`` until the system refuses: 0 bytes free."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, bytes(4096))
    except OSError as error:
        assert error.errno == errno.ENOSPC, error
    finally:
        os.close(descriptor)
    assert shutil.disk_usage(disk).free == 0
    return filler


def the_one_line(stderr: str) -> str:
    """stderr is exactly one line, joulebench's: MLflow's records of the failed calls are not there."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("joulebench: error: "), f"{len(lines)} lines:\n{stderr[-3000:]}"
    return lines[0]


def test_artifacts_on_a_full_disk_end_the_run_failed_in_one_line(tmp_path, small_disk, empty_store):
    """The store has room, the run's artifact folder has none: the run is closed FAILED at once
    (no outbox: waiting does not free a disk), and the line names the artifact filesystem."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(empty_store, work / "mlflow.db")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("joulebench", artifact_location=str(small_disk / "mlruns"))
    fill(small_disk)
    result = run_cli(["train", *ONE_EPOCH], cwd=work, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 75, result.stderr[-3000:]
    line = the_one_line(result.stderr)
    (run,) = runs(uri)
    assert run.info.status == "FAILED"
    assert f"no space left on the filesystem of {small_disk / 'mlruns'}" in line
    assert "(the run's artifacts, 0 bytes free)" in line and f"run {run.info.run_id} ended FAILED" in line
    assert not (work / "joulebench-unsent").exists()


def test_a_store_that_fills_mid_run_is_one_line_and_its_run_ends_truthfully(tmp_path, small_disk, empty_store):
    """The sqlite store's disk fills while the run trains. The store then cannot record even the
    run's end: the line says the run is left RUNNING and how `resend` ends it, which, once there
    is room, closes it FAILED with every epoch it logged."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(empty_store, small_disk / "mlflow.db")
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    process = start(["train", *LONG], work, {"MLFLOW_TRACKING_URI": uri})
    try:
        run = wait_for(lambda: running_cell_with_an_epoch(uri), 300, "an epoch", process)
        filler = fill(small_disk)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 75, err[-3000:]
    line = the_one_line(err)
    assert f"no space left on the filesystem of {small_disk / 'mlflow.db'} (the MLflow store, " in line
    assert "database or disk is full" in line and "MLFLOW_TRACKING_URI" in line
    filler.unlink()
    store = MlflowClient(uri)
    folder = Path("joulebench-unsent") / run.info.run_id
    if f"run {run.info.run_id} ended FAILED" not in line:  # the store had no room for the end either
        assert f"run {run.info.run_id} is left RUNNING" in line and f"`joulebench resend {folder}`" in line
        assert store.get_run(run.info.run_id).info.status == "RUNNING"
        sent = run_cli(["resend", str(folder)], cwd=work, env={"MLFLOW_TRACKING_URI": uri})
        assert sent.returncode == 0, sent.stderr
    ended = store.get_run(run.info.run_id)
    assert ended.info.status == "FAILED" and "val_accuracy" in ended.data.metrics
    assert not (work / folder).exists()


def test_a_full_store_before_the_run_opens_is_one_line_and_no_run(tmp_path, small_disk, empty_store):
    """No room to make even the experiment: one line, exit 75, nothing opened."""
    shutil.copyfile(empty_store, small_disk / "mlflow.db")
    uri = f"sqlite:///{small_disk / 'mlflow.db'}"
    fill(small_disk)
    result = run_cli(["train", *ONE_EPOCH], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 75, result.stderr[-3000:]
    line = the_one_line(result.stderr)
    assert f"no space left on the filesystem of {small_disk / 'mlflow.db'} (the MLflow store, 0 bytes free)" in line
    (small_disk / "filler").unlink()
    assert runs(uri) == []


def test_only_a_full_disks_log_records_are_kept_off_stderr():
    """The filter on MLflow's handler drops what the one line says, nothing else: a locked
    database or any other warning still reaches the user."""
    import logging
    import sqlite3

    from joulebench.tracking.store import FullDiskNoise

    def record(message: str, error: BaseException | None = None) -> logging.LogRecord:
        return logging.LogRecord("mlflow.store.db.utils", logging.ERROR, __file__, 1, message, None,
                                 (type(error), error, None) if error else None)

    full = OSError(errno.ENOSPC, "No space left on device")
    wrapped = RuntimeError("(sqlite3.OperationalError) database or disk is full")
    wrapped.__cause__ = sqlite3.OperationalError("database or disk is full")
    quiet = FullDiskNoise()
    assert not quiet.filter(record("SQLAlchemy database error. The following exception is caught.", full))
    assert not quiet.filter(record("SQLAlchemy database error.", wrapped))
    assert not quiet.filter(record("Failed to log system metrics: database or disk is full"))
    assert quiet.filter(record("SQLAlchemy database error.", sqlite3.OperationalError("database is locked")))
    assert quiet.filter(record("Failed to log system metrics: connection refused"))
    handler = logging.getLogger("mlflow").handlers[0]
    assert any(isinstance(f, FullDiskNoise) for f in handler.filters)
