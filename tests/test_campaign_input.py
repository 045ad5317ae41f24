"""Campaign, bad input: each row is a command as a user types it, the exit code, a fragment of
the one line it must print, and the statuses of the runs it must leave (none: nothing opened).

The promise held here: bad input → one line naming the problem and the fix, exit 2, no
traceback, no run left RUNNING, nothing half-written. An environment fault → exit 75.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from joulebench.cli import main
from joulebench.config import MAX_SEED

from support import free_port, images, run_cli

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
    id: str
    args: list[str]
    exit: int
    message: str
    statuses: list[str] = field(default_factory=list)  # of every run in the store, sorted
    setup: Callable[[Path], None] = lambda d: None
    env: dict[str, str] = field(default_factory=dict)


def train(*args: str) -> list[str]:
    return ["train", *QUICK, *args]


CASES = [
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
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_campaign_bad_input(case: Case, workdir: Path, monkeypatch, capsys):
    store = workdir / "mlflow.db"
    # By absolute path: within one process MLflow reuses the store it opened for a relative URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    port = free_port()  # nothing listens there
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(port=port))
    # What the CLI's MLFLOW_LOGGING_LEVEL=WARNING does in a fresh process (mlflow is imported here).
    mlflow_logger = logging.getLogger("mlflow")
    monkeypatch.setattr(mlflow_logger, "level", logging.WARNING)
    case.setup(workdir)
    before = sorted(path.name for path in workdir.iterdir())
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(d=workdir) for arg in case.args])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == case.exit, err
    assert len(lines) == 1 and lines[0].startswith("joulebench: error: "), err
    assert case.message in lines[0], lines[0]
    client = MlflowClient(f"sqlite:///{store}")
    statuses = sorted(run.info.status for e in client.search_experiments(view_type=3)
                      for run in client.search_runs([e.experiment_id]))
    assert statuses == case.statuses
    if case.exit == 75:
        assert seconds <= 15, f"{seconds:.1f} s to say the server is not there"
    if not case.statuses:  # nothing half-written beside the store
        assert sorted(path.name for path in workdir.iterdir()) == before


def test_a_store_that_is_a_directory_is_refused_at_once(tmp_path):
    """`mlflow.db` a directory: bad input, said in one line at once (MLflow would retry for a minute)."""
    (tmp_path / "mlflow.db").mkdir()
    started = time.monotonic()
    result = run_cli(train(), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (2, 1), result.stderr[-2000:]
    assert "the MLflow store sqlite:///mlflow.db names a directory, where a database file belongs" in lines[0]
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("content, said", [
    (b"junk\n", "is not an MLflow store that can be read"),
    (None, "no MLflow store at sqlite:///"),
])
def test_report_on_a_store_that_is_not_one_is_one_line(tmp_path, content, said):
    store = tmp_path / "runs.db"
    if content is not None:
        store.write_bytes(content)
    result = run_cli(["report", "--out", "out"], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (2, 1) and said in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out").exists() and store.exists() == (content is not None)


def test_image_file_names_that_are_not_utf8_are_escaped_not_fatal(tmp_path):
    """A file name MLflow cannot hold as text (not UTF-8) is listed with \\x escapes; the run
    finishes (it was taken for an outage and left RUNNING)."""
    import os

    images(tmp_path / "data", ["cat", "dog"])
    (tmp_path / "data" / "dog" / os.fsdecode(b"\xfe.png")).write_bytes(b"not an image")
    result = run_cli(train("--dataset", "imagefolder:data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    assert run.info.status == "FINISHED"
    assert "(first: data/dog/\\xfe.png: not an image PIL can identify;" in run.data.tags["skipped_images"]


def test_a_store_error_no_wait_mends_ends_the_call_in_one_line_not_in_the_outbox(tmp_path, monkeypatch):
    """Only an outage is kept for later: the real error of an artifact folder that is a file is
    permanent, raised at once as one line, and nothing is journaled to resend for ever."""
    from joulebench.errors import ConfigError
    from joulebench.tracking import Recorder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "blocked").write_text("a file where the artifacts go")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "blocked" / "e"))
    recorder = Recorder(client.create_run(experiment).info.run_id, experiment, client)
    with pytest.raises(ConfigError, match="refuses this run's log_text for good") as error:
        recorder.log_text("note.txt", "x")
    assert "\n" not in str(error.value) and not recorder.outbox.pending
    recorder.log_metrics({"accuracy": 0.5})  # the store itself still takes what it can hold
    assert client.get_run(recorder.run_id).data.metrics == {"accuracy": 0.5}
