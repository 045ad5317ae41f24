"""The MLflow store: where it is, whether it can be used, and a client bound to it.

Default store: ``sqlite:///mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI``
points elsewhere (a server, another file).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import requests
import sqlalchemy.exc
from mlflow.tracking import MlflowClient
from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

from joulebench import names, timings
from joulebench.errors import (
    ConfigError, EnvironmentFault, disk_full, disk_full_line, first_line, full_disk_fault, nearest_existing,
    says_disk_full, why_unwritable,
)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Where `mlflow run` mounts a local store in its container (mlflow.projects.docker): no path on the host.
MLFLOW_RUN_CONTAINER_STORE = "/mlflow/tmp/mlruns"
HEALTH_ATTEMPTS = 3  # a server is given 3 × timings.HEALTH_TIMEOUT + 2 × timings.HEALTH_PAUSE (13 s) to answer


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def client() -> MlflowClient:
    """A client of the store every joulebench command uses."""
    return MlflowClient(tracking_uri())


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def answers(uri: str, timeout: float | None = None) -> bool:
    """Whether the store answers now: a server's ``/health`` within ``timeout``; a local store
    is taken to (its own calls say otherwise)."""
    if not is_server(uri):
        return True
    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=timeout or timings.HEALTH_TIMEOUT.seconds()).ok
    except requests.exceptions.RequestException:
        return False


def check_server(uri: str) -> None:
    """EnvironmentFault within about 15 s when no server answers at ``uri`` (MLflow's own
    retries would take minutes to say so)."""
    for attempt in range(HEALTH_ATTEMPTS):
        if answers(uri):
            return
        if attempt + 1 < HEALTH_ATTEMPTS:
            time.sleep(timings.HEALTH_PAUSE.seconds())
    raise EnvironmentFault(
        f"no MLflow tracking server answers at {uri} (checked {uri.rstrip('/')}/health "
        f"{HEALTH_ATTEMPTS} times); start it (`mlflow server --host HOST --port PORT`) or set "
        "MLFLOW_TRACKING_URI to a running server or to sqlite:///PATH"
    )


def _create_sqlite_store(path: Path) -> None:
    """Make a new sqlite store whole or not at all, once however many processes start at once.

    MLflow creates and migrates a store on first use; two processes doing it together fail
    (``table _alembic_tmp_experiments already exists``), and a disk that fills up meanwhile
    leaves a half-migrated file that fails for ever after. Here one process, holding a lock,
    builds the store in a temporary file beside it and renames it into place.
    """
    if path.exists():
        return
    lock_path = path.with_name(path.name + ".lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.exists():  # another process made it while this one waited
            return
        staging = path.with_name(f".{path.name}.{os.getpid()}.new")
        try:
            MlflowClient(f"sqlite:///{staging}").search_experiments(max_results=1)
            os.replace(staging, path)
        except Exception as error:
            staging.unlink(missing_ok=True)
            raise EnvironmentFault(
                f"cannot create the MLflow store {path} ({first_line(error, 200)}); nothing was "
                "left half-made: free space or fix the folder, then run again"
            ) from None
        finally:
            lock_path.unlink(missing_ok=True)


def read_store() -> MlflowClient:
    """The store, for a command that reads what runs wrote (``report``): it must be there and be
    an MLflow store. ConfigError for a local one missing, unwritable (the report logs a run) or not
    a store (a corrupt file); EnvironmentFault for a server that does not answer."""
    uri = tracking_uri()
    _check_local_path_writable(uri)
    if is_server(uri):
        check_server(uri)
    elif uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ConfigError(f"no MLflow store at {uri}: nothing has run here yet; run from the folder that "
                          "holds mlflow.db, or set MLFLOW_TRACKING_URI to the store")
    try:
        store = client()  # opening a local store checks its schema
        store.search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - any failure to read means it is not a usable store
        if is_server(uri):
            raise EnvironmentFault(f"the MLflow server {uri} did not answer a search ({first_line(error, 200)}); "
                                   "check it and try again") from None
        raise ConfigError(f"{uri} is not an MLflow store that can be read ({first_line(error, 200)}); "
                          "point MLFLOW_TRACKING_URI at the store the runs went to") from None
    return store


def use_store(experiment: str) -> str:
    """The id of ``experiment`` in the store, made if new; ConfigError for a store path that
    cannot be written, EnvironmentFault for a store that fails to answer or to open."""
    uri = tracking_uri()
    _check_local_path_writable(uri)
    if is_server(uri):
        check_server(uri)
    elif uri.startswith("sqlite:///"):
        _create_sqlite_store(Path(uri.removeprefix("sqlite:///")))
    mlflow.set_tracking_uri(uri)  # for the parts of MLflow that read it globally (log_model)
    launched_run = os.environ.get("MLFLOW_RUN_ID")
    try:
        store = client()
        if launched_run:  # started by `mlflow run`, which made the run and chose its experiment
            return show_comparison(store, store.get_run(launched_run).info.experiment_id)
        found = store.get_experiment_by_name(experiment)
        if found is None:
            found = store.get_experiment(store.create_experiment(experiment))
        if found.lifecycle_stage != "deleted":
            show_comparison(store, found.experiment_id)
    except Exception as error:  # any failure here means the store is unusable
        if (full := disk_full(error)) is not None:
            raise full_disk(full) from None
        if isinstance(error, (UnsupportedModelRegistryStoreURIException, sqlalchemy.exc.ArgumentError)):
            raise ConfigError(  # a URI no store answers to: no wait or retry mends it
                f"MLFLOW_TRACKING_URI {uri!r} is not a store URI MLflow accepts; set it to sqlite:///PATH "
                "(three slashes, then the path), a folder, or a running server's http://HOST:PORT"
            ) from None
        raise EnvironmentFault(
            f"cannot use the MLflow store {uri} ({first_line(error, 200)}); set MLFLOW_TRACKING_URI to a "
            "writable sqlite:///PATH or a running server's http://HOST:PORT"
        ) from None
    if found.lifecycle_stage == "deleted":
        raise ConfigError(
            f"experiment {experiment!r} is deleted in the MLflow store {uri}; restore it with "
            f"`mlflow experiments restore --experiment-id {found.experiment_id}` or pass another --experiment"
        )
    _check_artifact_folder(found.artifact_location)
    return found.experiment_id


def _check_artifact_folder(location: str) -> None:
    """A local artifact location must be able to become a folder: a file in its way is bad input,
    said before the run opens (its first artifact would fail for ever)."""
    if "://" in location and not location.startswith("file://"):
        return  # a server's or a cloud store's: it answers for itself
    path = nearest_existing(Path(location.removeprefix("file://")))
    if not path.is_dir():
        raise ConfigError(f"the run's artifacts go to {location}, but {path} is a file; move it aside or set "
                          "MLFLOW_TRACKING_URI to another store")


def _local_store_path(uri: str) -> Path | None:
    """The file (sqlite) or folder (file store) of a local store; None for a server's."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:"))
    if "://" not in uri:
        return Path(uri)
    return None


