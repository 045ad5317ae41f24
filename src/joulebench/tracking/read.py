"""The read side, for ``joulebench report``: finished measured runs as plain records, metric
histories, a sweep's grid, and the report's own run (tagged ``run_kind=report``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from joulebench import names
from joulebench.errors import ConfigError
from joulebench.tracking.calls import STORE_FAILURES
from joulebench.tracking.store import (
    all_experiments, all_runs, answers, client, experiment_id, read_store, tracking_uri,
)
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


# Where `joulebench report` files its own runs: apart from the training runs it summarises.
REPORT_EXPERIMENT = "joulebench-reports"


@dataclass(frozen=True)
class MeasuredRuns:
    """What the report reads: the FINISHED measured runs, by experiment, and those it leaves out."""

    records: list[RunRecord]
    by_experiment: dict[str, int]  # experiment name → FINISHED runs read from it
    left_out: dict[str, int]  # status → measured runs that did not finish (RUNNING, FAILED, KILLED)


def finished_measured_runs(experiment: str | None) -> MeasuredRuns:
    """Every run carrying a ``config_hash`` (a joulebench measurement) of ``experiment``, or of
    every active experiment of the store but the reports' own (None): runs `mlflow run` filed
    under ``Default`` are joulebench's too. Only FINISHED ones are read; the rest are counted."""
    store = read_store()
    if experiment is None:
        experiments = [e for e in all_experiments(store) if e.name != REPORT_EXPERIMENT]
    else:
        experiments = [store.get_experiment(experiment_id(store, experiment))]
    records, by_experiment, left_out = [], Counter(), Counter()
    for found in experiments:
        for run in all_runs(store, found.experiment_id, ""):
            if names.CONFIG_HASH not in run.data.tags:
                continue
            if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
                left_out[run.info.status] += 1
                continue
            by_experiment[found.name] += 1
            records.append(RunRecord(run.info.run_id, run.info.run_name, run.info.start_time,
                                     dict(run.data.params), dict(run.data.tags), dict(run.data.metrics)))
    return MeasuredRuns(records, dict(by_experiment), dict(left_out))


def sweep_grid_hashes(experiment: str | None, parent_run_id: str) -> set[str]:
    """The config hashes of a sweep's grid (its parent run's ``sweep/grid.json``), or none."""
    store = client()
    wanted = experiment_id(store, experiment) if experiment is not None else None
    try:
        parent = store.get_run(parent_run_id)
    except mlflow.exceptions.MlflowException:
        parent = None
    if parent is None or wanted not in (None, parent.info.experiment_id):
        scope = f" of experiment {experiment!r}" if experiment is not None else " in the store"
        raise ConfigError(
            f"--parent {parent_run_id} is not a run{scope}; the sweep's last lines name its parent run"
            + (" (or pass the experiment that holds it with --experiment)" if experiment is not None else "")
        )
    if GRID_ARTIFACT not in {a.path for a in store.list_artifacts(parent_run_id, "sweep")}:
        return set()
    grid = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/{GRID_ARTIFACT}")
    return {row[names.CONFIG_HASH] for row in grid}


def finished_run_metrics(experiment_id: str, config_hash: str) -> tuple[str, dict[str, float]] | None:
    """The latest FINISHED run of the experiment with this ``config_hash``: its id and metrics.
    None too where the store does not answer now: a run's outbox keeps its own results, and what
    is lost is a comparison in its description, not a reason to fail the run."""
    if not answers(tracking_uri()):
        return None
    try:
        found = client().search_runs(
            [experiment_id], f"tags.{names.CONFIG_HASH} = '{config_hash}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
    except STORE_FAILURES:
        return None
    return (found[0].info.run_id, dict(found[0].data.metrics)) if found else None


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) pairs, in step order."""
    return sorted((m.step, m.value) for m in client().get_metric_history(run_id, key))


def log_report_run(files: list[Path], params: dict[str, Any]) -> str:
    """A FINISHED run holding the report's files under ``report/``, in the reports' own
    experiment (made if new), so that the training runs' table holds training runs only."""
    store = client()
    found = store.get_experiment_by_name(REPORT_EXPERIMENT)
    experiment = found.experiment_id if found is not None else store.create_experiment(REPORT_EXPERIMENT)
    run = store.create_run(experiment, run_name="report", tags={RUN_KIND_TAG: "report"})
    run_id = run.info.run_id
    store.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
    for path in files:
        store.log_artifact(run_id, str(path), "report")
    store.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
