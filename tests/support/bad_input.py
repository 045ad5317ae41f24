"""Bad input, one table: each row an input a user gives, the exit code, a fragment of the one
line it must print, and the statuses of the runs it must leave (none: nothing opened). The checks
are generated from it (tests/test_bad_input.py): make_config's level in process, the command line
through ``main`` in process, and the installed console script in a subprocess. Add a case here.

The promise held: bad input → one line naming the problem and the fix, exit 2, no traceback, no
run left RUNNING, nothing half-written. An environment fault → exit 75.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from joulebench.config import MAX_SEED

from . import images

QUICK = ["--model", "tinynet", "--weights", "none", "--epochs", "1", "--limit-train-batches", "2",
         "--idle-seconds", "0", "--inference-batches", "1", "--quiet"]


def _train_val_mismatch(d: Path) -> None:
    images(d / "data" / "train", ["cat", "dog"])
    images(d / "data" / "val", ["cat", "fox"])


def _one_class(d: Path) -> None:
    images(d / "data", ["cat"])


def _train_without_val(d: Path) -> None:
    images(d / "data" / "train", ["cat", "dog"])


def _all_unreadable_class(d: Path) -> None:
    images(d / "data", ["cat"])
    (d / "data" / "dog").mkdir()
    (d / "data" / "dog" / "0.jpg").write_bytes(np.random.default_rng(1).bytes(500))


def _empty_folder(d: Path) -> None:
    (d / "data").mkdir()


def _a_file(d: Path) -> None:
    (d / "data").write_text("not a folder\n")


def _weights_dir(d: Path) -> None:
    (d / "weights.pth").mkdir()


def _params(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "p.yaml").write_text(text)


def _deleted_experiment(d: Path) -> None:
    client = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("gone"))


@dataclass
class Case:
    """A bad input and what it must give: exit code, a fragment of the one line, the statuses
    of every run in the store after it (sorted; none: nothing opened). ``args`` is a command line
    as a user types it, checked through ``main`` in process (and, with ``installed``, through the
    installed console script too); ``config`` instead is make_config's keywords, checked at that
    level ({d} in an argument is the working folder, {port} in an env value a closed port)."""

    id: str
    args: list[str] | None
    exit: int
    message: str
    statuses: list[str] = field(default_factory=list)
    setup: Callable[[Path], None] = lambda d: None
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    installed: bool = False


def made(id: str, message: str, **keywords: Any) -> Case:
    """A case checked at make_config's level: tinynet, baseline, no weights, and ``keywords``."""
    return Case(id, None, 2, message, config={"model": "tinynet", "method": "baseline", "weights": "none"} | keywords)


def train(*args: str) -> list[str]:
    return ["train", *QUICK, *args]


