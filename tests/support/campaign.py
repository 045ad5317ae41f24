"""Driving the installed ``joulebench`` as a long-running process: start it, wait on what it
writes to MLflow, read back its runs (test_campaign_faults, test_full_disk)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from . import JOULEBENCH, cli_environment

QUICK = ["--model", "tinynet", "--weights", "none", "--idle-seconds", "0", "--inference-batches", "1", "--quiet"]
LONG = [*QUICK, "--epochs", "60", "--limit-train-batches", "3"]  # long enough to be stopped mid-run


def start(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([JOULEBENCH, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_environment(env))


def runs(uri: str, experiment: str = "joulebench") -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def cells(uri: str) -> list:
    return [run for run in runs(uri) if "config_hash" in run.data.tags]


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} while waiting for {what}: {process.communicate()}")
        try:
            value = condition()
        except Exception:  # the store may still be being created
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def running_cell_with_an_epoch(uri: str):
    running = [run for run in cells(uri) if run.info.status == "RUNNING" and "val_accuracy" in run.data.metrics]
    return running[0] if running else None
