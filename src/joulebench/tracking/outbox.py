"""What a run could not send to its tracking store, kept on disk in order and sent later.

A run of hours must not lose its results because the tracking server went away. Every call a
run makes to its store is one of the ``CALLS`` below; when the store does not take one, it and
every later call are appended to ``joulebench-unsent/<run_id>/journal.jsonl`` (files they
name are copied beside it) and the run goes on. Each later call first asks the store whether
it answers again (a few seconds at most): if it does, the journal is sent in order, then the
call. What is still unsent when the run ends is sent by ``joulebench resend FOLDER``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from joulebench.errors import ConfigError, first_line

OUTBOX_ROOT = Path("joulebench-unsent")
JOURNAL = "journal.jsonl"
RUN_FILE = "run.json"
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
    import torch

    from joulebench.tracking.runs import log_pytorch_model

    model, example = (torch.load(path, map_location="cpu", weights_only=False) for path in files)
    log_pytorch_model(run["run_id"], run["experiment_id"], model, example)


def _set_terminated(store: MlflowClient, run: dict[str, str], args: dict[str, Any], files: list[str]) -> None:
    store.set_terminated(run["run_id"], args["status"], args["end_time"])


CALLS: dict[str, Callable[[MlflowClient, dict[str, str], dict[str, Any], list[str]], None]] = {
    "log_batch": _log_batch,
    "log_text": _log_text,
    "log_artifact": _log_artifact,
    "log_model": _log_model,
    "set_terminated": _set_terminated,
}


def send(store: MlflowClient, run: dict[str, str], call: Call) -> None:
    CALLS[call.name](store, run, call.args, call.files)


class Outbox:
    """The calls of run ``run["run_id"]`` its store has not taken yet, oldest first."""

    def __init__(self, run: dict[str, str], root: Path = OUTBOX_ROOT) -> None:
        self.run = run
        self.folder = root / run["run_id"]
        self.calls: list[Call] = []
        self.reason: str | None = None  # why the store stopped taking calls

    @property
    def pending(self) -> bool:
        return bool(self.calls)

    def keep(self, call: Call, reason: BaseException | None) -> None:
        """Append ``call`` (its files copied here) to the journal on disk; ``reason``: what the
        store raised (None when it was already known not to answer)."""
        if reason is not None and not self.calls:
            self.reason = first_line(reason)
        self.folder.mkdir(parents=True, exist_ok=True)
        copies = self.folder / "files" / f"{len(list(self.folder.glob('files/*'))):04d}"
        kept = []
        for path in map(Path, call.files):
            copies.mkdir(parents=True, exist_ok=True)
            if self.folder in path.parents:  # written here already (a kept model)
                kept.append(str(path))
            elif path.is_file():
                kept.append(str(shutil.copy2(path, copies / path.name)))
        self.calls.append(Call(call.name, call.args, kept))
        self._write()

    def flush(self, store: MlflowClient) -> None:
        """Send the kept calls in order, forgetting each once sent; raises what the store raises."""
        while self.calls:
            send(store, self.run, self.calls[0])
            self.calls.pop(0)
            self._write()
        if self.folder.exists():
            shutil.rmtree(self.folder)
            with contextlib.suppress(OSError):  # the root too, unless other runs' calls wait there
                self.folder.parent.rmdir()
        self.reason = None

    def _write(self) -> None:
        (self.folder / RUN_FILE).write_text(json.dumps(self.run, indent=2) + "\n")
        staging = self.folder / (JOURNAL + ".new")
        staging.write_text("".join(json.dumps(call.__dict__) + "\n" for call in self.calls))
        staging.replace(self.folder / JOURNAL)  # a crash mid-write keeps the previous journal


def load(folder: Path) -> Outbox:
    """The outbox a run left in ``folder``; ConfigError for a folder that holds none."""
    journal, run_file = folder / JOURNAL, folder / RUN_FILE
    if not journal.is_file() or not run_file.is_file():
        raise ConfigError(f"{folder} holds no unsent run ({JOURNAL} and {RUN_FILE}); pass a folder "
                          f"under {OUTBOX_ROOT}/ that `joulebench train` named")
    outbox = Outbox(json.loads(run_file.read_text()), folder.parent)
    outbox.calls = [Call(**json.loads(line)) for line in journal.read_text().splitlines() if line.strip()]
    return outbox
