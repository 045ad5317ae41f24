"""Weights kept in MLflow: ``--weights runs:/RUN_ID/PATH`` or ``models:/NAME/VERSION`` (``models:/NAME@ALIAS``),
downloaded from the run's store before the run opens and then read like any ``--weights`` file.

Only a state dict is taken: ``models.load_state_dict`` reads it with ``torch.load(weights_only=True)``,
so nothing from the store runs. A model logged in MLflow's PyTorch flavour is a pickled module,
whose loading would run code from the store: refused, with how to log a state dict instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
import requests
from mlflow.exceptions import MlflowException

from joulebench.errors import ConfigError, EnvironmentFault, first_line
from joulebench.tracking.store import check_server, client, is_server, tracking_uri

STATE_DICT_FILE = "state_dict.pth"  # what mlflow.pytorch.save_state_dict writes in its folder
WEIGHTS_FOLDER = "weights"  # where `train --save-model` logs the state dict: runs:/RUN_ID/weights
STORED_PREFIXES = ("runs:/", "models:/")


@dataclass(frozen=True)
class StoredWeights:
    """A state dict downloaded from the store, and where it came from."""

    path: Path
    run_id: str  # the run that logged it (a model version's run)
    model_ids: tuple[str, ...]  # that run's logged models (`--save-model`): the lineage a run records


def is_stored(weights: str) -> bool:
    return weights.startswith(STORED_PREFIXES)


def download_weights(uri: str, into: Path) -> StoredWeights:
    """The state dict ``uri`` names, downloaded into ``into``; ConfigError for a run, model or path
    that does not exist or holds no state dict, EnvironmentFault for a store that does not answer."""
    if is_server(tracking_uri()):  # within about 15 s, not after MLflow's minutes of retries
        check_server(tracking_uri())
    try:
        if uri.startswith("models:/"):
            version = _model_version(uri.removeprefix("models:/"))
            source, run_id = version.source, version.run_id or ""
        else:
            source, run_id = uri, uri.removeprefix("runs:/").split("/", 1)[0]
            client().get_run(run_id)  # a clear "no such run" before a download's own words
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into),
                                                         tracking_uri=tracking_uri()))
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise ConfigError(f"--weights {uri}: {first_line(error, 200)}; pass runs:/RUN_ID/{WEIGHTS_FOLDER} of "
                              "a run trained with --save-model, or models:/NAME/VERSION of a registered one") from None
        raise _unreachable(uri, error) from None
    except (requests.RequestException, ConnectionError) as error:
        raise _unreachable(uri, error) from None
    path = _state_dict_file(local, uri)
    return StoredWeights(path, run_id, _logged_models(run_id))


def _logged_models(run_id: str) -> tuple[str, ...]:
    """The models run ``run_id`` logged (MLflow 3's LoggedModels), which a run fine-tuned from its
    weights names as its inputs: MLflow's lineage between the two runs, shown on the run's page."""
    if not run_id:
        return ()
    store = client()
    experiment_id = store.get_run(run_id).info.experiment_id
    models = store.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    return tuple(model.model_id for model in models)


def _model_version(name_and_version: str):
    """``NAME/VERSION`` or ``NAME@ALIAS`` as the registry's model version."""
    store = client()
    if "@" in name_and_version:
        name, alias = name_and_version.rsplit("@", 1)
        return store.get_model_version_by_alias(name, alias)
    name, _, version = name_and_version.rpartition("/")
    return store.get_model_version(name, version)


def _state_dict_file(local: Path, uri: str) -> Path:
    if local.is_file():
        return local
    if (local / STATE_DICT_FILE).is_file():
        return local / STATE_DICT_FILE
    if (local / "MLmodel").is_file():
        raise ConfigError(
            f"--weights {uri} is a model in MLflow's PyTorch flavour, a pickled module whose loading "
            f"would run code from the store; pass its run's state dict, runs:/RUN_ID/{WEIGHTS_FOLDER} "
            "(`joulebench train --save-model` logs it), or log one with "
            f"mlflow.pytorch.log_state_dict(model.state_dict(), '{WEIGHTS_FOLDER}')"
        )
    raise ConfigError(f"--weights {uri} holds no state dict (no {STATE_DICT_FILE}, not a file); pass "
                      f"runs:/RUN_ID/{WEIGHTS_FOLDER} of a run trained with --save-model")


def _unreachable(uri: str, error: BaseException) -> EnvironmentFault:
    return EnvironmentFault(f"--weights {uri}: the MLflow store {tracking_uri()} did not answer "
                            f"({first_line(error, 150)}); start it or set MLFLOW_TRACKING_URI, then run again")


def register_weights(run_id: str, name: str) -> str:
    """Register run ``run_id``'s state dict (runs:/RUN_ID/weights) as a new version of model ``name``
    (made if new); its ``models:/NAME/VERSION``, what ``--weights`` takes."""
    store = client()
    try:
        store.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        store.create_registered_model(name)
    version = store.create_model_version(name, f"runs:/{run_id}/{WEIGHTS_FOLDER}", run_id=run_id)
    return f"models:/{name}/{version.version}"
