"""What a run could not send to its tracking store, kept on disk in order and sent later.

A run of hours must not lose its results because the tracking server went away. Every call a
run makes to its store is a ``Call`` (``calls.py``); when the store does not take one, it and
every later call are appended to ``joulebench-unsent/<run_id>/journal.jsonl`` (files they
name are copied beside it) and the run goes on. Each later call first asks the store whether
it answers again (a few seconds at most): if it does, the journal is sent in order, then the
call. What is still unsent when the run ends is sent by ``joulebench resend FOLDER``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from joulebench.errors import ConfigError, first_line
from joulebench.tracking.calls import Call, send

OUTBOX_ROOT = Path("joulebench-unsent")
JOURNAL = "journal.jsonl"
RUN_FILE = "run.json"


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
            if path.is_file():
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
