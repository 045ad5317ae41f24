"""One MLflow run per ``train`` (or ``capacity``): opened, logged to through a client, closed
in a true state.

The recorder logs through an ``MlflowClient`` with its run id, never through MLflow's global
active run, so nothing here depends on which run another part of the process started.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from mlflow.utils.time import get_current_time_millis

from joulebench import names, timings
from joulebench.config import RunConfig
from joulebench.errors import ConfigError, EnvironmentFault, JoulebenchError, disk_full, first_line
from joulebench.signals import uninterrupted
from joulebench.tracking.calls import STORE_FAILURES, Call, is_permanent, send
from joulebench.tracking.outbox import OUTBOX_ROOT, Outbox, load
from joulebench.tracking.process import process_tags
from joulebench.tracking.store import answers, client, full_disk, tracking_uri, use_store

# Why a command ended its `mlflow run` run FAILED (its one-line error).
FAILURE_TAG = "joulebench.error"

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


# The installed package's own folder (src/joulebench in a checkout).
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git_commit() -> str:
    """The kit's own commit, whatever the current directory: HEAD (``-dirty`` with uncommitted
    changes) of the checkout this package runs from. Outside a checkout (an image has no .git,
    a wheel sits in site-packages), the commit it was built from (``--build-arg GIT_COMMIT=...``
    → ``JOULEBENCH_GIT_COMMIT``)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()

    try:
        # A package installed into a virtualenv inside some other repository is not that repository's.
        if (Path(git("rev-parse", "--show-toplevel")) / "src" / "joulebench").resolve() == PACKAGE_DIR:
            return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("JOULEBENCH_GIT_COMMIT") or "unknown"


def config_params(config: RunConfig, weights_source: str) -> dict[str, Any]:
    """The run's params: the fields that identify its result (``RunConfig.params``), and where
    its weights came from."""
    return config.params() | {"weights_source": weights_source}


# A run's calls give up on a silent server after seconds, not MLflow's default of minutes:
# what the store does not take is kept in the outbox and sent when it answers again.
RUN_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


