"""``joulebench sweep``: the models × methods × repeats grid, one MLflow run per combination.

Every combination runs as its own ``joulebench train`` child process, nested under one parent
run. That makes the rest simple:

- resume: a combination whose config hash has a FINISHED run in the experiment is skipped, so a
  killed sweep started again loses nothing finished (``--force`` reruns everything);
- ``--gpus 0,1``: one child per GPU at a time, pinned with ``CUDA_VISIBLE_DEVICES``, so two
  measured runs never share a device and each child's meters see only its own GPU;
- ``--backend kubernetes``: the same combinations are submitted as MLflow Project runs (the
  project in the backend config's folder, ``deploy/kubernetes/`` as shipped) and waited on.

A combination's hash is computed here exactly as the child computes it: the child's RunConfig is
built with :func:`joulebench.config.make_config` from the very option values passed to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Protocol

import yaml
from tqdm import tqdm

from joulebench import tracking
from joulebench.compress import method_names
from joulebench.config import RunConfig, make_config
from joulebench.errors import ConfigError
from joulebench.models import PAPER_MODELS

EXIT_BAD_INPUT = 2  # a child that rejects its input: the same input would fail for every child
PROGRESS_POLL_SECONDS = 2.0
KUBERNETES_POLL_SECONDS = 10.0
TERMINATE_GRACE_SECONDS = 60.0  # a child marks its run KILLED before exiting; give it time
LOG_TAIL_LINES = 5

# RunConfig fields that are not passed to the child as ``--option value``: method parameters go
# as ``--param``, the rest name or place the run and are set per child below.
NOT_CHILD_OPTIONS = frozenset({"method_params", "run_name", "save_model", "metrics_json", "parent_run_id"})
# Options that may be unset: the Kubernetes MLproject cannot declare them (no default), so they
# travel as MLflow "extra" parameters, which MLflow turns into ``--KEY VALUE`` verbatim.
OPTIONAL_OPTIONS = frozenset({"limit_train_batches"})
KUBERNETES_ENTRY_POINT = "train"
KUBERNETES_CONFIG_KEYS = ("kube-job-template-path", "repository-uri")


@dataclass(frozen=True)
class Combination:
    """One cell of the grid: a model, a method with its parameters, and a repeat index."""

    config: RunConfig  # as the child builds it; its hash identifies the result
    method_args: tuple[str, ...]  # the method's KEY=VALUE overrides, as the user gave them

    @property
    def label(self) -> str:
        return f"{self.config.model}-{self.config.method}-r{self.config.repeat}"

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    def option_values(self) -> dict[str, str]:
        """The child's options (``train`` option name → text), taken from the resolved config."""
        values = {
            field.name: str(getattr(self.config, field.name))
            for field in fields(self.config)
            if field.name not in NOT_CHILD_OPTIONS and getattr(self.config, field.name) is not None
        }
        values["run_name"] = self.label
        return values

    def train_arguments(self, parent_run_id: str) -> list[str]:
        """``joulebench train`` arguments that rebuild exactly this combination's config."""
        arguments = ["--quiet", "--parent-run-id", parent_run_id]
        for name, value in self.option_values().items():
            arguments += [f"--{name.replace('_', '-')}", value]
        for pair in self.method_args:
            arguments += ["--param", pair]
        return arguments

    def kubernetes_parameters(self, parent_run_id: str) -> dict[str, str]:
        """MLflow Project parameters for ``deploy/kubernetes/MLproject``'s ``train`` entry point.

        Declared parameters keep ``train``'s param names, so the project run's params (MLflow
        logs them) equal those ``train`` logs; optional ones and the method's overrides (joined
        by commas, the MLproject convention) are extras, which MLflow appends as ``--KEY VALUE``.
        """
        parameters = {"parent_run_id": parent_run_id}
        for name, value in self.option_values().items():
            parameters[name.replace("_", "-") if name in OPTIONAL_OPTIONS else name] = value
        if self.method_args:
            parameters["param"] = ",".join(self.method_args)
        return parameters


# --------------------------------------------------------------------------- grid


