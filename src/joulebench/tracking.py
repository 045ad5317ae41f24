"""The only module that imports mlflow: one MLflow run per ``train``, and reading runs back.

Default store: ``sqlite:///mlflow.db`` in the working directory; ``MLFLOW_TRACKING_URI``
points elsewhere (a server, another file).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
import torchvision
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from joulebench import names
from joulebench.config import RunConfig
from joulebench.errors import ConfigError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_store(experiment: str) -> str:
    """Point MLflow at the store and experiment; ConfigError if it cannot be written."""
    uri = tracking_uri()
    _check_local_path_writable(uri)
    mlflow.set_tracking_uri(uri)
    launched_run = os.environ.get("MLFLOW_RUN_ID")
    if launched_run:  # started by `mlflow run`, which made the run and chose its experiment
        return MlflowClient().get_run(launched_run).info.experiment_id
    try:
        return mlflow.set_experiment(experiment).experiment_id
    except Exception as error:  # any failure here means the store is unusable
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"cannot use the MLflow store {uri} ({first_line}); set MLFLOW_TRACKING_URI to a "
            "writable sqlite:///PATH or a running server's http://HOST:PORT"
        ) from None


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


def environment_tags(data_version: str) -> dict[str, str]:
    """Versions and host facts a reader needs to trust or reproduce the numbers."""
    tags = {
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "python_version": platform.python_version(),
        names.HOST: socket.gethostname(),
        "data_version": data_version,
        "git_commit": _git_commit(),
    }
    if torch.cuda.is_available():
        tags[names.GPU_NAME] = torch.cuda.get_device_name()
        tags["cuda_version"] = str(torch.version.cuda)
    return tags


def _git_commit() -> str:
    """HEAD (``-dirty`` with uncommitted changes); in an image, which has no .git, the commit
    it was built from (``--build-arg GIT_COMMIT=...`` → ``JOULEBENCH_GIT_COMMIT``)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("JOULEBENCH_GIT_COMMIT") or "unknown"


def config_params(config: RunConfig, weights_source: str) -> dict[str, Any]:
    """The run's params: every config field, method parameters as ``method.KEY``."""
    params: dict[str, Any] = {
        k: v for k, v in vars(config).items()
        if k not in ("method_params", "run_name", "experiment", "parent_run_id", "metrics_json")
    }
    params.update({names.method_param(k): v for k, v in config.method_params.items()})
    params["weights_source"] = weights_source
    return params


@dataclass
class Recorder:
    """Logging calls for the active run; handed to the CLI while the run is open."""

    run_id: str
    experiment_id: str

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_params(self, params: dict[str, Any]) -> None:
        _log_new_params(params)

    def log_json(self, name: str, payload: Any) -> None:
        mlflow.log_text(json.dumps(payload, indent=2, default=str), name)

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        buffer = io.StringIO()
        # Columns from every row: an epoch too short to measure has no energy keys.
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        mlflow.log_text(buffer.getvalue(), name)

    def log_files(self, paths: list[Path], folder: str | None = None) -> None:
        for path in paths:
            if path.is_file():
                mlflow.log_artifact(str(path), folder)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model in MLflow's PyTorch flavour; ``mlflow.pytorch.load_model`` reads it back.

        Pickled as a whole module, not exported to pt2: an export is traced at the example's
        batch size and would refuse any other batch size when loaded back.
        """
        # Pinning the requirements skips MLflow's slow inference of them (it re-imports the model).
        mlflow.pytorch.log_model(
            model.cpu().eval(),
            name="model",
            serialization_format="pickle",
            input_example=example.cpu().numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"torchvision=={torchvision.__version__.split('+')[0]}"],
        )


def _log_new_params(params: dict[str, Any]) -> None:
    """Log params the active run does not have yet.

    ``mlflow run`` logs the entry point's parameters first, in the user's spelling
    (``-P lr=1e-3``); MLflow refuses to log a key again with another spelling (``0.001``).
    """
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({key: value for key, value in params.items() if key not in existing})


@contextmanager
def recorded_run(
    config: RunConfig, tags: dict[str, str], params: dict[str, Any], command: str = "train"
) -> Iterator[Recorder]:
    """One MLflow run: FINISHED on success, KILLED on Ctrl-C/SIGTERM, FAILED on an error.

    Only ``train`` runs carry ``config_hash``: a sweep that finds it may skip the combination.
    """
    experiment_id = use_store(config.experiment)
    tags = tags | {"joulebench.command": command, "repeat": str(config.repeat)}
    if command == "train":
        tags[names.CONFIG_HASH] = config.config_hash()
    run = mlflow.start_run(
        run_name=config.run_name, tags=tags, log_system_metrics=True,
        experiment_id=experiment_id, parent_run_id=config.parent_run_id,
    )
    recorder = Recorder(run.info.run_id, experiment_id)
    try:
        _log_new_params(params)
        mlflow.log_text(config.to_json(), "config.json")
        yield recorder
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def ui_command(run_id: str, experiment_id: str) -> str:
    """How to open this run in the MLflow UI."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (
        f"mlflow ui --backend-store-uri {uri}  # then open "
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
    )


