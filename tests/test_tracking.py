"""tracking.py: the store check, and artefact tables whose rows do not all have the same keys."""

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from joulebench.errors import ConfigError
from joulebench.tracking import Recorder, use_store


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