def parse_names(text: str, option: str, every: Iterable[str]) -> list[str]:
    """A comma-separated list (order kept, duplicates dropped), or ``all``."""
    if text.strip() == "all":
        return list(every)
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ConfigError(f"{option} is empty; pass a comma-separated list such as resnet18,vgg16, or all")
    return names


def parse_repeats(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"--repeats must be a whole number ≥ 1, got {text!r}; e.g. --repeats 3")
    return int(text)


def parse_method_overrides(pairs: Iterable[str], methods: list[str]) -> dict[str, tuple[str, ...]]:
    """``METHOD.KEY=VALUE`` pairs → each method's ``KEY=VALUE`` list (validated by make_config)."""
    overrides: dict[str, list[str]] = {}
    for pair in pairs:
        method, dot, setting = pair.partition(".")
        if not dot or "=" not in setting or not method:
            raise ConfigError(
                f"--param {pair!r} must be METHOD.KEY=VALUE (it applies to that method only); "
                "e.g. --param prune.amount=0.7"
            )
        if method not in methods:
            known = method in method_names()
            raise ConfigError(
                f"--param {pair!r} names method {method!r}, which "
                f"{'is not in --methods ' + ','.join(methods) if known else 'does not exist'}; "
                f"accepted methods: {', '.join(methods if known else method_names())}"
            )
        overrides.setdefault(method, []).append(setting)
    return {method: tuple(settings) for method, settings in overrides.items()}


def expand_grid(
    models: list[str],
    methods: list[str],
    repeats: int,
    overrides: dict[str, tuple[str, ...]],
    options: dict[str, Any],
    run_device: str | None = None,
) -> list[Combination]:
    """Every combination, repeat-major (one of each first) and each model's baseline first.

    Repeat ``r`` trains with seed ``--seed + r``: repeats then vary the split, initialisation
    and order, which is what a confidence interval over repeats should cover. ``run_device``
    replaces the resolved device when children run where this process cannot look (a pod).
    """
    ordered_methods = sorted(methods, key=lambda name: name != "baseline")
    combinations = []
    for repeat in range(repeats):
        for model in models:
            for method in ordered_methods:
                config = make_config(**options | {
                    "model": model, "method": method, "params": overrides.get(method, ()),
                    "seed": options.get("seed", 0) + repeat, "repeat": repeat,
                    # where children resolve the device themselves, resolving it here proves nothing
                    **({"device": "cpu"} if run_device else {}),
                })
                if run_device is not None:
                    config = replace(config, device=run_device)
                combinations.append(Combination(config, overrides.get(method, ())))
    return combinations


def sweep_hash(combinations: list[Combination]) -> str:
    """Identity of the grid: a sweep started again with the same grid resumes its parent run."""
    hashes = sorted(combination.config_hash for combination in combinations)
    return hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:16]


def grid_table(combinations: list[Combination]) -> list[dict[str, Any]]:
    """The grid as logged on the parent run (the report reads the hashes back from it)."""
    return [
        {"label": c.label, "model": c.config.model, "method": c.config.method, "repeat": c.config.repeat,
         "method_params": c.config.method_params, "config_hash": c.config_hash}
        for c in combinations
    ]


# --------------------------------------------------------------------------- devices


