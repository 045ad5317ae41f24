"""RunConfig: everything one run needs, validated once, frozen, logged as the run's params."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from joulebench.compress import parse_method_params
from joulebench.data import check_dataset_spec
from joulebench.energy import check_sample_hz
from joulebench.errors import ConfigError
from joulebench.models import DIGITS_IMAGE_SIZE, check_model_name, image_sizes

OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001}


@dataclass(frozen=True)
class RunConfig:
    """One model × method fine-tune; every field is a validated value."""

    model: str = "resnet18"
    method: str = "baseline"
    method_params: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: Path = Path("data/datasets")
    weights: str = "imagenet"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.001
    optimizer: str = "adam"
    seed: int = 0
    image_size: int = DIGITS_IMAGE_SIZE
    device: str = "cpu"
    deterministic: bool = False  # deterministic kernels (cuDNN autotuning off)
    tf32: bool = True  # float32 matmuls and convolutions in TF32 on CUDA
    limit_train_batches: int | None = None
    experiment: str = "joulebench"
    run_name: str | None = None
    save_model: bool = False
    country: str = "USA"
    idle_seconds: float = 5.0
    inference_batches: int = 10
    sample_hz: float = 10.0
    repeat: int = 0  # index of this run among a sweep's repeats of the same combination
    parent_run_id: str | None = None  # the sweep's parent MLflow run, when run by a sweep
    metrics_json: Path | None = None  # also write the final metrics here (DVC metrics)

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2, sort_keys=True)

    def config_hash(self) -> str:
        """Identity of the result: equal hashes mean the same experiment (sweeps skip them)."""
        identity = {k: v for k, v in asdict(self).items() if k not in NOT_IN_HASH}
        return hashlib.sha256(json.dumps(identity, default=str, sort_keys=True).encode()).hexdigest()[:16]


# Fields that name, place or report a run without changing what it measures.
NOT_IN_HASH = frozenset({"experiment", "run_name", "save_model", "parent_run_id", "metrics_json"})


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda`` when one is visible, else ``cpu``; checks ``cuda:N`` exists."""
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        index = requested.partition(":")[2] or "0"
        if not index.isdigit():
            raise ConfigError(f"--device {requested!r} is malformed; accepted: auto, cpu, cuda, cuda:N")
        if not torch.cuda.is_available() or int(index) >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {requested} is not available here ({torch.cuda.device_count()} CUDA "
                "devices visible); use --device cpu or --device auto"
            )
        return f"cuda:{index}"
    raise ConfigError(f"--device {requested!r} is not accepted; use auto, cpu, cuda or cuda:N")


def _positive(name: str, value: Any, kind: type) -> Any:
    noun = "whole number" if kind is int else "number"
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {noun} > 0, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name} must be a {noun} > 0, got {value!r}")
    if not number > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if not math.isfinite(number):  # inf passes "> 0" and would train to a NaN loss
        raise ConfigError(f"{name} must be a finite {noun}, got {value!r}")
    return number


def method_params_from_file(path: Path, method: str) -> tuple[str, ...]:
    """``key=value`` pairs from the ``methods.<method>`` mapping of a YAML file (DVC's params.yaml)."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(
            f"--params-file {path} cannot be read as YAML ({type(error).__name__}); pass a readable "
            "YAML file such as the project's params.yaml"
        ) from None
    methods = document.get("methods") if isinstance(document, dict) else None
    values = methods.get(method) if isinstance(methods, dict) else None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(
            f"methods.{method} in {path} must map parameter names to values, e.g. "
            "methods: {stego: {bits: 16}}; `joulebench methods` lists them"
        )
    return tuple(f"{key}={_yaml_scalar(value)}" for key, value in (values or {}).items())


def _yaml_scalar(value: Any) -> str:
    """The text ``--param`` would carry for a YAML value (YAML's true/false, not Python's)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def make_config(
    *,
    model: str,
    method: str,
    params: tuple[str, ...] = (),
    dataset: str = "digits",
    image_size: int | None = None,
    device: str = "auto",
    optimizer: str = "adam",
    lr: float | None = None,
    epochs: Any = 3,
    batch_size: Any = 64,
    limit_train_batches: Any = None,
    **rest: Any,
) -> RunConfig:
    """Validate raw option values into a RunConfig; the first problem raises ConfigError."""
    check_model_name(model)
    params_file = rest.pop("params_file", None)
    from_file = method_params_from_file(Path(params_file), method) if params_file else ()
    # One --param may carry several comma-separated pairs (`mlflow run -P params=a=1,b=2`);
    # an empty one (the MLproject default) carries none.
    pairs = [pair for value in params for pair in value.split(",") if pair.strip()]
    method_params = parse_method_params(method, (*from_file, *pairs))
    check_dataset_spec(dataset)
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
    sizes = image_sizes(model)
    size = sizes.default(DIGITS_IMAGE_SIZE) if image_size is None else _positive("--image-size", image_size, int)
    sizes.check(model, size)
    weights = rest.pop("weights", "imagenet")
    if model == "tinynet" and weights == "imagenet":
        weights = "none"  # the test model has no pretrained weights; nothing to load
    country = str(rest.pop("country", "USA")).upper()
    if len(country) != 3 or not country.isalpha():
        raise ConfigError(f"--country {country!r} must be an ISO 3166 alpha-3 code such as USA, FRA, DEU")
    metrics_json = rest.pop("metrics_json", None)
    idle_seconds = float(rest.pop("idle_seconds", 5.0))
    if idle_seconds < 0:
        raise ConfigError(f"--idle-seconds must be ≥ 0, got {idle_seconds}; 0 skips the idle baseline")
    inference_batches = _positive("--inference-batches", rest.pop("inference_batches", 10), int)
    sample_hz = float(rest.pop("sample_hz", 10.0))
    check_sample_hz(sample_hz)
    return RunConfig(
        metrics_json=Path(metrics_json) if metrics_json else None,
        idle_seconds=idle_seconds,
        inference_batches=inference_batches,
        sample_hz=sample_hz,
        model=model,
        method=method,
        method_params=method_params,
        dataset=dataset,
        image_size=size,
        device=resolve_device(device),
        optimizer=optimizer,
        lr=DEFAULT_LR[optimizer] if lr is None else _positive("--lr", lr, float),
        epochs=_positive("--epochs", epochs, int),
        batch_size=_positive("--batch-size", batch_size, int),
        limit_train_batches=(
            None if limit_train_batches is None
            else _positive("--limit-train-batches", limit_train_batches, int)
        ),
        weights=weights,
        country=country,
        **rest,
    )
