"""The calls a run makes to its tracking store: each one named, with JSON-able arguments and the
files it sends, so that the outbox (``outbox.py``) can keep one on disk and send it later.

Every write of a run goes through ``send`` and the ``CALLS`` table below. Nothing here imports the
outbox or the recorder (``runs.py``): both build on this module.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlflow
import requests
from mlflow.entities import LoggedModelInput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from joulebench.signals import uninterrupted
from joulebench.tracking.weights import WEIGHTS_FOLDER

if TYPE_CHECKING:  # torch is imported where it is used: `report` reads runs without it
    import torch

# What a store that has gone away raises, after MLflow's own retries.
STORE_FAILURES = (MlflowException, requests.exceptions.RequestException, OSError)
# What no wait mends: a value the store cannot hold (text that is not UTF-8), a local artifact
# folder that is a file or may not be written. Sending it again fails the same way for ever.
PERMANENT_FAILURES = (UnicodeError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def is_permanent(error: BaseException) -> bool:
    """Whether a failed call would fail again however long one waited (its causes included)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, PERMANENT_FAILURES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass
class Call:
    """One call to the store: its name in ``CALLS``, JSON-able arguments, files it sends."""

    name: str
    args: dict[str, Any]
    files: list[str]


def _log_batch(store: MlflowClient, run: dict[str, str], args: dict[str, Any], files: list[str]) -> None:
    store.log_batch(
        run["run_id"],
        metrics=[Metric(*values) for values in args.get("metrics", [])],
        params=[Param(*values) for values in args.get("params", [])],
        tags=[RunTag(*values) for values in args.get("tags", [])],
    )


def _log_text(store: MlflowClient, run: dict[str, str], args: dict[str, Any], files: list[str]) -> None:
    store.log_text(run["run_id"], args["text"], args["name"])


def _log_artifact(store: MlflowClient, run: dict[str, str], args: dict[str, Any], files: list[str]) -> None:
    for path in files:
        store.log_artifact(run["run_id"], path, args.get("folder"))


def _log_model(store: MlflowClient, run: dict[str, str], args: dict[str, Any], files: list[str]) -> None:
    """``files``: the model and an input example, each ``torch.save``d (``Recorder.log_model``)."""
    import torch

    model, example = (torch.load(path, map_location="cpu", weights_only=False) for path in files)
    log_pytorch_model(store, run["run_id"], run["experiment_id"], model, example)


def log_pytorch_model(store: MlflowClient, run_id: str, experiment_id: str, model: torch.nn.Module,
                      example: torch.Tensor) -> None:
    """Log ``model`` to run ``run_id`` in MLflow's PyTorch flavour; ``mlflow.pytorch.load_model``
    reads it back.

    Pickled as a whole module, not exported to pt2: an export is traced at the example's
    batch size and would refuse any other batch size when loaded back. ``run_id`` reaches
    ``Model.log`` through the flavour's keyword arguments (it has no parameter of its own);
    MLflow 3 files the logged model under the *active* experiment whatever the run's is, and
    ``runs:/RUN/model`` finds it only in the run's: the one global setting this module makes.
    """
    import torch
    import torchvision

    mlflow.set_experiment(experiment_id=experiment_id)
    with tempfile.TemporaryDirectory(prefix="joulebench-state-") as folder:  # for --weights runs:/RUN/weights
        mlflow.pytorch.save_state_dict(model.state_dict(), folder)
        store.log_artifacts(run_id, folder, WEIGHTS_FOLDER)
    # Pinning the requirements skips MLflow's slow inference of them (it re-imports the model).
    mlflow.pytorch.log_model(
        model,
        name="model",
        serialization_format="pickle",
        input_example=example.numpy(),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                          f"torchvision=={torchvision.__version__.split('+')[0]}"],
        run_id=run_id,
    )


def _log_inputs(store: MlflowClient, run: dict[str, str], args: dict[str, Any], files: list[str]) -> None:
    store.log_inputs(run["run_id"], models=[LoggedModelInput(model_id) for model_id in args["models"]])


def _update_run(store: MlflowClient, run: dict[str, str], args: dict[str, Any], files: list[str]) -> None:
    store.update_run(run["run_id"], status=args["status"], name=args.get("name"))


def _set_terminated(store: MlflowClient, run: dict[str, str], args: dict[str, Any], files: list[str]) -> None:
    store.set_terminated(run["run_id"], args["status"], args["end_time"])


CALLS: dict[str, Callable[[MlflowClient, dict[str, str], dict[str, Any], list[str]], None]] = {
    "log_batch": _log_batch,
    "log_text": _log_text,
    "log_artifact": _log_artifact,
    "log_model": _log_model,
    "log_inputs": _log_inputs,
    "update_run": _update_run,
    "set_terminated": _set_terminated,
}


def send(store: MlflowClient, run: dict[str, str], call: Call) -> None:
    """Make ``call`` to run ``run["run_id"]`` (``run["experiment_id"]`` for a model) in ``store``,
    whole: Ctrl-C or SIGTERM takes effect once it has returned."""
    with uninterrupted():
        CALLS[call.name](store, run, call.args, call.files)