def parse_gpus(text: str, visible: int) -> list[int]:
    """``0,1`` → torch device indices, each at most once and visible here."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items or not all(item.isdigit() for item in items) or len(set(items)) != len(items):
        raise ConfigError(f"--gpus {text!r} must list distinct GPU indices such as 0,1,2")
    indices = [int(item) for item in items]
    if max(indices) >= visible:
        raise ConfigError(
            f"--gpus {text} names GPU {max(indices)} but {visible} CUDA devices are visible here; "
            "list visible GPUs only, or drop --gpus to run sequentially"
        )
    return indices


def pinned_device_ids(indices: list[int], visible_env: str | None) -> list[str]:
    """What each child's ``CUDA_VISIBLE_DEVICES`` must be so it sees exactly that one GPU.

    Indices count the GPUs visible here, so under an outer ``CUDA_VISIBLE_DEVICES`` they map
    through it to the ids the driver understands.
    """
    if not visible_env:
        return [str(index) for index in indices]
    outer = [item.strip() for item in visible_env.split(",")]
    return [outer[index] for index in indices]


def pinned_run_device(requested: str, where: str) -> str:
    """The device a child pinned to one GPU resolves: ``cuda:0``, whatever its physical id."""
    if requested in ("auto", "cuda", "cuda:0"):
        return "cuda:0"
    raise ConfigError(
        f"--device {requested} does not fit {where}: each run sees its one GPU as cuda:0; "
        "pass --device cuda (or auto)"
    )


# --------------------------------------------------------------------------- progress


@dataclass
class Outcome:
    """How one combination ended."""

    combination: Combination
    ok: bool
    seconds: float
    detail: str  # the child's last output lines or the run's final status
    rejected_input: bool = False


class Progress:
    """The overall bar (combinations done / total, ETA) and one bar per running child.

    Bars only on a terminal; elsewhere (logs, CI) one line per finished combination.
    """

    def __init__(self, total: int, done: int, slots: int, bars: bool) -> None:
        self._total, self._done = total, done
        self.bars = bars
        self._overall = tqdm(total=total, initial=done, desc="sweep", unit="run", position=0,
                             disable=not bars, dynamic_ncols=True)
        self._runs = [tqdm(total=1, desc="idle", unit="epoch", position=index + 1, leave=False,
                           disable=not bars, dynamic_ncols=True) for index in range(slots)]

    def started(self, slot: int, combination: Combination) -> None:
        bar = self._runs[slot]
        bar.reset(total=combination.config.epochs)
        bar.set_description(combination.label)

    def epochs(self, slot: int, done: int) -> None:
        bar = self._runs[slot]
        if done != bar.n:
            bar.n = done
            bar.refresh()

    def finished(self, outcome: Outcome, slot: int | None = None) -> None:
        self._done += 1
        state = "finished" if outcome.ok else "FAILED"
        line = f"[{self._done}/{self._total}] {outcome.combination.label} {state} in {outcome.seconds:.0f} s"
        if not outcome.ok:
            line += f": {outcome.detail}"
        if self.bars:
            if slot is not None:
                self._runs[slot].reset(total=1)
                self._runs[slot].set_description("idle")
            self._overall.update(1)
            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in (*self._runs, self._overall):
            bar.close()


# --------------------------------------------------------------------------- local children


@dataclass
class _Running:
    combination: Combination
    process: subprocess.Popen
    started: float


class LocalRunner:
    """Runs combinations as ``joulebench train`` children, one at a time per slot.

    A slot is a GPU (its ``CUDA_VISIBLE_DEVICES`` value) or, without ``--gpus``, the host
    (``None``): runs on one device are always sequential. Children get their own session so a
    Ctrl-C reaches the sweep only, which then stops each child once, with SIGTERM.
    """

    def __init__(
        self,
        slots: list[str | None],
        parent_run_id: str,
        log_dir: Path,
        command: Callable[[Combination, str], list[str]] | None = None,
    ) -> None:
        self._slots = slots
        self._parent_run_id = parent_run_id
        self._log_dir = log_dir
        self._command = command or _train_command
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._events: queue.Queue[tuple[str, int, Any]] = queue.Queue()

    def run(self, todo: list[Combination], progress: Progress) -> list[Outcome]:
        pending: queue.Queue[Combination] = queue.Queue()
        for combination in todo:
            pending.put(combination)
        workers = [threading.Thread(target=self._work, args=(slot, pending), daemon=True)
                   for slot in range(len(self._slots))]
        for worker in workers:
            worker.start()
        outcomes: list[Outcome] = []
        try:
            while any(worker.is_alive() for worker in workers) or not self._events.empty():
                try:
                    kind, slot, payload = self._events.get(timeout=PROGRESS_POLL_SECONDS)
                except queue.Empty:
                    if progress.bars:
                        self._poll_epochs(progress)
                    continue
                if kind == "started":
                    progress.started(slot, payload)
                else:
                    outcomes.append(payload)
                    progress.finished(payload, slot)
        except KeyboardInterrupt:
            self.terminate()
            for worker in workers:
                worker.join()
            raise
        return outcomes

    def terminate(self) -> None:
        """Start no more children; SIGTERM the running ones and wait until each has exited."""
        with self._lock:
            self._stop.set()
            processes = [running.process for running in self._running.values()]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(TERMINATE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _work(self, slot: int, pending: queue.Queue[Combination]) -> None:
        while not self._stop.is_set():
            try:
                combination = pending.get_nowait()
            except queue.Empty:
                return
            outcome = self._run_child(slot, combination)
            if outcome is None:
                return
            self._events.put(("finished", slot, outcome))
            if outcome.rejected_input:
                self._stop.set()  # the same input would be rejected by every other child

    def _run_child(self, slot: int, combination: Combination) -> Outcome | None:
        log_path = self._log_dir / f"{combination.label}-{combination.config_hash}.log"
        environment = dict(os.environ)
        if self._slots[slot] is not None:
            environment["CUDA_VISIBLE_DEVICES"] = self._slots[slot]
        with log_path.open("w") as log, self._lock:
            if self._stop.is_set():
                return None
            process = subprocess.Popen(
                self._command(combination, self._parent_run_id), stdout=log, stderr=subprocess.STDOUT,
                env=environment, start_new_session=True,
            )
            self._running[slot] = _Running(combination, process, time.monotonic())
        self._events.put(("started", slot, combination))
        returncode = process.wait()
        with self._lock:
            started = self._running.pop(slot).started
        return Outcome(
            combination, ok=returncode == 0, seconds=time.monotonic() - started,
            detail=f"exit {returncode}: {_tail(log_path)}", rejected_input=returncode == EXIT_BAD_INPUT,
        )

    def _poll_epochs(self, progress: Progress) -> None:
        with self._lock:
            running = {slot: entry.combination for slot, entry in self._running.items()}
        for slot, combination in running.items():
            done = tracking.child_epochs_done(self._parent_run_id, combination.config_hash)
            if done is not None:
                progress.epochs(slot, done)


def _train_command(combination: Combination, parent_run_id: str) -> list[str]:
    """``joulebench train`` under this interpreter (works installed or from a bare checkout)."""
    return [sys.executable, "-m", "joulebench", "train", *combination.train_arguments(parent_run_id)]


def _tail(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:]) or "no output"


# --------------------------------------------------------------------------- kubernetes


class ProjectRun(Protocol):
    """A submitted MLflow Project run (``tracking.submit_kubernetes_run`` returns one)."""

    run_id: str

    def state(self) -> str: ...

    def cancel(self) -> None: ...


TERMINAL_STATES = frozenset({"FINISHED", "FAILED", "KILLED"})


def load_backend_config(path: Path) -> tuple[dict[str, Any], Path]:
    """The MLflow Kubernetes backend config (JSON) and the project folder it sits in.

    The folder is the unit: its ``MLproject`` is what runs in the pods, and a relative
    ``kube-job-template-path`` is taken relative to it (MLflow would take the cwd).
    """
    if not path.is_file():
        raise ConfigError(
            f"--backend-config {path} does not exist; copy deploy/kubernetes/backend-config.json and edit it"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"--backend-config {path} is not valid JSON ({error}); see deploy/kubernetes/backend-config.json"
        ) from None
    missing = [key for key in KUBERNETES_CONFIG_KEYS if not isinstance(config, dict) or not config.get(key)]
    if missing:
        raise ConfigError(
            f"--backend-config {path} lacks {', '.join(missing)}; MLflow's Kubernetes backend needs "
            f"{' and '.join(KUBERNETES_CONFIG_KEYS)} (see deploy/kubernetes/backend-config.json)"
        )
    project_dir = path.resolve().parent
    if not (project_dir / "MLproject").is_file():
        raise ConfigError(
            f"no MLproject beside {path}; keep backend-config.json in a copy of deploy/kubernetes/"
        )
    template = Path(config["kube-job-template-path"])
    template = template if template.is_absolute() else project_dir / template
    check_job_template(template)
    return config | {"kube-job-template-path": str(template)}, project_dir


def check_job_template(path: Path) -> None:
    """The Job template, with the keys MLflow fills in (it raises KeyError deep inside otherwise)."""
    where = f"job template {path}"
    if not path.is_file():
        raise ConfigError(
            f"{where} does not exist; set kube-job-template-path to "
            "deploy/kubernetes/job-template.yaml or a copy of it"
        )
    try:
        job = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML ({str(error).splitlines()[0]})") from None
    problems = []
    if not isinstance(job, dict) or job.get("kind") != "Job" or job.get("apiVersion") != "batch/v1":
        problems.append("apiVersion batch/v1 and kind Job")
    elif not isinstance(job.get("metadata"), dict) or not job["metadata"].get("namespace"):
        problems.append("metadata.namespace")
    else:
        containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")
        if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
            problems.append("spec.template.spec.containers with one container")
    if problems:
        raise ConfigError(
            f"{where} lacks {problems[0]}, which MLflow's Kubernetes backend fills in; "
            "start from deploy/kubernetes/job-template.yaml"
        )


def kubernetes_run_device(requested: str) -> str:
    """Pods get one GPU from the template (cuda:0), or run on CPU if asked to."""
    return "cpu" if requested == "cpu" else pinned_run_device(requested, "--backend kubernetes")


class KubernetesRunner:
    """Submits every combination as an MLflow Project run on the cluster, then waits on all.

    The template asks for one GPU per pod, so the cluster never puts two measured runs on one
    device. Each submitted run is nested under the sweep's parent run as soon as it exists. A
    Job that ends before joulebench could close its run (image pull error, evicted pod, Ctrl-C
    here) leaves that run open: it is closed with the Job's state, so a later sweep reruns it.
    """

    def __init__(
        self,
        backend_config: dict[str, Any],
        project_dir: Path,
        parent_run_id: str,
        experiment_id: str,
        submit: Callable[..., ProjectRun] | None = None,
        poll_seconds: float = KUBERNETES_POLL_SECONDS,
    ) -> None:
        self._backend_config = backend_config
        self._project_dir = project_dir
        self._parent_run_id = parent_run_id
        self._experiment_id = experiment_id
        self._submit = submit or tracking.submit_kubernetes_run
        self._poll_seconds = poll_seconds

    def run(self, todo: list[Combination], progress: Progress) -> list[Outcome]:
        submitted: dict[str, tuple[Combination, ProjectRun, float]] = {}
        try:
            for combination in todo:
                project_run = self._submit(
                    self._project_dir, KUBERNETES_ENTRY_POINT,
                    combination.kubernetes_parameters(self._parent_run_id),
                    dict(self._backend_config), self._experiment_id, combination.label,
                )
                tracking.adopt_child(project_run.run_id, self._parent_run_id)
                submitted[project_run.run_id] = (combination, project_run, time.monotonic())
            return self._wait(submitted, progress)
        except KeyboardInterrupt:
            for run_id, (_, project_run, _) in submitted.items():
                if project_run.state() not in TERMINAL_STATES:
                    project_run.cancel()
                    tracking.close_if_open(run_id, "KILLED")
            raise

    def _wait(
        self, submitted: dict[str, tuple[Combination, ProjectRun, float]], progress: Progress
    ) -> list[Outcome]:
        outcomes = []
        pending = dict(submitted)
        while pending:
            for run_id, (combination, project_run, started) in list(pending.items()):
                state = project_run.state()
                if state in TERMINAL_STATES:
                    del pending[run_id]
                    if state != "FINISHED":  # a finished pod has closed its run itself
                        tracking.close_if_open(run_id, state)
                    outcome = Outcome(combination, state == "FINISHED", time.monotonic() - started,
                                      f"run {run_id} {state}")
                    outcomes.append(outcome)
                    progress.finished(outcome)
            if pending:
                time.sleep(self._poll_seconds)
        return outcomes


# --------------------------------------------------------------------------- the command


@dataclass
class SweepSummary:
    """What the sweep did, for the closing lines."""

    parent_run_id: str
    resumed: bool
    total: int
    skipped: int
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    def lines(self) -> list[str]:
        ran = len(self.outcomes)
        lines = [
            f"sweep     {self.total} combinations: {ran - len(self.failed)} finished now, "
            f"{self.skipped} already finished (skipped), {len(self.failed)} failed",
            f"parent    {self.parent_run_id}{' (resumed)' if self.resumed else ''}",
        ]
        lines += [f"failed    {o.combination.label}: {o.detail}" for o in self.failed]
        lines.append(f"report    joulebench report --parent {self.parent_run_id}")
        return lines


def run_sweep(
    *,
    models: str,
    methods: str,
    repeats: str,
    params: tuple[str, ...],
    gpus: str | None,
    backend: str,
    backend_config: Path | None,
    force: bool,
    progress: bool,
    **options: Any,
) -> SweepSummary:
    """Validate everything, open (or resume) the parent run, run what is not finished yet."""
    model_list = parse_names(models, "--models", PAPER_MODELS)
    method_list = parse_names(methods, "--methods", method_names())
    overrides = parse_method_overrides(params, method_list)
    slots, run_device, kubernetes = _placement(gpus, backend, backend_config, options["device"])
    combinations = expand_grid(
        model_list, method_list, parse_repeats(repeats), overrides, options, run_device
    )

    experiment = options["experiment"]
    parent = tracking.open_sweep_run(
        experiment, sweep_hash(combinations), grid_table(combinations), force=force,
        params={"models": ",".join(model_list), "methods": ",".join(method_list), "repeats": repeats,
                "method_params": " ".join(params) or "defaults", "combinations": len(combinations)},
        tags={"sweep.backend": backend, "sweep.gpus": gpus or "none"},
    )
    finished = set() if force else tracking.finished_config_hashes(parent.experiment_id)
    todo = [c for c in combinations if c.config_hash not in finished]
    skipped = len(combinations) - len(todo)
    bars = progress and sys.stderr.isatty()
    with TemporaryDirectory(prefix="joulebench-sweep-") as scratch:
        runner = (
            KubernetesRunner(kubernetes[0], kubernetes[1], parent.run_id, parent.experiment_id)
            if kubernetes else LocalRunner(slots, parent.run_id, Path(scratch))
        )
        meter = Progress(len(combinations), skipped, 0 if kubernetes else len(slots), bars)
        status = "FAILED"
        try:
            outcomes = runner.run(todo, meter)
            rejected = [outcome for outcome in outcomes if outcome.rejected_input]
            if rejected:
                status = "FAILED"
                raise ConfigError(
                    f"{rejected[0].combination.label} rejected its input ({rejected[0].detail}); "
                    "fix it and run the same sweep again: finished combinations are kept"
                )
            status = "FINISHED" if all(outcome.ok for outcome in outcomes) else "FAILED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            meter.close()
            tracking.end_sweep_run(parent.run_id, status, Path(scratch))
    return SweepSummary(parent.run_id, parent.resumed, len(combinations), skipped, outcomes)


def _placement(
    gpus: str | None, backend: str, backend_config: Path | None, device: str
) -> tuple[list[str | None], str | None, tuple[dict[str, Any], Path] | None]:
    """Where children run: slots (local), the device they resolve, the Kubernetes backend."""
    if backend == "kubernetes":
        if gpus:
            raise ConfigError(
                "--gpus is for local runs; with --backend kubernetes the job template's "
                "nvidia.com/gpu places runs: drop --gpus"
            )
        if backend_config is None:
            raise ConfigError(
                "--backend kubernetes needs --backend-config FILE "
                "(start from deploy/kubernetes/backend-config.json)"
            )
        tracking.check_cluster_reachable_store()
        return [None], kubernetes_run_device(device), load_backend_config(backend_config)
    if backend_config is not None:
        raise ConfigError(
            "--backend-config is only read with --backend kubernetes; add that or drop --backend-config"
        )
    if not gpus:
        return [None], None, None
    import torch  # only --gpus needs to count devices

    indices = parse_gpus(gpus, torch.cuda.device_count())
    slots = pinned_device_ids(indices, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return list(slots), pinned_run_device(device, "--gpus"), None
