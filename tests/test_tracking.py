"""tracking: the store check, and artefact tables whose rows do not all have the same keys."""

import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from joulebench.errors import ConfigError
from joulebench.tracking import Recorder, environment_tags, use_store


def test_epoch_table_keeps_columns_only_later_rows_have(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = use_store("tables")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        # Epoch 1 was too short to measure (no energy keys); epoch 2 was measured.
        Recorder(run.info.run_id, experiment_id).log_table(
            "epochs.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "epoch_joules": 12.5}]
        )
    path = MlflowClient().download_artifacts(run.info.run_id, "epochs.csv", str(tmp_path))
    assert Path(path).read_text().splitlines() == ["epoch,loss,epoch_joules", "1,0.5,", "2,0.25,12.5"]


def test_store_in_missing_directory_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    with pytest.raises(ConfigError, match="does not exist"):
        use_store("x")


def test_git_commit_is_head_in_a_checkout_and_the_build_arg_outside_one(tmp_path, monkeypatch):
    monkeypatch.setenv("JOULEBENCH_GIT_COMMIT", "0123abc")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent, check=True).stdout.strip()
    monkeypatch.chdir(Path(__file__).parent)
    assert environment_tags("v1")["git_commit"].removesuffix("-dirty") == head
    monkeypatch.chdir(tmp_path)  # no repository here, as in the image
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert environment_tags("v1")["git_commit"] == "0123abc"
    monkeypatch.delenv("JOULEBENCH_GIT_COMMIT")
    assert environment_tags("v1")["git_commit"] == "unknown"
