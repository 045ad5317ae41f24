"""The read side, for ``joulebench report``: finished measured runs as plain records, metric
histories, a sweep's grid, and the report's own run (tagged ``run_kind=report``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from joulebench import names
from joulebench.errors import ConfigError
from joulebench.tracking.store import all_runs, client, experiment_id
from joulebench.tracking.sweeps import GRID_ARTIFACT, RUN_KIND_TAG


@dataclass(frozen=True)
class RunRecord:
    """One finished measured run as the report reads it: plain values, no MLflow objects."""

    run_id: str
    run_name: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]

    @property
    def parent_run_id(self) -> str | None:
        return self.tags.get(MLFLOW_PARENT_RUN_ID)


def finished_measured_runs(experiment: str) -> list[RunRecord]:
    """Every FINISHED run of the experiment that carries a ``config_hash`` (a measurement)."""
    store = client()
    runs = all_runs(store, experiment_id(store, experiment), "attributes.status = 'FINISHED'")
    return [
        RunRecord(run.info.run_id, run.info.run_name, run.info.start_time, dict(run.data.params),
                  dict(run.data.tags), dict(run.data.metrics))
        for run in runs if names.CONFIG_HASH in run.data.tags
    ]


def sweep_grid_hashes(experiment: str, parent_run_id: str) -> set[str]:
    """The config hashes of a sweep's grid (its parent run's ``sweep/grid.json``), or none."""
    store = client()
    wanted = experiment_id(store, experiment)
    try:
        parent = store.get_run(parent_run_id)
    except mlflow.exceptions.MlflowException:
        parent = None
    if parent is None or parent.info.experiment_id != wanted:
        raise ConfigError(
            f"--parent {parent_run_id} is not a run of experiment {experiment!r}; the sweep's last "
            "lines name its parent run (or pass the experiment that holds it with --experiment)"
        )
    if GRID_ARTIFACT not in {a.path for a in store.list_artifacts(parent_run_id, "sweep")}:
        return set()
    grid = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/{GRID_ARTIFACT}")
    return {row[names.CONFIG_HASH] for row in grid}


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) pairs, in step order."""
    return sorted((m.step, m.value) for m in client().get_metric_history(run_id, key))


def log_report_run(experiment: str, files: list[Path], params: dict[str, Any]) -> str:
    """A FINISHED run holding the report's files under ``report/``, browsable in the UI."""
    store = client()
    run = store.create_run(experiment_id(store, experiment), run_name="report", tags={RUN_KIND_TAG: "report"})
    run_id = run.info.run_id
    store.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
    for path in files:
        store.log_artifact(run_id, str(path), "report")
    store.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
