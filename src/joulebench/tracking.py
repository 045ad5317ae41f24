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
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

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
        "host": socket.gethostname(),
        "data_version": data_version,
        "git_commit": _git_commit(),
    }
    if torch.cuda.is_available():
        tags["gpu_name"] = torch.cuda.get_device_name()
        tags["cuda_version"] = str(torch.version.cuda)
    return tags


def _git_commit() -> str:
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
        return "unknown"


def config_params(config: RunConfig, weights_source: str) -> dict[str, Any]:
    """The run's params: every config field, method parameters as ``method.KEY``."""
    params: dict[str, Any] = {
        k: v for k, v in vars(config).items()
        if k not in ("method_params", "run_name", "experiment", "parent_run_id", "metrics_json")
    }
    params.update({f"method.{k}": v for k, v in config.method_params.items()})
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
        mlflow.log_params(params)

    def log_json(self, name: str, payload: Any) -> None:
        mlflow.log_text(json.dumps(payload, indent=2, default=str), name)

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
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


@contextmanager
def recorded_run(config: RunConfig, tags: dict[str, str], params: dict[str, Any]) -> Iterator[Recorder]:
    """One MLflow run: FINISHED on success, KILLED on Ctrl-C/SIGTERM, FAILED on an error."""
    experiment_id = use_store(config.experiment)
    tags = tags | {"config_hash": config.config_hash(), "repeat": str(config.repeat)}
    run = mlflow.start_run(
        run_name=config.run_name, tags=tags, log_system_metrics=True,
        experiment_id=experiment_id, parent_run_id=config.parent_run_id,
    )
    recorder = Recorder(run.info.run_id, experiment_id)
    try:
        mlflow.log_params(params)
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