# --------------------------------------------------------------------------- sweeps and reports
# ``joulebench sweep`` nests one ``train`` run per combination under a parent run tagged
# ``run_kind=sweep``; ``joulebench report`` reads the finished ones back and logs its files on a
# run tagged ``run_kind=report``. Neither kind carries ``config_hash``: they hold no measurement.

RUN_KIND_TAG = "run_kind"
SWEEP_HASH_TAG = "sweep_hash"
GRID_ARTIFACT = "sweep/grid.json"


def _client() -> MlflowClient:
    return MlflowClient(tracking_uri())


def _all_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Any]:
    """Every matching run, oldest first, across result pages."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, order_by=["attributes.start_time ASC"], page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


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
    client = _client()
    previous = [] if force else client.search_runs(
        [experiment_id], f"tags.{RUN_KIND_TAG} = 'sweep' and tags.{SWEEP_HASH_TAG} = '{sweep_hash}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if previous:
        run_id = previous[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    else:
        run = client.create_run(
            experiment_id, run_name=f"sweep-{sweep_hash[:8]}",
            tags={RUN_KIND_TAG: "sweep", SWEEP_HASH_TAG: sweep_hash},
        )
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
        client.log_dict(run_id, grid, GRID_ARTIFACT)
    client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
    return SweepRun(run_id, experiment_id, resumed=bool(previous))


def finished_config_hashes(experiment_id: str) -> set[str]:
    """The config hashes that have a FINISHED run in the experiment (a sweep skips those)."""
    runs = _all_runs(_client(), experiment_id, "attributes.status = 'FINISHED'")
    return {run.data.tags[names.CONFIG_HASH] for run in runs if names.CONFIG_HASH in run.data.tags}


def child_epochs_done(parent_run_id: str, config_hash: str) -> int | None:
    """Epochs a sweep's running child has logged so far; None before its run exists."""
    client = _client()
    parent = client.get_run(parent_run_id)
    running = client.search_runs(
        [parent.info.experiment_id],
        f"tags.{names.CONFIG_HASH} = '{config_hash}' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' "
        "and attributes.status = 'RUNNING'",
        max_results=1,
    )
    if not running:
        return None
    return len(client.get_metric_history(running[0].info.run_id, names.VAL_ACCURACY))


def end_sweep_run(run_id: str, status: str, log_dir: Path) -> None:
    """Log the children's output under ``logs/`` and close the parent run with ``status``."""
    client = _client()
    if any(log_dir.iterdir()):
        client.log_artifacts(run_id, str(log_dir), "logs")
    client.set_terminated(run_id, status)


def close_if_open(run_id: str, status: str) -> None:
    """End a run that its own process could not end (its pod never started, or was stopped)."""
    client = _client()
    if not RunStatus.is_terminated(RunStatus.from_string(client.get_run(run_id).info.status)):
        client.set_terminated(run_id, status)


def adopt_child(run_id: str, parent_run_id: str) -> None:
    """Nest a run MLflow Projects created (it cannot be given a parent) under the sweep."""
    _client().set_tag(run_id, MLFLOW_PARENT_RUN_ID, parent_run_id)


def check_cluster_reachable_store() -> None:
    """Pods log to the store themselves: it must be a server, not a file on this machine."""
    if os.environ.get("KUBE_MLFLOW_TRACKING_URI") or tracking_uri().startswith(("http://", "https://")):
        return
    raise ConfigError(
        f"pods cannot reach the MLflow store {tracking_uri()}; set MLFLOW_TRACKING_URI (or "
        "KUBE_MLFLOW_TRACKING_URI) to an http(s):// tracking server the cluster can reach"
    )


