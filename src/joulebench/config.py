"""RunConfig: every option of a run, declared once, validated once, frozen.

Each field of :class:`RunConfig` is one declaration — its type, its default, its help text,
how it is validated, which commands offer it and what role it plays — and everything else is
derived from it: the click options (``cli.run_options``), :func:`make_config`'s validation
loop, the config hash, the MLflow params, a sweep child's command line, and the test that
holds both MLproject files to it. Adding an option is one field here plus its use.

A field either identifies the result (``IDENTITY``: model, method and its parameters, data,
weights, schedule, seed, device, precision, meters — hashed, logged as params, handed to sweep
children) or says where it is filed (``FILING``: experiment, run name, parent run, output
paths, save-model, quiet — none of which changes what is measured).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, InitVar, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from joulebench import names
from joulebench.errors import ConfigError, nearest_existing, why_unwritable
from joulebench.inputs import read_input_file
from joulebench.method_params import method_names, parse_method_params

# The schema is imported by every command, `--help` included: it stays free of torch. The
# validators import what they check against (models, methods, datasets, meters) when called.

DIGITS_IMAGE_SIZE = 32  # the embedded digits are 8 px, upscaled once to this
OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR = {"sgd": 0.01, "adam": 0.001}

IDENTITY = "identity"  # what the result is: hashed, logged as a param, handed to sweep children
FILING = "filing"  # where the result is filed: never hashed, never a param
TRAIN, CAPACITY, SWEEP = "train", "capacity", "sweep"
TRAINING = frozenset({TRAIN, CAPACITY, SWEEP})  # the commands that train: they share these options

# How the report compares runs that differ in an identity option (report/rows.py reads it):
SPLITS_GROUPS = "groups"  # not comparable at all: another table (the default, so a new option is never pooled)
SPLITS_ROWS = "rows"  # compared side by side: another row of the same table (model, method, …)
VARIES_IN_ROW = "repeats"  # what repeats vary: the runs of one row (seed, repeat index)

Resolved = dict[str, Any]  # the fields validated so far, in declaration order
Parser = Callable[[str, Any, Resolved], Any]  # (option flag, raw value, resolved) → value or ConfigError


def _as_given(flag: str, value: Any, resolved: Resolved) -> Any:
    return value


@dataclass(frozen=True)
class Option:
    """How a RunConfig field is offered, checked and compared (its type is the field's own)."""

    role: str
    help: str
    commands: frozenset[str]
    parse: Parser
    key: str | None  # the keyword make_config takes when it is not the field's name (params)
    cli_flag: str | None  # the command-line flag when it is not derived from the key (--param)
    # The one default: the raw value make_config starts from and `--help` shows — command-line text
    # where the field's parser should word a mistake (click would refuse "3x" for an int default in
    # its own words), None where the value is derived (lr from the optimizer, image size from the model).
    default: Any
    compare: str | None  # SPLITS_GROUPS, SPLITS_ROWS or VARIES_IN_ROW; None for FILING
    # The value every run made before this option existed used (MISSING for the original options):
    # config_hash leaves the option out at that value, so adding it keeps every earlier hash (a
    # resumed sweep skips what it finished), and the report reads a run without the param as it.
    absent_means: Any
    click: dict[str, Any]  # click.option settings beyond name, default and help

    def keyword(self, name: str) -> str:
        """The keyword make_config (and the click command) takes for field ``name``."""
        return self.key or name

    def flag(self, name: str) -> str:
        return self.cli_flag or "--" + self.keyword(name).replace("_", "-")


def option(
    default: Any,
    help: str,
    *,
    role: str = IDENTITY,
    commands: frozenset[str] = TRAINING,
    parse: Parser = _as_given,
    key: str | None = None,
    flag: str | None = None,
    compare: str = SPLITS_GROUPS,
    absent_means: Any = MISSING,
    **click: Any,
) -> Any:
    """A RunConfig field with its :class:`Option` declaration. The field itself has no default:
    only :func:`make_config` builds a RunConfig, from ``default`` when the option is not given."""
    spec = Option(role, help, frozenset(commands), parse, key, flag, default,
                  compare if role == IDENTITY else None, absent_means, click)
    return field(metadata={"option": spec})


# --------------------------------------------------------------------------- validators


def _positive(name: str, value: Any, kind: type) -> Any:
    noun = "whole number" if kind is int else "number"
    try:
        number = kind(_ascii(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {noun} > 0, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name} must be a {noun} > 0, got {value!r}")
    if not number > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if not math.isfinite(number):  # inf passes "> 0" and would train to a NaN loss
        raise ConfigError(f"{name} must be a finite {noun}, got {value!r}")
    return number


def _whole_positive(flag: str, value: Any, resolved: Resolved) -> int:
    return _positive(flag, value, int)


def _optional_whole_positive(flag: str, value: Any, resolved: Resolved) -> int | None:
    return None if value is None else _positive(flag, value, int)


def _model(flag: str, value: Any, resolved: Resolved) -> str:
    from joulebench.models import check_model_name

    check_model_name(value)
    return value


def _method_params(flag: str, value: Any, resolved: Resolved) -> dict[str, Any]:
    """``--param`` pairs over the ``--params-file`` ones (resolved just before as params_file)."""
    path = resolved.pop(PARAMS_FILE.key)  # an input of this field, not a field itself
    from_file = method_params_from_file(checked_path("--params-file", path), resolved["method"]) if path else ()
    # One --param may carry several comma-separated pairs (`mlflow run -P params=a=1,b=2`);
    # an empty one (the MLproject default) carries none.
    pairs = [pair for text in value or () for pair in text.split(",") if pair.strip()]
    return parse_method_params(resolved["method"], (*from_file, *pairs))


def _dataset(flag: str, value: Any, resolved: Resolved) -> str:
    from joulebench.data import check_dataset_spec

    return check_dataset_spec(value)


# Weights kept in MLflow (tracking/weights.py downloads them): runs:/RUN_ID/PATH, models:/NAME/VERSION,
# models:/NAME@ALIAS. Only their form is checked here; whether they exist, before the run opens.
STORED_WEIGHTS = re.compile(r"runs:/[0-9A-Za-z_-]+/\S+|models:/[^/@\s]+(/[0-9]+|@[\w-]+)")


def _weights(flag: str, value: Any, resolved: Resolved) -> str:
    if str(value).startswith(("runs:/", "models:/")) and not STORED_WEIGHTS.fullmatch(str(value)):
        raise ConfigError(f"--weights {value!r} is not a weights URI of MLflow; accepted: runs:/RUN_ID/PATH, "
                          "models:/NAME/VERSION or models:/NAME@ALIAS")
    # the test model has no pretrained weights; nothing to load
    return "none" if resolved["model"] == "tinynet" and value == "imagenet" else value


def _registered_name(flag: str, value: Any, resolved: Resolved) -> str | None:
    """A registered model's name as models:/NAME/VERSION can carry it back: not blank, printable,
    UTF-8, without "/" or "@" (they end NAME in the URI), at most MLflow's 256 characters."""
    if value is None:
        return None
    text = str(value)
    if not text.strip() or not text.isprintable() or "/" in text or "@" in text or len(text) > 256:
        raise ConfigError(f"{flag} {text[:80]!r} cannot name a registered model; pass a name of 1–256 "
                          "printable characters without / or @, e.g. digits-pretrained")
    _require_utf8(flag, text, "pass a name in UTF-8")
    return text


def _optimizer(flag: str, value: Any, resolved: Resolved) -> str:
    if value not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {value!r}; accepted: {', '.join(OPTIMIZERS)}")
    return value


def _lr(flag: str, value: Any, resolved: Resolved) -> float:
    return DEFAULT_LR[resolved["optimizer"]] if value is None else _positive(flag, value, float)


def _image_size(flag: str, value: Any, resolved: Resolved) -> int:
    from joulebench.models import image_sizes

    model = resolved["model"]
    sizes = image_sizes(model)
    size = sizes.default(DIGITS_IMAGE_SIZE) if value is None else _positive(flag, value, int)
    sizes.check(model, size)
    _check_batch_fits(flag, resolved["batch_size"], size)
    return size


def _check_batch_fits(flag: str, batch_size: int, size: int) -> None:
    """One batch of input images (3 × size² float32 each) must fit in this host's memory, where
    every batch is made before it moves to a device: refused with the estimate, not a MemoryError
    mid-run. Activations need more; this is the floor no run can go under."""
    needed = batch_size * 3 * size * size * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory:
        raise ConfigError(
            f"--batch-size {batch_size} at {flag} {size} needs {needed / 2**30:,.0f} GiB for one batch of input "
            f"alone, and this host has {memory / 2**30:.0f} GiB; lower --batch-size or {flag}"
        )


def _device(flag: str, value: Any, resolved: Resolved) -> str:
    return resolve_device(value)


def _country(flag: str, value: Any, resolved: Resolved) -> str:
    country = str(value).upper()
    if len(country) != 3 or not country.isalpha():
        raise ConfigError(f"{flag} {country!r} must be an ISO 3166 alpha-3 code such as USA, FRA, DEU")
    return country


def _idle_seconds(flag: str, value: Any, resolved: Resolved) -> float:
    seconds = _number(flag, value, float)
    if not 0 <= seconds < math.inf:  # also refuses nan, which compares false with everything
        raise ConfigError(f"{flag} must be a finite number ≥ 0, got {value!r}; 0 skips the idle baseline")
    return seconds


def _sample_hz(flag: str, value: Any, resolved: Resolved) -> float:
    from joulebench.energy import check_sample_hz

    hz = _number(flag, value, float)
    check_sample_hz(hz)
    return hz


def checked_path(flag: str, value: Any) -> Path:
    """A path as a user may pass it, or one ConfigError line: text this system can name a file
    by (no NUL or control characters, names and length within the filesystem's limits) and that
    MLflow can record (UTF-8)."""
    text = str(value)
    if any(not c.isprintable() for c in text):
        raise ConfigError(f"{flag} {text!r} holds control characters; pass a plain path")
    _require_utf8(flag, text, "rename it or pass a path in UTF-8")
    longest = max((len(part.encode()) for part in text.split("/")), default=0)
    if longest > NAME_MAX or len(text.encode()) > PATH_MAX:
        raise ConfigError(f"{flag} {text!r} is longer than a path may be here (a name ≤ {NAME_MAX} bytes, "
                          f"a path ≤ {PATH_MAX}); pass a shorter one")
    return Path(text)


def _require_utf8(flag: str, text: str, fix: str) -> None:
    """Text MLflow records (a param, an experiment name) must be UTF-8: a name in another
    encoding reaches Python as lone surrogates, which no store can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{flag} {text!r} is not UTF-8 (MLflow records it); {fix}") from None


NAME_MAX, PATH_MAX = 255, 4096  # Linux's limits, the same on every filesystem it mounts for us


def _optional_path(flag: str, value: Any, resolved: Resolved) -> Path | None:
    return checked_path(flag, value) if value else None


def _output_file(flag: str, value: Any, resolved: Resolved) -> Path | None:
    """A file the run will write at its end, checked now: a finished run must not fail on it."""
    if not value:
        return None
    path = checked_path(flag, value)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; pass a file path such as {path / 'metrics.json'}")
    folder = nearest_existing(path.parent)  # it must be a writable directory
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path} cannot be written: {folder} is a file, not a directory; "
                          "pass a path under a directory")
    reason = why_unwritable(path if path.exists() else folder)
    if reason:
        raise ConfigError(f"{flag} {path} cannot be written: {reason}; pass a path this user may write")
    for other in option_fields():  # the outputs resolved before this one: one file each
        taken = resolved.get(other.name)
        if other.metadata["option"].parse is _output_file and isinstance(taken, Path) \
                and taken.resolve() == path.resolve():
            raise ConfigError(f"{flag} {path} is also {other.metadata['option'].flag(other.name)}: each "
                              "output needs its own file; pass another path")
    return path


MAX_EXPERIMENT_NAME = 500  # MLflow's limit (mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH)


def _experiment(flag: str, value: Any, resolved: Resolved) -> str:
    name = str(value).strip()
    if not name:
        raise ConfigError(f"{flag} is empty; pass an MLflow experiment name, e.g. {flag} joulebench")
    if len(name) > MAX_EXPERIMENT_NAME or not name.isprintable():
        raise ConfigError(f"{flag} {name!r} is not an MLflow experiment name: at most {MAX_EXPERIMENT_NAME} "
                          "printable characters; pass a shorter one, e.g. joulebench")
    _require_utf8(flag, name, "pass an experiment name in UTF-8")
    return name

def _path(flag: str, value: Any, resolved: Resolved) -> Path:
    return checked_path(flag, value)


def _ascii(value: Any) -> Any:
    """Number text as written with 0-9: Python reads "٣" or "１" as 3 and 1, a typo here (ValueError)."""
    if isinstance(value, str) and not value.isascii():
        raise ValueError(value)
    return value


def _number(flag: str, value: Any, kind: type) -> Any:
    try:
        return kind(_ascii(value))
    except (TypeError, ValueError):
        noun = "whole number" if kind is int else "number"
        raise ConfigError(f"{flag} must be a {noun}, got {value!r}") from None


def _whole(flag: str, value: Any, resolved: Resolved) -> int:
    return _number(flag, value, int)


MAX_SEED = 2**32 - 1  # NumPy's and scikit-learn's seeds are unsigned 32-bit


def _seed(flag: str, value: Any, resolved: Resolved) -> int:
    seed = _number(flag, value, int)
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{flag} must be a whole number from 0 to {MAX_SEED}, got {value!r}")
    return seed


BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _bool(flag: str, value: Any, resolved: Resolved) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() not in BOOL_TEXT:
        raise ConfigError(f"{flag} must be true or false, got {value!r}")
    return BOOL_TEXT[str(value).lower()]


# --------------------------------------------------------------------------- the schema


# Command-line hints (cli.py turns them into click types): `type` is int, float, bool, FILE,
# FOLDER or a tuple of choices; the rest are click.option settings as they are.
FILE, FOLDER = "file", "folder"
BOOL_OPTION = {"is_flag": False, "flag_value": True, "type": bool}  # `--x` alone, or `--x false`


@dataclass(frozen=True)
class RunConfig:
    """One model × method fine-tune; every field is a validated value (see the module docstring)."""

    model: str = option(
        "resnet18", "One of the paper's nine (densenet121 … vgg16), tinynet, or any torchvision classifier.",
        commands={TRAIN, CAPACITY}, parse=_model, compare=SPLITS_ROWS)
    method: str = option(
        "baseline", f"{' | '.join(method_names())} (`joulebench methods` lists their parameters).",
        commands={TRAIN}, compare=SPLITS_ROWS)  # checked with its parameters, by method_params (declared next)
    # Parsed from two inputs: --params-file (declared as PARAMS_FILE below) and --param.
    method_params: dict[str, Any] = option(
        (), "Method parameter (repeatable).", commands={TRAIN}, parse=_method_params, key="params", flag="--param",
        compare=SPLITS_ROWS, multiple=True, metavar="KEY=VALUE")
    dataset: str = option(
        "digits", "digits (embedded, no download; digits:0-4 its classes 0–4) | cifar10 | imagefolder:PATH",
        parse=_dataset)
    data_dir: Path = option(
        "data/datasets", "Where DVC-tracked datasets live.", parse=_path, type=FOLDER)
    weights: str = option(
        "imagenet", "imagenet (data/weights/<model>-imagenet.pth, hash-checked) | none | PATH | "
        "runs:/RUN_ID/weights | models:/NAME/VERSION (a state dict in MLflow)", parse=_weights)
    epochs: int = option(3, "Training epochs (> 0).", parse=_whole_positive)
    batch_size: int = option(64, "Batch size (> 0).", parse=_whole_positive)
    optimizer: str = option(  # before lr, whose default it decides; adam listed first, the default
        "adam", "adam, or sgd with momentum 0.9.", parse=_optimizer, type=OPTIMIZERS[::-1])
    lr: float = option(
        None,
        f"Learning rate (> 0) [default: {DEFAULT_LR['adam']:g} adam, {DEFAULT_LR['sgd']:g} sgd].",
        parse=_lr)
    seed: int = option(
        0, f"Seed of split, init and order (0 … {MAX_SEED}).", parse=_seed, compare=VARIES_IN_ROW, type=int)
    image_size: int = option(
        None,
        f"Input side in pixels [default: {DIGITS_IMAGE_SIZE} on digits, or the model's minimum/fixed size].",
        parse=_image_size, compare=SPLITS_ROWS)
    device: str = option("auto", "auto | cpu | cuda | cuda:N", parse=_device)
    deterministic: bool = option(
        False, "Deterministic kernels (cuDNN autotuning off); `--deterministic` alone means true.",
        parse=_bool, **BOOL_OPTION)
    tf32: bool = option(
        True, "float32 matmuls and convolutions in TF32 on CUDA; `--tf32 false` for IEEE float32.",
        parse=_bool, **BOOL_OPTION)
    limit_train_batches: int | None = option(
        None, "Train at most N batches per epoch (quick runs).", parse=_optional_whole_positive)
    country: str = option(
        "USA", "ISO 3166 alpha-3 code for CodeCarbon's grid carbon intensity.", parse=_country)
    idle_seconds: float = option(
        5.0, "Length of the idle-power baseline before work.", parse=_idle_seconds, type=float)
    inference_batches: int = option(
        10, "Batches in the inference benchmark after training.", parse=_whole_positive, type=int)
    sample_hz: float = option(
        10.0, "GPU power sampling rate (power trace).", parse=_sample_hz, type=float)
    repeat: int = option(  # index of this run among a sweep's repeats of the same combination
        0, "Repeat index (sweeps set it).", commands={TRAIN}, parse=_whole, compare=VARIES_IN_ROW, type=int)

    experiment: str = option("joulebench", "MLflow experiment name.", role=FILING, parse=_experiment)
    run_name: str | None = option(
        None, "MLflow run name [default: MODEL-METHOD, e.g. resnet18-stego].", role=FILING,
        commands={TRAIN, CAPACITY})
    quiet: bool = option(
        False, "No progress bars.", role=FILING, commands={TRAIN, CAPACITY}, parse=_bool, is_flag=True)
    save_model: bool = option(
        False, "Log the fine-tuned model (mlflow.pytorch flavour).", role=FILING, commands={TRAIN},
        parse=_bool, is_flag=True)
    register_model: str | None = option(
        None, "Also register the fine-tuned weights (runs:/ID/weights) as a new version of this model "
        "name in MLflow's registry (implies --save-model); prints models:/NAME/VERSION for --weights.",
        role=FILING, commands={TRAIN}, parse=_registered_name)
    metrics_json: Path | None = option(
        None, "Also write the final metrics to this JSON file (DVC metrics).", role=FILING,
        commands={TRAIN}, parse=_output_file, type=FILE)
    run_json: Path | None = option(
        None, "When the run has FINISHED, write its run id and config hash to this JSON file "
        "(DVC's train stages do, for `report --runs-from`).", role=FILING, commands={TRAIN},
        parse=_output_file, type=FILE)
    parent_run_id: str | None = option(
        None, "Nest the run under this MLflow run (sweeps set it).", role=FILING, commands={TRAIN})

    built_by: InitVar[object]  # make_config's token: no other path builds a RunConfig it did not validate

    def __post_init__(self, built_by: object) -> None:
        if built_by is not _MAKE_CONFIG:
            raise TypeError("a RunConfig is built by config.make_config(**options), which validates it "
                            "(or derived by config.as_baseline / config.on_device)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, indent=2, sort_keys=True)

    def identity(self) -> dict[str, Any]:
        """The fields that identify the result, by name."""
        return {f.name: getattr(self, f.name) for f in _fields(self, IDENTITY)}

    def params(self) -> dict[str, Any]:
        """The run's MLflow params: every identity field, the method's parameters as ``method.KEY``."""
        identity = self.identity()
        method_params = identity.pop("method_params")
        return identity | {names.method_param(key): value for key, value in method_params.items()}

    def config_hash(self) -> str:
        """Identity of the result: equal hashes mean the same experiment (sweeps skip them). An
        option at the value runs had before it existed is left out, so adding one keeps every hash."""
        hashed = {f.name: getattr(self, f.name) for f in _fields(self, IDENTITY)
                  if getattr(self, f.name) != f.metadata["option"].absent_means}
        return hashlib.sha256(json.dumps(hashed, default=str, sort_keys=True).encode()).hexdigest()[:16]


_MAKE_CONFIG = object()  # the token RunConfig requires; config.py alone holds it


def as_baseline(config: RunConfig) -> RunConfig:
    """The same settings, seed and repeat, uncompressed: the run ``config`` is compared against
    (valid whenever ``config`` is: the baseline has no parameters and no rules of its own)."""
    return replace(config, method="baseline", method_params={}, built_by=_MAKE_CONFIG)


def on_device(config: RunConfig, device: str) -> RunConfig:
    """``config`` as a child on a machine this process cannot look at (a pod) builds it: with the
    device it will resolve there (sweep.placement chose it: cpu, or cuda:0 for a pinned GPU)."""
    return replace(config, device=device, built_by=_MAKE_CONFIG)


# An input of method_params, not a field: where --param's defaults come from (DVC's params.yaml).
PARAMS_FILE = Option(
    IDENTITY, "YAML (DVC's params.yaml) whose methods.<METHOD> mapping gives the method's parameters; "
    "--param overrides.", frozenset({TRAIN}), _optional_path, "params_file", None, None, None, MISSING,
    {"type": FILE},
)


def option_fields(role: str | None = None) -> Iterator[Field]:
    """RunConfig's fields in declaration order (only ``role``'s when given)."""
    return _fields(RunConfig, role)


def _fields(schema: Any, role: str | None) -> Iterator[Field]:
    return (f for f in fields(schema) if role is None or f.metadata["option"].role == role)


def declaration(name: str) -> Option:
    """The Option of a RunConfig field."""
    return RunConfig.__dataclass_fields__[name].metadata["option"]


def make_config(**raw: Any) -> RunConfig:
    """Validate raw option values (command-line text or values) into a RunConfig.

    Every field is resolved in declaration order from its raw value or its command-line
    default; the first problem raises ConfigError. A key no field declares is a bug.
    """
    keys = {f.metadata["option"].keyword(f.name) for f in option_fields()} | {PARAMS_FILE.key}
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise TypeError(f"make_config got options no RunConfig field declares: {', '.join(unknown)}")
    resolved: Resolved = {PARAMS_FILE.key: raw.get(PARAMS_FILE.key)}
    for f in option_fields():
        spec: Option = f.metadata["option"]
        resolved[f.name] = spec.parse(spec.flag(f.name), raw.get(spec.keyword(f.name), spec.default), resolved)
    _check_rules_between_options(resolved)
    return RunConfig(**resolved, built_by=_MAKE_CONFIG)


def _check_rules_between_options(resolved: Resolved) -> None:
    """The rules no single option's parser can see. They are checked here, before any run opens,
    so a sweep refuses a cell that breaks one while it builds the grid: after that, a cell that
    fails does so for its own reasons (a diverging loss), and the sweep goes past it."""
    from joulebench.method_params import device_problem
    from joulebench.models import has_batch_norm

    problem = device_problem(resolved["method"], resolved["method_params"], resolved["device"].partition(":")[0])
    if problem:
        raise ConfigError(problem)
    if resolved["batch_size"] < 2 and has_batch_norm(resolved["model"]):
        raise ConfigError(f"--batch-size {resolved['batch_size']} cannot train {resolved['model']}: its BatchNorm "
                          "layers need at least 2 samples per batch; pass --batch-size 2 or more")


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda`` when one is visible, else ``cpu``; checks ``cuda:N`` exists."""
    import torch

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


def method_params_from_file(path: Path, method: str) -> tuple[str, ...]:
    """``key=value`` pairs from the ``methods.<method>`` mapping of a YAML file (DVC's params.yaml)."""
    import yaml

    fix = "pass a readable YAML file such as the project's params.yaml"
    text = read_input_file("--params-file", path, fix)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"--params-file {path} cannot be read as YAML ({type(error).__name__}); {fix}") from None
    if not isinstance(document, dict) or not isinstance(document.get("methods", {}), dict):
        raise ConfigError(
            f"--params-file {path} must be a YAML mapping with a methods mapping, e.g. "
            "methods: {stego: {bits: 16}}; the project's params.yaml is one"
        )
    values = document.get("methods", {}).get(method)
    if values is not None and not isinstance(values, dict):
        raise ConfigError(
            f"methods.{method} in {path} must map parameter names to values, e.g. "
            "methods: {stego: {bits: 16}}; `joulebench methods` lists them"
        )
    for key, value in (values or {}).items():
        if not isinstance(value, (str, int, float, bool)):  # a list or mapping (or an alias bomb's)
            raise ConfigError(f"methods.{method}.{key} in {path} must be a single value such as 16 or true, "
                              f"got a {type(value).__name__}; `joulebench methods` lists the parameters")
    return tuple(f"{key}={_yaml_scalar(value)}" for key, value in (values or {}).items())


def _yaml_scalar(value: Any) -> str:
    """The text ``--param`` would carry for a YAML value (YAML's true/false, not Python's)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