def _check_local_path_writable(uri: str) -> None:
    path = _local_store_path(uri)
    if path is None:
        return
    sqlite = uri.startswith("sqlite:")
    if path.is_dir() if sqlite else path.is_file():  # SQLite wants a file, the file store a folder
        raise ConfigError(
            f"the MLflow store {uri} names a {'directory' if sqlite else 'file'}, where a "
            f"{'database file' if sqlite else 'folder'} belongs; move {path} aside or set "
            "MLFLOW_TRACKING_URI=sqlite:///ANOTHER/mlflow.db"
        )
    target = path if path.exists() else path.parent
    reason = why_unwritable(target) if target.exists() else f"{target} does not exist"
    if reason:
        raise ConfigError(
            f"the MLflow store {uri} is not writable: {reason}; run as a user who may write it "
            "(its owner), or set MLFLOW_TRACKING_URI=sqlite:///WRITABLE/mlflow.db"
        )


def full_disk(cause: BaseException, outcome: str = "", artifacts: str | None = None,
              outbox: Path | None = None) -> EnvironmentFault:
    """The one line for a full filesystem (``errors.disk_full``), wherever a command met it: among
    the places a run writes to (the store, the run's artifacts, ``outbox``, the temporary folder, the
    working folder), the one with the fewest bytes free; ``outcome`` says what became of the run.
    A server's own full disk reaches here as its text only: the line names the server."""
    uri = tracking_uri()
    if is_server(uri) and not isinstance(cause, OSError):
        return EnvironmentFault(f"the MLflow server {uri} has no space left: {disk_full_line(cause)}"
                                f"{'; ' + outcome if outcome else ''}; free space on the server's disk, then run again")
    places = []
    store = _local_store_path(uri)
    if store is not None:
        places.append(("the MLflow store", store, "set MLFLOW_TRACKING_URI=sqlite:///PATH on a disk with room"))
    if artifacts and ("://" not in artifacts or artifacts.startswith("file:")):
        places.append(("the run's artifacts", Path(artifacts.removeprefix("file://").removeprefix("file:")),
                       "use a new --experiment made from a folder with room (its artifacts go to mlruns/ there)"))
    if outbox is not None:
        places.append(("the calls kept for `joulebench resend`", outbox, "run from a folder on a disk with room"))
    places += [("the temporary folder", Path(tempfile.gettempdir()), "set TMPDIR to a folder with room"),
               ("the working folder", Path.cwd(), "run from a folder on a disk with room")]
    return full_disk_fault(cause, places, outcome)