@dataclass
class KubernetesProjectRun:
    """An MLflow Project run submitted to Kubernetes: its run id, state, and a way to stop it."""

    submitted: Any  # mlflow.projects.kubernetes.KubernetesSubmittedRun

    @property
    def run_id(self) -> str:
        return self.submitted.run_id

    def state(self) -> str:
        status = self.submitted.get_status()
        return status if isinstance(status, str) else RunStatus.to_string(status)

    def cancel(self) -> None:
        self.submitted.cancel()


def submit_kubernetes_run(
    project_dir: Path, entry_point: str, parameters: dict[str, str], backend_config: dict[str, Any],
    experiment_id: str, run_name: str,
) -> KubernetesProjectRun:
    """Build and push the project's image, create the Job, return without waiting.

    What stops a submission here is the environment (no docker, no registry login, no kube
    context, no rights in the namespace): ConfigError, one line.
    """
    import mlflow.projects

    try:
        import docker  # noqa: F401  MLflow's Kubernetes backend builds and pushes the image with it
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError as error:
        raise ConfigError(
            f"the kubernetes backend needs the {error.name} package; pip install 'kubernetes<36' docker"
        ) from None
    try:
        submitted = mlflow.projects.run(
            str(project_dir), entry_point=entry_point, parameters=parameters, experiment_id=experiment_id,
            backend="kubernetes", backend_config=backend_config, synchronous=False, build_image=True,
            run_name=run_name,
        )
    except (mlflow.exceptions.ExecutionException, ConfigException, ApiException) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ConfigError(
            f"MLflow could not submit {run_name} to Kubernetes ({reason}); check docker, the registry "
            "login, the kube context and docs/sweep-and-report.md"
        ) from None
    return KubernetesProjectRun(submitted)


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


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments(max_results=50))
        raise ConfigError(
            f"no experiment {experiment!r} in the MLflow store {tracking_uri()}; accepted: "
            f"{', '.join(names) or 'none yet (run joulebench sweep first)'}; pass --experiment NAME"
        )
    return found.experiment_id


def finished_measured_runs(experiment: str) -> list[RunRecord]:
    """Every FINISHED run of the experiment that carries a ``config_hash`` (a measurement)."""
    client = _client()
    runs = _all_runs(client, _experiment_id(client, experiment), "attributes.status = 'FINISHED'")
    return [
        RunRecord(run.info.run_id, run.info.run_name, run.info.start_time, dict(run.data.params),
                  dict(run.data.tags), dict(run.data.metrics))
        for run in runs if names.CONFIG_HASH in run.data.tags
    ]


def sweep_grid_hashes(experiment: str, parent_run_id: str) -> set[str]:
    """The config hashes of a sweep's grid (its parent run's ``sweep/grid.json``), or none."""
    client = _client()
    experiment_id = _experiment_id(client, experiment)
    try:
        parent = client.get_run(parent_run_id)
    except mlflow.exceptions.MlflowException:
        parent = None
    if parent is None or parent.info.experiment_id != experiment_id:
        raise ConfigError(
            f"--parent {parent_run_id} is not a run of experiment {experiment!r}; the sweep's last "
            "lines name its parent run (or pass the experiment that holds it with --experiment)"
        )
    if GRID_ARTIFACT not in {a.path for a in client.list_artifacts(parent_run_id, "sweep")}:
        return set()
    grid = mlflow.artifacts.load_dict(f"{parent.info.artifact_uri}/{GRID_ARTIFACT}")
    return {row[names.CONFIG_HASH] for row in grid}


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) pairs, in step order."""
    return sorted((m.step, m.value) for m in _client().get_metric_history(run_id, key))


def log_report_run(experiment: str, files: list[Path], params: dict[str, Any]) -> str:
    """A FINISHED run holding the report's files under ``report/``, browsable in the UI."""
    client = _client()
    run = client.create_run(
        _experiment_id(client, experiment), run_name="report", tags={RUN_KIND_TAG: "report"}
    )
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
    for path in files:
        client.log_artifact(run_id, str(path), "report")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
