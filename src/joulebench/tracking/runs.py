"""One MLflow run per ``train`` (or ``capacity``): opened, logged to through a client, closed
in a true state.

The recorder logs through an ``MlflowClient`` with its run id, never through MLflow's global
active run, so nothing here depends on which run another part of the process started.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.time import get_current_time_millis

from joulebench import names
from joulebench.config import RunConfig
from joulebench.tracking.store import client, tracking_uri, use_store

if TYPE_CHECKING:  # torch is imported where it is used: `report` reads runs without it
    import torch


def environment_tags(data_version: str) -> dict[str, str]:
    """Versions and host facts a reader needs to trust or reproduce the numbers."""
    import torch
    import torchvision

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
    """The run's params: the fields that identify its result (``RunConfig.params``), and where
    its weights came from."""
    return config.params() | {"weights_source": weights_source}


@dataclass
class Recorder:
    """Logging calls for one open run, through ``client``; handed to the pipeline."""

    run_id: str
    experiment_id: str
    client: MlflowClient = field(default_factory=client)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._log_metrics(metrics, step=epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self._log_metrics(metrics, step=0)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = get_current_time_millis()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params the run does not have yet.

        ``mlflow run`` logs the entry point's parameters first, in the user's spelling
        (``-P lr=1e-3``); MLflow refuses to log a key again with another spelling (``0.001``).
        """
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def log_json(self, name: str, payload: Any) -> None:
        self.client.log_text(self.run_id, json.dumps(payload, indent=2, default=str), name)

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        buffer = io.StringIO()
        # Columns from every row: an epoch too short to measure has no energy keys.
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        self.client.log_text(self.run_id, buffer.getvalue(), name)

    def log_files(self, paths: list[Path], folder: str | None = None) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model in MLflow's PyTorch flavour; ``mlflow.pytorch.load_model`` reads it back.

        Pickled as a whole module, not exported to pt2: an export is traced at the example's
        batch size and would refuse any other batch size when loaded back. ``run_id`` reaches
        ``Model.log`` through the flavour's keyword arguments (it has no parameter of its own);
        MLflow 3 files the logged model under the *active* experiment whatever the run's is, and
        ``runs:/RUN/model`` finds it only in the run's: the one global setting this module makes.
        """
        import torch
        import torchvision

        mlflow.set_experiment(experiment_id=self.experiment_id)
        # Pinning the requirements skips MLflow's slow inference of them (it re-imports the model).
        mlflow.pytorch.log_model(
            model.cpu().eval(),
            name="model",
            serialization_format="pickle",
            input_example=example.cpu().numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"torchvision=={torchvision.__version__.split('+')[0]}"],
            run_id=self.run_id,
        )


def _open_run(store: MlflowClient, experiment_id: str, config: RunConfig, tags: dict[str, str]) -> str:
    """A new run, or the one ``mlflow run`` made for this process (``MLFLOW_RUN_ID``)."""
    launched = os.environ.get("MLFLOW_RUN_ID")
    if launched:
        store.update_run(launched, status=RunStatus.to_string(RunStatus.RUNNING), name=config.run_name)
        store.log_batch(launched, tags=[RunTag(k, v) for k, v in tags.items()])
        return launched
    if config.parent_run_id:
        tags = tags | {MLFLOW_PARENT_RUN_ID: config.parent_run_id}
    # resolve_tags adds what mlflow.start_run would: user, source name and type, git commit.
    return store.create_run(experiment_id, tags=resolve_tags(tags), run_name=config.run_name).info.run_id


@contextmanager
def recorded_run(
    config: RunConfig, tags: dict[str, str], params: dict[str, Any], command: str = "train"
) -> Iterator[Recorder]:
    """One MLflow run: FINISHED on success, KILLED on Ctrl-C/SIGTERM, FAILED on an error.

    Only ``train`` runs carry ``config_hash``: a sweep that finds it may skip the combination.
    MLflow's system metrics (``system/*``: CPU, memory, GPU) are sampled while it is open.
    """
    experiment_id = use_store(config.experiment)
    tags = tags | {"joulebench.command": command, "repeat": str(config.repeat)}
    if command == "train":
        tags[names.CONFIG_HASH] = config.config_hash()
    store = client()
    recorder = Recorder(_open_run(store, experiment_id, config, tags), experiment_id, store)
    system_metrics = SystemMetricsMonitor(recorder.run_id, tracking_uri=tracking_uri())
    system_metrics.start()
    status = RunStatus.FAILED
    try:
        recorder.log_params(params)
        store.log_text(recorder.run_id, config.to_json(), "config.json")
        yield recorder
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    finally:
        system_metrics.finish()
        store.set_terminated(recorder.run_id, RunStatus.to_string(status))
