"""Sweep parent runs: ``joulebench sweep`` nests one ``train`` run per combination under a
parent run tagged ``run_kind=sweep``, which a rerun of the same grid reopens.

A parent carries no ``config_hash``: it holds no measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from joulebench import names
from joulebench.tracking.store import all_runs, client, use_store

RUN_KIND_TAG = "run_kind"
SWEEP_HASH_TAG = "sweep_hash"
GRID_ARTIFACT = "sweep/grid.json"


@dataclass
class SweepRun:
    """The parent run of a sweep; ``resumed`` when an earlier start of the same grid made it."""

    run_id: str
    experiment_id: str
    resumed: bool


def open_sweep_run(
    experiment: str, sweep_hash: str, grid: list[dict[str, Any]], *, force: bool,
    params: dict[str, Any], tags: dict[str, str],
) -> SweepRun:
    """Reopen the latest parent run of the same grid (unless ``force``), or start a new one."""
    experiment_id = use_store(experiment)
    store = client()
    previous = [] if force else store.search_runs(
        [experiment_id], f"tags.{RUN_KIND_TAG} = 'sweep' and tags.{SWEEP_HASH_TAG} = '{sweep_hash}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if previous:
        run_id = previous[0].info.run_id
        store.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    else:
        run = store.create_run(
            experiment_id, run_name=f"sweep-{sweep_hash[:8]}",
            tags={RUN_KIND_TAG: "sweep", SWEEP_HASH_TAG: sweep_hash},
        )
        run_id = run.info.run_id
        store.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
        store.log_dict(run_id, grid, GRID_ARTIFACT)
    store.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    return SweepRun(run_id, experiment_id, resumed=bool(previous))


def finished_config_hashes(experiment_id: str) -> set[str]:
    """The config hashes that have a FINISHED run in the experiment (a sweep skips those)."""
    runs = all_runs(client(), experiment_id, "attributes.status = 'FINISHED'")
    return {run.data.tags[names.CONFIG_HASH] for run in runs if names.CONFIG_HASH in run.data.tags}


def child_epochs_done(parent_run_id: str, config_hash: str) -> int | None:
    """Epochs a sweep's running child has logged so far; None before its run exists."""
    store = client()
    parent = store.get_run(parent_run_id)
    running = store.search_runs(
        [parent.info.experiment_id],
        f"tags.{names.CONFIG_HASH} = '{config_hash}' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' "
        "and attributes.status = 'RUNNING'",
        max_results=1,
    )
    if not running:
        return None
    return len(store.get_metric_history(running[0].info.run_id, names.VAL_ACCURACY))


def end_sweep_run(run_id: str, status: str, log_dir: Path) -> None:
    """Log the children's output under ``logs/`` and close the parent run with ``status``."""
    store = client()
    if any(log_dir.iterdir()):
        store.log_artifacts(run_id, str(log_dir), "logs")
    store.set_terminated(run_id, status)


def close_if_open(run_id: str, status: str) -> None:
    """End a run that its own process could not end (its pod never started, or was stopped)."""
    store = client()
    if not RunStatus.is_terminated(RunStatus.from_string(store.get_run(run_id).info.status)):
        store.set_terminated(run_id, status)


def adopt_child(run_id: str, parent_run_id: str) -> None:
    """Nest a run MLflow Projects created (it cannot be given a parent) under the sweep."""
    client().set_tag(run_id, MLFLOW_PARENT_RUN_ID, parent_run_id)
