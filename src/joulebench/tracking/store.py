"""The MLflow store: where it is, whether it can be used, and a client bound to it.

Default store: ``sqlite:///mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI``
points elsewhere (a server, another file).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from joulebench.errors import ConfigError, EnvironmentFault

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def client() -> MlflowClient:
    """A client of the store every joulebench command uses."""
    return MlflowClient(tracking_uri())


def use_store(experiment: str) -> str:
    """The id of ``experiment`` in the store, made if new; ConfigError for a store path that
    cannot be written, EnvironmentFault for a store that fails to answer or to open."""
    uri = tracking_uri()
    _check_local_path_writable(uri)
    mlflow.set_tracking_uri(uri)  # for the parts of MLflow that read it globally (log_model)
    launched_run = os.environ.get("MLFLOW_RUN_ID")
    try:
        store = client()
        if launched_run:  # started by `mlflow run`, which made the run and chose its experiment
            return store.get_run(launched_run).info.experiment_id
        found = store.get_experiment_by_name(experiment)
        if found is None:
            return store.create_experiment(experiment)
    except Exception as error:  # any failure here means the store is unusable
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise EnvironmentFault(
            f"cannot use the MLflow store {uri} ({first_line}); set MLFLOW_TRACKING_URI to a "
            "writable sqlite:///PATH or a running server's http://HOST:PORT"
        ) from None
    if found.lifecycle_stage == "deleted":
        raise ConfigError(
            f"experiment {experiment!r} is deleted in the MLflow store {uri}; restore it with "
            f"`mlflow experiments restore --experiment-id {found.experiment_id}` or pass another --experiment"
        )
    return found.experiment_id


def _check_local_path_writable(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
    elif uri.startswith("file:"):
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
    elif "://" not in uri:
        path = Path(uri)
    else:
        return
    target = path if path.exists() else path.parent
    if not target.exists() or not os.access(target, os.W_OK):
        raise ConfigError(
            f"the MLflow store {uri} is not writable ({target} "
            f"{'is read-only' if target.exists() else 'does not exist'}); run from a writable "
            "directory or set MLFLOW_TRACKING_URI=sqlite:///WRITABLE/mlflow.db"
        )


def experiment_id(store: MlflowClient, experiment: str) -> str:
    """The id of an existing experiment; ConfigError naming the ones there are."""
    found = store.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in store.search_experiments(max_results=50))
        raise ConfigError(
            f"no experiment {experiment!r} in the MLflow store {tracking_uri()}; accepted: "
            f"{', '.join(names) or 'none yet (run joulebench sweep first)'}; pass --experiment NAME"
        )
    return found.experiment_id


def all_runs(store: MlflowClient, experiment: str, filter_string: str) -> Iterator[Any]:
    """Every matching run of experiment id ``experiment``, oldest first, across result pages."""
    token = None
    while True:
        page = store.search_runs(
            [experiment], filter_string, order_by=["attributes.start_time ASC"], page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def ui_command(run_id: str, experiment: str) -> str:
    """How to open run ``run_id`` of experiment id ``experiment`` in the MLflow UI."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
    return (
        f"mlflow ui --backend-store-uri {uri}  # then open "
        f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id}"
    )
