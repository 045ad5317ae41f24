"""Sweep parent runs: ``joulebench sweep`` nests one ``train`` run per combination under a
parent run tagged ``run_kind=sweep``, which a rerun of the same grid reopens.

A parent carries no ``config_hash``: it holds no measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.time import get_current_time_millis

from joulebench import names
from joulebench.signals import uninterrupted
from joulebench.tracking.calls import Call, send
from joulebench.tracking.process import HOST_TAG, PID_TAG, process_alive
from joulebench.tracking.store import all_runs, client, use_store

RUN_KIND_TAG = "run_kind"
SWEEP_HASH_TAG = "sweep_hash"
GRID_ARTIFACT = "sweep/grid.json"
CLOSED_BY_TAG = "closed_by"  # who closed a run its own process could not close, and why
HEARTBEAT_METRIC = "system/cpu_utilization_percentage"  # MLflow logs it every 10 s of an open run
SILENT_MINUTES = 15.0


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
        _write(run_id, "update_run", status=RunStatus.to_string(RunStatus.RUNNING))
    else:
        with uninterrupted():  # opening a run is not one of the calls: there is no run to call yet
            run = store.create_run(
                experiment_id, run_name=f"sweep-{sweep_hash[:8]}",
                tags={RUN_KIND_TAG: "sweep", SWEEP_HASH_TAG: sweep_hash},
            )
        run_id = run.info.run_id
        _write(run_id, "log_batch", params=[(key, str(value)) for key, value in params.items()])
        _write(run_id, "log_text", text=json.dumps(grid, indent=2), name=GRID_ARTIFACT)
    _tag(run_id, tags)
    return SweepRun(run_id, experiment_id, resumed=bool(previous))


def finished_config_hashes(experiment_id: str) -> set[str]:
    """The config hashes that have a FINISHED run in the experiment (a sweep skips those)."""
    runs = all_runs(client(), experiment_id, "attributes.status = 'FINISHED'")
    return {run.data.tags[names.CONFIG_HASH] for run in runs if names.CONFIG_HASH in run.data.tags}


def child_epochs_done(parent_run_id: str, config_hash: str) -> int | None:
    """Epochs a sweep's running child has logged so far; None before its run exists."""
    running = _cell_runs(parent_run_id, f"{cell_since(config_hash, 0)} and attributes.status = 'RUNNING'")
    if not running:
        return None
    return len(client().get_metric_history(running[0].info.run_id, names.VAL_ACCURACY))


# Which runs are one cell's, as each runner knows them (filters of MLflow's search).


def cell_since(config_hash: str, start_ms: int) -> str:
    """The runs of the cell ``config_hash`` started since ``start_ms`` (a local child's)."""
    return f"tags.{names.CONFIG_HASH} = '{config_hash}' and attributes.start_time >= {start_ms}"


def slurm_task(config_hash: str, job_id: str) -> str:
    """The run Slurm array task ``job_id`` made of the cell ``config_hash``."""
    return f"tags.{names.CONFIG_HASH} = '{config_hash}' and tags.`{names.SLURM_JOB_ID}` = '{job_id}'"


def project_run(run_id: str) -> str:
    """The run MLflow Projects made for a pod (it has no config hash until the pod's train tags it)."""
    return f"attributes.run_id = '{run_id}'"


def _cell_runs(parent_run_id: str, cell: str) -> list:
    """The runs under sweep ``parent_run_id`` that ``cell`` selects, newest first."""
    store = client()
    return store.search_runs(
        [store.get_run(parent_run_id).info.experiment_id],
        f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and {cell}", order_by=["attributes.start_time DESC"],
    )


def settle_cell(parent_run_id: str, cell: str, ended_as: str, why: str, tags: dict[str, str] | None = None) -> str | None:
    """How a sweep's cell ended, read from its run once its process is gone: the one place every
    runner learns it (FINISHED is the only success), whatever exit code or scheduler state it saw.

    A run still open could not close itself (killed, crashed, stopped by a scheduler or a
    Ctrl-C): it is closed ``ended_as`` and tagged with ``why`` and ``tags``. None: the cell
    opened no run (it stopped before, e.g. its store did not answer)."""
    runs = _cell_runs(parent_run_id, cell)
    for run in runs:
        if not RunStatus.is_terminated(RunStatus.from_string(run.info.status)):  # RUNNING, or a pod's SCHEDULED
            _tag(run.info.run_id, (tags or {}) | {CLOSED_BY_TAG: why})
            _close(run.info.run_id, ended_as)
        elif tags:
            _tag(run.info.run_id, tags)
    return client().get_run(runs[0].info.run_id).info.status if runs else None


@dataclass
class LiveRun:
    """A RUNNING run of a combination whose process still runs (or runs where this host cannot look)."""

    run_id: str
    config_hash: str
    where: str  # "pid 123 on host"


def reclaim_running(experiment_id: str, config_hashes: set[str]) -> list[LiveRun]:
    """Close as KILLED the RUNNING runs of these combinations whose process is gone (killed
    before it could close them); return those whose process still runs, or may.

    A process on this host is looked up; one on another host (a pod, a node) counts as gone
    when its run has been silent for SILENT_MINUTES: MLflow's system metrics, sampled every
    10 s while a run is open, are its heartbeat.
    """
    store = client()
    live = []
    for run in all_runs(store, experiment_id, "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if tags.get(names.CONFIG_HASH) not in config_hashes:
            continue
        alive = process_alive(tags)
        silent = (get_current_time_millis() - _last_heard(store, run)) / 60_000
        if alive is False or (alive is None and silent > SILENT_MINUTES):
            why = "its process was gone" if alive is False else f"silent for {silent:.0f} min on another host"
            _tag(run.info.run_id, {CLOSED_BY_TAG: f"sweep resume: {why}"})
            _close(run.info.run_id, "KILLED")
        else:
            where = f"pid {tags.get(PID_TAG, '?')} on {tags.get(HOST_TAG, 'an unknown host')}"
            live.append(LiveRun(run.info.run_id, tags[names.CONFIG_HASH], where))
    return live


def _last_heard(store: Any, run: Any) -> int:
    """When a run last logged its heartbeat (or started), in epoch milliseconds."""
    beats = store.get_metric_history(run.info.run_id, HEARTBEAT_METRIC)
    return max([run.info.start_time or 0, *(beat.timestamp for beat in beats)])


def end_sweep_run(run_id: str, status: str, log_dir: Path) -> None:
    """Log the children's output under ``logs/`` and close the parent run with ``status``."""
    logs = sorted(str(path) for path in log_dir.iterdir() if path.is_file())
    if logs:
        _write(run_id, "log_artifact", logs, folder="logs")
    _close(run_id, status)


def adopt_child(run_id: str, parent_run_id: str) -> None:
    """Nest a run MLflow Projects created (it cannot be given a parent) under the sweep."""
    _tag(run_id, {MLFLOW_PARENT_RUN_ID: parent_run_id})


# A sweep writes to runs (its parent, its cells') through the same table of calls as a run writes to
# itself; nothing is journaled: a sweep whose store stops answering ends with one line, exit 75.


def _write(run_id: str, call: str, files: list[str] | None = None, **args: Any) -> None:
    send(client(), {"run_id": run_id}, Call(call, args, files or []))


def _tag(run_id: str, tags: dict[str, str]) -> None:
    _write(run_id, "log_batch", tags=list(tags.items()))


def _close(run_id: str, status: str) -> None:
    _write(run_id, "set_terminated", status=status, end_time=get_current_time_millis())