class FullDiskNoise(logging.Filter):
    """Drops a log record that is about a full filesystem: its exception or its text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is not this filter's to judge
            return True
        return disk_full(record.exc_info[1] if record.exc_info else None) is None and not says_disk_full(message)


def quiet_full_disk_logs() -> None:
    """Keep a full filesystem's log records off stderr: joulebench reports it in one line.

    On a full disk MLflow logs every failed store call before raising it, traceback and all
    (``mlflow.store.db.utils``: "SQLAlchemy database error", about 80 lines a call), and its
    system-metrics thread may warn as well: a run that failed after a dozen calls printed 1,463 lines
    above the one that says what to do. Every such call's error also reaches joulebench, which ends
    the run and prints that line (``errors.disk_full``), so only these records are dropped: other
    warnings of MLflow, SQLAlchemy and Alembic (a locked database, a slow migration, a deprecated
    setting) are still shown, and nothing is lowered in level. The filter sits on the handler MLflow
    gives its loggers on import (a filter on a logger would miss its children's records), and on
    Python's last-resort handler, which prints what loggers without a handler log.
    """
    quiet = FullDiskNoise()
    handlers = {handler for name in ("mlflow", "sqlalchemy", "sqlalchemy.engine", "alembic", "huey")
                for handler in logging.getLogger(name).handlers}
    for handler in [*handlers, logging.lastResort]:
        if handler is not None and not any(isinstance(f, FullDiskNoise) for f in handler.filters):
            handler.addFilter(quiet)


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


def all_experiments(store: MlflowClient) -> Iterator[Any]:
    """Every active experiment of the store, across result pages."""
    token = None
    while True:
        page = store.search_experiments(page_token=token)
        yield from page
        token = page.token
        if not token:
            return


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


# The runs table MLflow's UI opens with (a "shared view": an experiment tag the UI reads when the
# URL names its key): model, method, training energy and its source, time, accuracy, and the
# run's description (its result against its baseline). MLflow 3.17 opens an experiment on its GenAI
# pages unless the URL asks for the model-training view (workflowType=machine_learning), and drops
# the view's key from any URL that also carries a search or a sort.
COMPARISON_VIEW = "joulebench-comparison"
# Column id → width in px: narrow enough that all but the description fit beside the run name,
# its start time and the assistant panel MLflow opens on a local server's first visit (1600 px).
COMPARISON_COLUMNS = {
    "params.`model`": 80, "params.`method`": 80, f"metrics.`{names.ENERGY_TRAIN_J}`": 90,
    f"tags.`{names.ENERGY_SOURCE}`": 125, f"metrics.`{names.TRAIN_SECONDS}`": 75, f"metrics.`{names.ACCURACY}`": 70,
    "attributes.`Description`": 400,
}
UI_ADDRESS = "http://127.0.0.1:5000"  # where README's `mlflow ui` serves


def show_comparison(store: MlflowClient, experiment_id: str) -> str:
    """Tag the experiment with the comparison view (once; it is kept if unchanged); its id back."""
    columns = list(COMPARISON_COLUMNS)
    state = json.dumps({"selectedColumns": columns, "columnOrder": columns, "columnWidths": COMPARISON_COLUMNS})
    tag = f"mlflow.sharedViewState.{COMPARISON_VIEW}"
    current = store.get_experiment(experiment_id).tags.get(tag)
    if current is None or json.loads(current).get("state") != state:
        now = int(time.time() * 1000)
        view = {"name": "joulebench: energy, time, accuracy", "createdAt": now, "updatedAt": now, "state": state}
        store.set_experiment_tag(experiment_id, tag, json.dumps(view))
    return experiment_id


def comparison_url(experiment: str, address: str = UI_ADDRESS) -> str:
    """The experiment's runs table in the comparison view, in MLflow's model-training pages."""
    return (f"{address.rstrip('/')}/#/experiments/{experiment}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={COMPARISON_VIEW}")


def ui_command(run_id: str, experiment: str) -> str:
    """How to open the run's experiment in the MLflow UI on the comparison (README's port)."""
    uri = tracking_uri()
    if is_server(uri):
        return f"open {comparison_url(experiment, uri)}"
    if uri.endswith(MLFLOW_RUN_CONTAINER_STORE) and os.environ.get("MLFLOW_RUN_ID") == run_id:
        uri = _host_store(run_id)
    return f"mlflow ui --backend-store-uri {uri}  # then open {comparison_url(experiment)}"


def _host_store(run_id: str) -> str:
    """The store, as the host names it, of a run that `mlflow run` made and mounted in this container.

    MLflow mounts the run's artifact directory at its host path; with MLflow's defaults the store
    is ``mlflow.db`` beside the ``mlruns/`` holding it. Written as a shell expression, so that the
    line is right too where the user's MLFLOW_TRACKING_URI named another store.
    """
    artifacts = Path(client().get_run(run_id).info.artifact_uri.removeprefix("file://"))
    project = artifacts.parents[3]
    default = f"sqlite:///{project / 'mlflow.db'}" if artifacts.parents[2].name == "mlruns" else DEFAULT_TRACKING_URI
    return f'"${{MLFLOW_TRACKING_URI:-{default}}}"'