@dataclass
class Recorder:
    """Logging calls for one open run, through ``store``; handed to the pipeline.

    A call the store does not take is kept in ``outbox`` (``outbox.py``) with every later
    one, and sent, in order, as soon as the store answers again.
    """

    run_id: str
    experiment_id: str
    store: MlflowClient = field(default_factory=client)
    params_logged: set[str] = field(default_factory=set)  # by `mlflow run`, in the user's spelling
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox({"run_id": self.run_id, "experiment_id": self.experiment_id,
                              "tracking_uri": tracking_uri()})

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._log_metrics(metrics, step=epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self._log_metrics(metrics, step=0)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = get_current_time_millis()
        self._send(Call("log_batch", {"metrics": [[k, float(v), now, step] for k, v in metrics.items()]}, []))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._send(_tags_call(tags))

    def describe(self, text: str) -> None:
        """The run's description (markdown), which the UI shows on the run's page and as a column."""
        self.set_tags({MLFLOW_RUN_NOTE: text})

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params the run does not have yet.

        ``mlflow run`` logs the entry point's parameters first, in the user's spelling
        (``-P lr=1e-3``); MLflow refuses to log a key again with another spelling (``0.001``).
        """
        new = [[k, str(v)] for k, v in params.items() if k not in self.params_logged]
        self.params_logged |= set(params)
        if new:
            self._send(Call("log_batch", {"params": new}, []))

    def log_text(self, name: str, text: str) -> None:
        self._send(Call("log_text", {"name": name, "text": text}, []))

    def log_json(self, name: str, payload: Any) -> None:
        self.log_text(name, json.dumps(payload, indent=2, default=str))

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        buffer = io.StringIO()
        # Columns from every row: an epoch too short to measure has no energy keys.
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        self.log_text(name, buffer.getvalue())

    def log_files(self, paths: list[Path], folder: str | None = None) -> None:
        files = [str(path) for path in paths if path.is_file()]
        if files:
            self._send(Call("log_artifact", {"folder": folder}, files))

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """The model in MLflow's PyTorch flavour (``calls.log_pytorch_model``), sent as two
        ``torch.save`` files: the form the outbox keeps when the store does not take it."""
        import torch

        with tempfile.TemporaryDirectory(prefix="joulebench-model-") as folder:
            files = [str(Path(folder) / "model.pt"), str(Path(folder) / "example.pt")]
            torch.save(model.cpu().eval(), files[0])
            torch.save(example.cpu(), files[1])
            self._send(Call("log_model", {}, files))

    def log_model_inputs(self, model_ids: tuple[str, ...]) -> None:
        """The logged models this run started from: MLflow's lineage, readable as the run's inputs."""
        if model_ids:
            self._send(Call("log_inputs", {"models": list(model_ids)}, []))

    def end(self, status: str) -> None:
        """Close the run with ``status``; EnvironmentFault if the store has not taken everything
        within timings.OUTAGE_GRACE (the outbox keeps it, and the message says how to send it)."""
        self._send(_end_call(status))
        waited, grace, poll = 0.0, timings.OUTAGE_GRACE.seconds(), timings.OUTAGE_POLL.seconds()
        while self.outbox.pending and waited < grace:
            time.sleep(poll)
            waited += poll
            self._flush_if_answering()
        if self.outbox.pending:
            raise EnvironmentFault(
                f"the MLflow store {tracking_uri()} stopped taking this run's results "
                f"({self.outbox.reason}); the run ended {status} and everything unsent (its end too) is "
                f"kept in {self.outbox.folder}: send it once the store answers with "
                f"`joulebench resend {self.outbox.folder}`"
            )

    def _send(self, call: Call) -> None:
        """Send ``call`` after what the outbox holds; keep it instead if the store fails."""
        if self.outbox.pending and not self._flush_if_answering():
            self.outbox.keep(call, None)
            return
        try:
            send(self.store, self.outbox.run, call)
        except (*STORE_FAILURES, UnicodeError) as error:
            if disk_full(error):  # no outage: the run stops here, and recorded_run ends it FAILED
                raise
            if is_permanent(error):  # not an outage: keeping it would strand the run RUNNING
                raise ConfigError(
                    f"the MLflow store {tracking_uri()} refuses this run's {call.name} for good "
                    f"({first_line(error, 200)}); fix that and run again"
                ) from None
            self.outbox.keep(call, error)

    def _flush_if_answering(self) -> bool:
        """Send the outbox if the store answers; whether it is empty now."""
        if not answers(tracking_uri()):
            return False
        try:
            self.outbox.flush(self.store)
        except STORE_FAILURES as error:
            if disk_full(error):
                raise
            return False
        return True

    def full_disk(self, cause: BaseException, status: str, closed: bool) -> EnvironmentFault:
        """The one line of a full filesystem that stopped this run, with how the run ended: closed
        ``status``, or (the store had no room for that) left RUNNING with its end kept in the
        outbox for ``joulebench resend``, or, where the outbox had no room either, just RUNNING."""
        if closed:
            outcome = f"run {self.run_id} ended {status}"
        elif any(call.name == "set_terminated" for call in self.outbox.calls):  # kept by end()
            outcome = self._left_running_for_resend()
        else:
            had_calls = self.outbox.pending
            try:
                self.outbox.keep(_end_call(status), None)
                outcome = self._left_running_for_resend()
            except OSError:
                if not had_calls:  # no half-written folder for `resend` to trip on
                    shutil.rmtree(self.outbox.folder, ignore_errors=True)
                    with contextlib.suppress(OSError):  # nor an empty root, unless other runs' calls wait there
                        self.outbox.folder.parent.rmdir()
                outcome = (f"run {self.run_id} stays RUNNING: neither the store nor {OUTBOX_ROOT}/ had room to "
                           f"record its end (`mlflow runs delete --run-id {self.run_id}` removes it)")
        try:
            artifacts = self.store.get_run(self.run_id).info.artifact_uri
        except Exception:  # noqa: BLE001 - the line names the fullest of the other places then
            artifacts = None
        return full_disk(cause, outcome, artifacts, self.outbox.folder)

    def _left_running_for_resend(self) -> str:
        return (f"run {self.run_id} is left RUNNING, its end kept in {self.outbox.folder}: "
                f"`joulebench resend {self.outbox.folder}` records it once there is room")


def _tags_call(tags: dict[str, str]) -> Call:
    return Call("log_batch", {"tags": [[k, str(v)] for k, v in tags.items()]}, [])


def _end_call(status: str) -> Call:
    return Call("set_terminated", {"status": status, "end_time": get_current_time_millis()}, [])


def resend(folder: Path) -> tuple[str, int]:
    """Send what a run left unsent in ``folder`` to the store it was meant for (or
    MLFLOW_TRACKING_URI when set); (the run id, the calls sent)."""
    outbox = load(folder)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or outbox.run["tracking_uri"]
    count = len(outbox.calls)
    try:
        outbox.flush(MlflowClient(uri))
    except STORE_FAILURES as error:
        raise EnvironmentFault(
            f"the MLflow store {uri} did not take the unsent calls of run {outbox.run['run_id']} "
            f"({first_line(error)}); {len(outbox.calls)} are still kept in {folder}: run this again "
            "once it answers"
        ) from None
    return outbox.run["run_id"], count


def _open_run(store: MlflowClient, experiment_id: str, config: RunConfig, tags: dict[str, str],
              command: str) -> str:
    """A new run, or the one ``mlflow run`` made for this process (``MLFLOW_RUN_ID``), named by
    ``--run-name`` or by what it is (``resnet18-stego``, ``resnet18-capacity``), not at random.

    Opening goes around the outbox: a run that cannot be opened has nothing to journal for (the
    command fails here, before it measures anything). A launched run is joined through ``CALLS``;
    ``create_run`` stays outside them, since every call names the run that this one makes.
    """
    name = config.run_name or f"{config.model}-{config.method if command == 'train' else command}"
    launched = os.environ.get("MLFLOW_RUN_ID")
    if launched:
        run = {"run_id": launched, "experiment_id": experiment_id}
        send(store, run, Call("update_run", {"status": RunStatus.to_string(RunStatus.RUNNING), "name": name}, []))
        send(store, run, _tags_call(tags))
        return launched
    if config.parent_run_id:
        _check_parent(store, config.parent_run_id)
        tags = tags | {MLFLOW_PARENT_RUN_ID: config.parent_run_id}
    # resolve_tags adds what mlflow.start_run would: user, source name and type, git commit.
    with uninterrupted():  # a run made but never returned here could not be ended
        return store.create_run(experiment_id, tags=resolve_tags(tags), run_name=name).info.run_id


def close_launched_run(status: str, reason: str) -> None:
    """End the run ``mlflow run`` made for this process (``MLFLOW_RUN_ID``) when the command fails.

    ``mlflow run`` marks its run by the container's exit status alone, and some engines lose that
    status (podman before 4.6 answers ``docker run --rm`` with 0 through its Docker API): a run that
    joulebench has already ended FAILED is left as it is, so the record tells the truth whatever the
    engine says. Input refused before the run opened ends it too. Best effort: the store may be
    what failed, and the command's own error is the one to report.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or not answers(tracking_uri()):
        return
    try:
        store = client()
        info = store.get_run(run_id).info
        if RunStatus.is_terminated(RunStatus.from_string(info.status)):
            return
        run = {"run_id": run_id, "experiment_id": info.experiment_id}
        send(store, run, _tags_call({FAILURE_TAG: reason[:5000]}))
        send(store, run, _end_call(status))
    except Exception:  # noqa: BLE001 - the command's own failure is reported, not this one
        pass


def _check_parent(store: MlflowClient, parent_run_id: str) -> None:
    """A run can only nest under a run the store holds: refused before this one is made."""
    try:
        store.get_run(parent_run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(f"--parent-run-id {parent_run_id} names no run in the MLflow store {tracking_uri()}; "
                          "pass the id of an existing run (a sweep's parent), or leave the option out") from None


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
    for name, value in RUN_HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    store = client()
    run_id = _open_run(store, experiment_id, config, tags | process_tags(), command)
    launched = os.environ.get("MLFLOW_RUN_ID") == run_id
    recorder = Recorder(run_id, experiment_id, store,
                        set(store.get_run(run_id).data.params) if launched else set())
    system_metrics = SystemMetricsMonitor(recorder.run_id, tracking_uri=tracking_uri())
    system_metrics.start()
    status = RunStatus.FAILED
    try:
        recorder.log_params(params)
        recorder.log_text("config.json", config.to_json())
        yield recorder
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    finally:
        system_metrics.finish()
        ending = sys.exc_info()[1]
        full = disk_full(ending)  # a full filesystem, wherever the run met it: one EnvironmentFault line
        try:
            recorder.end(RunStatus.to_string(status))
        except Exception as failure:
            full = full or disk_full(failure)
            if full is not None:
                raise recorder.full_disk(full, RunStatus.to_string(status), closed=False) from None
            if ending is None or not isinstance(failure, EnvironmentFault):
                raise
            # The run's end waits in the outbox: said whatever ended it, never "marked KILLED".
            if not isinstance(ending, (KeyboardInterrupt, JoulebenchError)):
                ending.add_note(str(failure))  # a bug keeps its traceback, this line under it
            else:
                raise EnvironmentFault(f"{failure}{f' (it ended on: {ending})' if str(ending) else ''}") from ending
        if full is not None:
            raise recorder.full_disk(full, RunStatus.to_string(status), closed=True) from None
