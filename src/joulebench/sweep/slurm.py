"""``--backend slurm``: the cells to run as one Slurm job array, one task per cell, followed to the end.

Each task runs ``python -m joulebench train … --parent-run-id …`` on the node Slurm gives it and
logs to the tracking server named by ``MLFLOW_TRACKING_URI`` (a store file on this machine cannot
be shared by the nodes: refused before anything is submitted). Slurm places the cells: every task
asks for its own GPU(s) (``--gres=gpu:N``) and the node to itself (``--exclusive``) unless told
otherwise, because two measured cells on one device — or one node's shared power meter — corrupt
both measurements.

The sweep follows the tasks with ``scontrol`` (``sacct`` once slurmctld has forgotten a job), prints
a line per finished cell, closes in MLflow the run of a task Slurm ended (cancelled, timed out,
preempted, failed) with the job's state and reason as tags, and on Ctrl-C cancels the array.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from joulebench import names, timings, tracking
from joulebench.errors import ConfigError, EnvironmentFault
from joulebench.sweep.grid import Combination
from joulebench.sweep.progress import Outcome, Progress, log_tail

SLURM_LOG_FOLDER = "joulebench-slurm"  # under the working folder, which the nodes share: a log per task
# Slurm's states of an ended job, and what each makes of the cell's run when the task could not close it
# (a task COMPLETED with exit 0 closed it itself; with another exit code it failed before it could).
ENDED = {"COMPLETED": "FAILED", "FAILED": "FAILED", "OUT_OF_MEMORY": "FAILED", "NODE_FAIL": "FAILED",
         "BOOT_FAIL": "FAILED", "CANCELLED": "KILLED", "TIMEOUT": "KILLED", "PREEMPTED": "KILLED",
         "DEADLINE": "KILLED", "REVOKED": "KILLED", "SPECIAL_EXIT": "FAILED"}
SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")
MAX_GPUS_PER_CELL = 16


@dataclass(frozen=True)
class SlurmOptions:
    """What each task asks Slurm for (the sweep's ``--slurm-*`` options)."""

    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    gpus_per_cell: int = 1
    share_node: bool = False  # cells on one node, each with its own GPUs (a node's power is then shared)
    extra: tuple[str, ...] = ()  # KEY=VALUE or KEY, passed to sbatch as --KEY=VALUE

    def sbatch_arguments(self) -> list[str]:
        arguments = [] if self.share_node else ["--exclusive"]
        if self.gpus_per_cell:
            arguments.append(f"--gres=gpu:{self.gpus_per_cell}")
        for flag, value in (("partition", self.partition), ("account", self.account), ("time", self.time_limit)):
            if value:
                arguments.append(f"--{flag}={value}")
        return arguments + [f"--{pair}" for pair in self.extra]


def make_slurm_options(partition: str | None, account: str | None, time_limit: str | None,
                       gpus_per_cell: str | None, share_node: bool, pairs: tuple[str, ...]) -> SlurmOptions | None:
    """The sweep's ``--slurm-*`` options, checked; None when none was given."""
    if all(value is None for value in (partition, account, time_limit, gpus_per_cell)) and not (share_node or pairs):
        return None
    gpus = "1" if gpus_per_cell is None else gpus_per_cell.strip()
    if not (gpus.isascii() and gpus.isdigit() and int(gpus) <= MAX_GPUS_PER_CELL):
        raise ConfigError(f"--slurm-gpus-per-cell must be a whole number from 0 to {MAX_GPUS_PER_CELL}, "
                          f"got {gpus_per_cell!r}; 0 runs the cells on CPUs")
    for flag, value in (("--slurm-partition", partition), ("--slurm-account", account), ("--slurm-time", time_limit)):
        if value is not None and (not value.strip() or not value.isascii() or not value.isprintable()
                                  or " " in value):
            raise ConfigError(f"{flag} {value!r} is not a Slurm name or time; pass one word as `sinfo` "
                              "and `sacctmgr show assoc` print it (a time as D-HH:MM:SS or minutes)")
    return SlurmOptions(partition, account, time_limit, int(gpus), share_node, parse_slurm_options(pairs))


def parse_slurm_options(pairs: tuple[str, ...]) -> tuple[str, ...]:
    """``--slurm-option KEY=VALUE`` (or a bare flag KEY) as sbatch long options; ConfigError for
    what sbatch would misread (a key that is not an option name, or one the sweep sets itself)."""
    reserved = {"array", "output", "error", "chdir", "job-name", "parsable", "wrap"}
    checked = []
    for pair in pairs:
        key = pair.partition("=")[0].strip().removeprefix("--")
        if not SBATCH_KEY.fullmatch(key) or key in reserved:
            raise ConfigError(
                f"--slurm-option {pair!r}: give an sbatch long option as KEY=VALUE, e.g. qos=high or "
                f"constraint=a100 (not {', '.join(sorted(reserved))}: the sweep sets those)"
            )
        checked.append(key + (f"={pair.partition('=')[2]}" if "=" in pair else ""))
    return tuple(checked)


@dataclass
class TaskState:
    """One array task as Slurm reports it."""

    task: int
    state: str  # COMPLETED, RUNNING, CANCELLED, … (without "by UID")
    exit_code: int
    node: str
    reason: str
    job_id: str  # ARRAYJOB_TASK, the id the task's run is tagged with


class SlurmRunner:
    """Submits the cells as one job array and follows it until every task has ended."""

    def __init__(self, options: SlurmOptions, parent_run_id: str, log_dir: Path) -> None:
        self._options = options
        self._parent_run_id = parent_run_id
        self._log_dir = log_dir

    def run(self, todo: list[Combination], progress: Progress) -> list[Outcome]:
        if not todo:
            return []
        self._log_dir.mkdir(parents=True, exist_ok=True)
        job = submit(batch_script(todo, self._parent_run_id), self._sbatch_arguments(len(todo)))
        try:
            return self._follow(job, todo, progress)
        except KeyboardInterrupt:
            cancel(job)
            self._wait_ended(job, todo, timings.CANCEL_GRACE.seconds())
            for task, combination in enumerate(todo):
                tracking.settle_cell(self._parent_run_id, tracking.slurm_task(combination.config_hash, f"{job}_{task}"),
                                     "KILLED", f"sweep: Ctrl-C cancelled Slurm job {job}")
            raise

    def _sbatch_arguments(self, cells: int) -> list[str]:
        return [f"--array=0-{cells - 1}", f"--job-name=joulebench-{self._parent_run_id[:8]}",
                f"--chdir={Path.cwd()}", f"--output={self._log_dir.absolute()}/%A_%a.log",
                *self._options.sbatch_arguments()]

    def _follow(self, job: str, todo: list[Combination], progress: Progress) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        started = time.monotonic()
        while len(outcomes) < len(todo):
            for task, state in task_states(job).items():
                if task in outcomes or state.state not in ENDED:
                    continue
                outcome = self._ended(todo[task], state, time.monotonic() - started)
                outcomes[task] = outcome
                progress.finished(outcome)
            if len(outcomes) < len(todo):
                time.sleep(timings.SLURM_POLL.seconds())
        return [outcomes[task] for task in sorted(outcomes)]

    def _ended(self, combination: Combination, state: TaskState, seconds: float) -> Outcome:
        # The run's own status decides: it may have FINISHED before Slurm stopped its process.
        status = tracking.settle_cell(
            self._parent_run_id, tracking.slurm_task(combination.config_hash, state.job_id), ENDED[state.state],
            f"sweep: Slurm ended job {state.job_id} {state.state}",
            {names.SLURM_STATE: state.state, names.SLURM_REASON: state.reason})
        log = self._log_dir / f"{state.job_id}.log"
        detail = (f"Slurm job {state.job_id} {state.state} on {state.node or 'no node'} "
                  f"(exit {state.exit_code}, reason {state.reason}): {log_tail(log)}")
        return Outcome(combination, status, seconds, detail)

    def _wait_ended(self, job: str, todo: list[Combination], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            states = task_states(job)
            if all(states.get(task) is None or states[task].state in ENDED for task in range(len(todo))):
                return
            time.sleep(timings.SLURM_POLL.seconds())


def batch_script(todo: list[Combination], parent_run_id: str) -> str:
    """A batch script whose array task N runs cell N (sbatch keeps the script: nodes need no copy)."""
    cases = "\n".join(
        f"  {index}) exec {shlex.join(train_command(combination, parent_run_id))} ;;"
        for index, combination in enumerate(todo)
    )
    return (f"#!/bin/sh\n# joulebench sweep {parent_run_id}: array task N is cell N\n"
            f'case "$SLURM_ARRAY_TASK_ID" in\n{cases}\nesac\n'
            'echo "joulebench: no cell for array task $SLURM_ARRAY_TASK_ID" >&2\nexit 2\n')


def train_command(combination: Combination, parent_run_id: str) -> list[str]:
    """This interpreter's ``joulebench train``: the nodes see the same environment (shared home)."""
    return [sys.executable, "-m", "joulebench", "train", *combination.train_arguments(parent_run_id)]


def check_submission(options: SlurmOptions) -> None:
    """Ask slurmctld whether it would take a task with these options (``sbatch --test-only``: nothing
    is queued), before the sweep's parent run opens: ConfigError with sbatch's words if not."""
    result = _slurm(["sbatch", "--test-only", f"--chdir={Path.cwd()}", *options.sbatch_arguments()],
                    "#!/bin/sh\ntrue\n")
    if result.returncode == 0:
        return
    said = _last_words(result)
    if any(words in said for words in UNREACHABLE):
        raise EnvironmentFault(f"Slurm's controller does not answer ({said}); check `sinfo`, then run the sweep again")
    raise ConfigError(f"Slurm would not run a cell with these options: {said}; check --slurm-partition, "
                      "--slurm-account, --slurm-time, --slurm-gpus-per-cell and --slurm-option against `sinfo`")


# What sbatch says when slurmctld cannot be reached: an outage, not bad options.
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused")


def submit(script: str, arguments: list[str]) -> str:
    """The id of the job ``sbatch`` made of ``script``; EnvironmentFault if it refused."""
    result = _slurm(["sbatch", "--parsable", *arguments], script)
    if result.returncode != 0:
        raise EnvironmentFault(f"sbatch refused the sweep's job array: {_last_words(result)}; check --slurm-partition, "
                               "--slurm-account and --slurm-option against `sinfo` and your allocation")
    return result.stdout.strip().split(";")[0]


def _last_words(result: subprocess.CompletedProcess) -> str:
    """The last line a Slurm command wrote to stderr, without sbatch's "error:" prefix."""
    return (result.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("sbatch: error: ")


def cancel(job: str) -> None:
    _slurm(["scancel", job])


def task_states(job: str) -> dict[int, TaskState]:
    """Each task of array ``job`` that Slurm knows: from slurmctld (``scontrol``), else from the
    accounting database (``sacct``), which keeps jobs slurmctld has forgotten (MinJobAge)."""
    states = _scontrol_states(job)
    return states or _sacct_states(job)


def _scontrol_states(job: str) -> dict[int, TaskState]:
    result = _slurm(["scontrol", "--oneliner", "show", "job", job])
    states = {}
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        fields = parse_record(line)
        task = fields.get("ArrayTaskId", "")
        if task.isdigit():  # a pending remainder shows as a range: 2-5
            states[int(task)] = TaskState(
                int(task), fields.get("JobState", ""), _exit_code(fields.get("ExitCode", "0:0")),
                fields.get("BatchHost", fields.get("NodeList", "")), fields.get("Reason", "None"),
                f"{job}_{task}")
    return states


def parse_record(line: str) -> dict[str, str]:
    """``Key=Value Key=Value`` as ``scontrol --oneliner`` prints a job; a word without ``=`` belongs
    to the value before it (a Reason or a Command holding spaces)."""
    record: dict[str, str] = {}
    key = None
    for word in line.split():
        name, equals, value = word.partition("=")
        if equals and name:
            key, record[name] = name, value
        elif key is not None:
            record[key] += " " + word
    return record


def _sacct_states(job: str) -> dict[int, TaskState]:
    result = _slurm(["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job,
                     "--format=JobID,State,ExitCode,NodeList,Reason"])
    states = {}
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        job_id, state, exit_code, node, reason = (line.split("|") + [""] * 5)[:5]
        task = job_id.partition("_")[2]
        if task.isdigit():
            states[int(task)] = TaskState(int(task), state.split()[0] if state else "", _exit_code(exit_code),
                                          node, reason or "None", job_id)
    return states


def _exit_code(text: str) -> int:
    """Slurm's ``CODE:SIGNAL``: the exit code, or 128 + the signal that ended the task."""
    code, _, signal = text.partition(":")
    return 128 + int(signal) if signal.isdigit() and int(signal) else int(code) if code.isdigit() else 1


def _slurm(command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise EnvironmentFault(f"{command[0]} is not installed here; run the sweep on the cluster's login "
                               "node, where Slurm's commands are") from None
    except subprocess.TimeoutExpired:
        raise EnvironmentFault(f"{command[0]} did not answer in 60 s: slurmctld is down or overloaded; "
                               "check `sinfo`, then run the same sweep again (finished cells are kept)") from None

