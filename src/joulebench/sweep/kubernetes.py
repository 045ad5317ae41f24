"""The Kubernetes backend: combinations submitted as MLflow Project runs, then waited on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from joulebench import timings, tracking
from joulebench.inputs import read_input_file
from joulebench.errors import ConfigError
from joulebench.sweep.grid import Combination
from joulebench.sweep.progress import Outcome, Progress

KUBERNETES_ENTRY_POINT = "train"
KUBERNETES_CONFIG_KEYS = ("kube-job-template-path", "repository-uri")


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
    text = read_input_file("--backend-config", path, "copy deploy/kubernetes/backend-config.json and edit it")
    try:
        config = json.loads(text)
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
    text = read_input_file("job template", path, "set kube-job-template-path to "
                           "deploy/kubernetes/job-template.yaml or a copy of it")
    try:
        job = yaml.safe_load(text)
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
        poll_seconds: float | None = None,
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
                    tracking.settle_cell(self._parent_run_id, tracking.project_run(run_id), "KILLED",
                                         "sweep: Ctrl-C cancelled its project run")
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
                    status = tracking.settle_cell(  # a pod that finished has closed its run itself
                        self._parent_run_id, tracking.project_run(run_id), "FAILED" if state == "FINISHED" else state,
                        f"sweep: MLflow Projects reported {state}")
                    outcome = Outcome(combination, status, time.monotonic() - started, f"run {run_id} {state}")
                    outcomes.append(outcome)
                    progress.finished(outcome)
            if pending:
                time.sleep(self._poll_seconds or timings.KUBERNETES_POLL.seconds())
        return outcomes