CASES = [
    # make_config, in process: what every command calls first.
    made("config-model-unknown", "unknown model 'resnet1000'; accepted: densenet121", model="resnet1000"),
    made("config-method-unknown", "unknown method 'quantize'; accepted: baseline", method="quantize"),
    made("config-dataset-unknown", "unknown dataset 'mnist'; accepted: digits", dataset="mnist"),
    made("config-epochs-zero", "--epochs must be > 0, got '0'", epochs="0"),
    made("config-epochs-text", "--epochs must be a whole number > 0, got 'three'", epochs="three"),
    made("config-epochs-fraction", "--epochs must be a whole number > 0", epochs=2.5),
    made("config-batch-size-negative", "--batch-size must be > 0", batch_size="-8"),
    made("config-lr-zero", "--lr must be > 0", lr="0"),
    made("config-lr-inf", "--lr must be a finite number, got 'inf'", lr="inf"),
    made("config-lr-nan", "--lr must be > 0, got 'nan'", lr="nan"),
    made("config-lr-text", "--lr must be a number > 0", lr="fast"),
    made("config-inception-image-size", "below inception_v3's minimum of 299", model="inception_v3", image_size="75"),
    made("config-vit-image-size", "takes only 224", model="vit_b_16", image_size="96"),
    made("config-optimizer-unknown", "unknown optimizer 'rmsprop'; accepted: sgd, adam", optimizer="rmsprop"),
    made("config-country-a-name", "alpha-3", country="France"),
    made("config-param-the-method-lacks", "method 'baseline' has no parameter 'bits'; accepted: none",
         params=("bits=16",)),
    made("config-param-not-key-value", "is not key=value", params=("nonsense",)),
    made("config-idle-negative", "--idle-seconds must be a finite number ≥ 0", idle_seconds=-1),
    made("config-inference-batches-zero", "--inference-batches must be > 0", inference_batches=0),
    made("config-sample-hz-zero", "power sample rate 0.0 Hz is out of range", sample_hz=0),
    made("config-sample-hz-too-high", "at most 100 Hz", sample_hz=1000),
    # The command line, in process through main().
    Case("model-unknown", train("--model", "resnet19"), 2, "unknown model 'resnet19'"),
    Case("method-unknown", train("--method", "quantise"), 2, "unknown method 'quantise'"),
    Case("dataset-unknown", train("--dataset", "mnist"), 2, "unknown dataset 'mnist'"),
    Case("epochs-zero", train("--epochs", "0"), 2, "--epochs must be > 0"),
    Case("epochs-text", train("--epochs", "many"), 2, "--epochs must be a whole number > 0"),
    Case("lr-negative", train("--lr", "-1"), 2, "--lr must be > 0"),
    Case("inception-image-size", train("--model", "inception_v3", "--image-size", "32"), 2, "minimum of 299"),
    Case("dataset-not-pulled", train("--dataset", "cifar10"), 2, "dvc pull"),
    Case("weights-not-fetched", train("--model", "resnet18", "--weights", "imagenet"), 2,
         "joulebench fetch weights --model resnet18"),
    Case("weights-corrupt", train("--model", "resnet18", "--weights", "corrupt.pth"), 2, "truncated or corrupt",
         setup=lambda d: (d / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")),
    Case("optimizer-unknown", train("--optimizer", "rmsprop"), 2, "'rmsprop' is not one of 'adam', 'sgd'"),
    Case("param-the-method-lacks", train("--param", "bits=3"), 2, "has no parameter 'bits'"),
    Case("stego-float16-on-cpu", train("--method", "stego", "--param", "dtype=float16", "--device", "cpu"), 2,
         "runs on CUDA only"),
    Case("no-such-flag", train("--no-such-flag"), 2, "No such option"),
    Case("lr-inf", train("--lr", "inf"), 2, "--lr must be a finite number"),
    Case("lr-nan", train("--lr", "nan"), 2, "--lr must be > 0"),
    Case("lr-1e308-diverges", train("--lr", "1e308"), 2,
         "training diverged: the loss was not finite at epoch 1, step", ["FAILED"]),
    Case("idle-nan", train("--idle-seconds", "nan"), 2, "--idle-seconds must be a finite number ≥ 0"),
    Case("idle-inf", train("--idle-seconds", "inf"), 2, "--idle-seconds must be a finite number ≥ 0"),
    Case("idle-negative", train("--idle-seconds", "-1"), 2, "--idle-seconds must be a finite number ≥ 0"),
    Case("idle-text", train("--idle-seconds", "soon"), 2, "'soon' is not a valid float"),
    Case("sample-hz-nan", train("--sample-hz", "nan"), 2, "power sample rate nan Hz is out of range"),
    Case("seed-negative", train("--seed", "-1"), 2, f"--seed must be a whole number from 0 to {MAX_SEED}"),
    Case("seed-too-big", train("--seed", "99999999999"), 2, f"from 0 to {MAX_SEED}, got 99999999999"),
    Case("seed-text", train("--seed", "x"), 2, "'x' is not a valid integer"),
    Case("epochs-fraction", train("--epochs", "1.5"), 2, "--epochs must be a whole number > 0"),
    Case("batch-size-zero", train("--batch-size", "0"), 2, "--batch-size must be > 0"),
    Case("batch-size-one-batchnorm", train("--batch-size", "1"), 2,
         "its BatchNorm layers need at least 2 samples per batch"),
    Case("experiment-empty", train("--experiment", ""), 2, "--experiment is empty"),
    Case("experiment-blank", train("--experiment", "   "), 2, "--experiment is empty"),
    Case("experiment-deleted", train("--experiment", "gone"), 2,
         "experiment 'gone' is deleted in the MLflow store", setup=_deleted_experiment),
    Case("metrics-json-under-a-file", train("--metrics-json", "{d}/mlflow.db/m.json"), 2,
         "is a file, not a directory"),
    Case("metrics-json-a-directory", train("--metrics-json", "{d}"), 2, "is a directory"),
    Case("run-json-is-metrics-json", train("--metrics-json", "out.json", "--run-json", "./out.json"), 2,
         "--run-json out.json is also --metrics-json: each output needs its own file"),
    Case("parent-run-id-names-no-run", train("--parent-run-id", "0123456789abcdef0123456789abcdef"), 2,
         "--parent-run-id 0123456789abcdef0123456789abcdef names no run in the MLflow store"),
    Case("run-json-under-a-file", train("--run-json", "{d}/mlflow.db/deeper/r.json"), 2,
         "is a file, not a directory"),
    Case("params-file-a-list", train("--params-file", "p.yaml"), 2, "must be a YAML mapping",
         setup=_params("- bits: 16\n")),
    Case("params-file-a-scalar", train("--params-file", "p.yaml"), 2, "must be a YAML mapping",
         setup=_params("16\n")),
    Case("params-file-empty", train("--params-file", "p.yaml"), 2, "must be a YAML mapping",
         setup=_params("")),
    Case("params-file-methods-a-list", train("--params-file", "p.yaml"), 2, "with a methods mapping",
         setup=_params("methods: [stego]\n")),
    Case("params-file-method-a-list", train("--method", "stego", "--params-file", "p.yaml"), 2,
         "methods.stego in p.yaml must map parameter names", setup=_params("methods: {stego: [16]}\n")),
    Case("params-file-not-yaml", train("--params-file", "p.yaml"), 2, "cannot be read as YAML",
         setup=_params("a: [unclosed\n")),
    Case("params-file-missing", train("--params-file", "absent.yaml"), 2, "--params-file absent.yaml does not exist"),
    Case("params-file-a-fifo", train("--params-file", "p.yaml"), 2, "p.yaml is not a regular file (a pipe",
         setup=lambda d: os.mkfifo(d / "p.yaml")),  # was: read for ever
    Case("params-file-endless", train("--params-file", "/dev/zero"), 2, "/dev/zero is not a regular file"),
    Case("params-file-huge", train("--params-file", "p.yaml"), 2, "holds 17825792 bytes, more than an input file",
         setup=lambda d: (d / "p.yaml").write_bytes(b"#" * 17 * 2**20)),
    Case("weights-a-fifo", ["train", *QUICK[:1], "resnet18", "--weights", "w.pth", "--quiet"], 2,
         "weights file w.pth is not a regular file", setup=lambda d: os.mkfifo(d / "w.pth")),
    Case("imagefolder-a-file", train("--dataset", "imagefolder:data"), 2, "is a file, not a directory",
         setup=_a_file),
    Case("imagefolder-missing", train("--dataset", "imagefolder:absent"), 2, "dataset directory absent not found"),
    Case("imagefolder-empty", train("--dataset", "imagefolder:data"), 2, "is not an image folder",
         setup=_empty_folder),
    Case("imagefolder-train-val-classes-differ", train("--dataset", "imagefolder:data"), 2,
         "hold different classes (dog, fox in only one)", setup=_train_val_mismatch),
    Case("imagefolder-one-class", train("--dataset", "imagefolder:data"), 2, "holds 1 class (cat)",
         setup=_one_class),
    Case("imagefolder-train-without-val", train("--dataset", "imagefolder:data"), 2, "has train/ but no val/",
         setup=_train_without_val),
    Case("imagefolder-class-all-unreadable", train("--dataset", "imagefolder:data"), 2,
         "class folder dog holds no readable image", setup=_all_unreadable_class),
    Case("weights-a-directory", ["train", *QUICK[:1], "resnet18", "--weights", "weights.pth", "--quiet"], 2,
         "weights file weights.pth is a directory", setup=_weights_dir),
    Case("country-two-letters", train("--country", "FR"), 2, "must be an ISO 3166 alpha-3 code"),
    Case("device-malformed", train("--device", "cuda:x"), 2, "is malformed"),
    Case("sweep-idle-nan-before-any-child", ["sweep", "--models", "tinynet", *QUICK[2:], "--idle-seconds", "nan"],
         2, "--idle-seconds must be a finite number ≥ 0"),
    Case("sweep-seed-overflows-in-a-repeat",
         ["sweep", "--models", "tinynet", "--repeats", "2", "--seed", str(MAX_SEED), *QUICK[2:]], 2,
         f"--seed must be a whole number from 0 to {MAX_SEED}, got {MAX_SEED + 1}"),
    Case("sweep-dataset-missing-before-the-parent-opens",
         ["sweep", "--models", "tinynet", *QUICK[2:], "--dataset", "imagefolder:absent"], 2,
         "dataset directory absent not found"),
    Case("sweep-repeats-superscript", ["sweep", "--models", "tinynet", *QUICK[2:], "--repeats", "²"], 2,
         "--repeats must be a whole number from 1 to 1000, got '²'"),
    Case("capacity-bits-without-zero-before-the-run-opens", ["capacity", *QUICK, "--bits", "8,16"], 2,
         "bits values '8,16' lack 0"),
    Case("sweep-experiment-empty", ["sweep", "--models", "tinynet", *QUICK[2:], "--experiment", ""], 2,
         "--experiment is empty"),
    Case("imagefolder-one-image-per-class", train("--dataset", "imagefolder:data"), 2,
         "2 images in 2 classes (the smallest holds 1) are too few to split",
         setup=lambda d: images(d / "data", ["cat", "dog"], per_class=1)),
    Case("imagefolder-symlink-loop", train("--dataset", "imagefolder:data"), 2, "data/cat/loop links back to",
         setup=lambda d: (images(d / "data", ["cat", "dog"]), (d / "data" / "cat" / "loop").symlink_to("..", True))),
    Case("imagefolder-class-links-to-itself", train("--dataset", "imagefolder:data"), 2, "data/fox is a symlink loop",
         setup=lambda d: (images(d / "data", ["cat", "dog"]), (d / "data" / "fox").symlink_to("fox"))),
    Case("imagefolder-holds-the-store", train("--dataset", "imagefolder:."), 2,
         "holds mlruns/, a tracking store's folder", setup=lambda d: (images(d, ["cat", "dog"]), (d / "mlruns").mkdir())),
    Case("tracking-uri-unknown-scheme", train(), 2, "MLFLOW_TRACKING_URI 'garbage://x' is not a store URI MLflow accepts",
         env={"MLFLOW_TRACKING_URI": "garbage://x"}),
    Case("tracking-uri-sqlite-without-slashes", train(), 2, "'sqlite:relative.db' is not a store URI MLflow accepts",
         env={"MLFLOW_TRACKING_URI": "sqlite:relative.db"}),
    Case("digits-one-class", train("--dataset", "digits:3"), 2, "--dataset 'digits:3': it names 1 class"),
    Case("report-out-under-a-file", ["report", "--out", "{d}/mlflow.db/x"], 2, "mlflow.db is a file"),
    Case("fetch-mirror-not-a-url", ["fetch", "dataset", "cifar10", "--mirror", "not a url", "--to", "{d}/ds"], 2,
         "mirror 'not a url' is not a URL this can fetch from"),
    Case("image-size-beyond-memory", train("--image-size", "100000"), 2,
         "--batch-size 64 at --image-size 100000 needs 7,153 GiB for one batch of input alone"),
    Case("batch-size-beyond-memory", train("--batch-size", str(10**12)), 2, "for one batch of input alone"),
    Case("artifact-folder-is-a-file", train(), 2, "mlruns is a file; move it aside",
         setup=lambda d: (d / "mlruns").write_text("not a folder\n")),
    Case("report-no-such-experiment", ["report", "--experiment", "nothing-here"], 2, "no experiment 'nothing-here'"),
    Case("capacity-tolerance-too-big", ["capacity", *QUICK, "--tolerance", "1.5"], 2, "--tolerance must be in [0, 1)"),
    Case("resend-no-journal", ["resend", "{d}"], 2, "holds no unsent run"),
    Case("tracking-server-closed-port", train(), 75, "no MLflow tracking server answers at http://127.0.0.1:",
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"}),
    # Hostile values (see test_config_hostile), also through the installed console script: the
    # line names the option (a method parameter by its key).
    *(Case(f"hostile-{id}", train("--method", "stego", *args), 2, named, installed=True) for id, args, named in [
        ("long-output", ["--metrics-json", "m" * 5000], "--metrics-json"),
        ("newline-path", ["--params-file", "a\nb"], "--params-file"),
        ("long-name", ["--data-dir", "d" * 300], "--data-dir"),
        ("long-experiment", ["--experiment", "e" * 5000], "--experiment"),
        ("latin1-experiment", ["--experiment", os.fsdecode(b"caf\xe9")], "--experiment"),
        ("superscript", ["--batch-size", "²"], "--batch-size"),
        ("arabic-digit", ["--param", "bits=٣"], "bits"),
    ]),
]
