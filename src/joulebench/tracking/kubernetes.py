"""Sweep cells submitted as MLflow Project runs to Kubernetes (``sweep --backend kubernetes``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus

from joulebench.errors import ConfigError, EnvironmentFault
from joulebench.tracking.store import tracking_uri


def check_cluster_reachable_store(who: str) -> None:
    """A cluster's runs log to the store themselves: it must be a server, not a file on this
    machine (a sqlite file shared over NFS by many writers is not safe either). ``who``: "pods"
    (Kubernetes, which may be given its own KUBE_MLFLOW_TRACKING_URI) or "Slurm's nodes"."""
    if tracking_uri().startswith(("http://", "https://")) or (
            who == "pods" and os.environ.get("KUBE_MLFLOW_TRACKING_URI")):
        return
    raise ConfigError(
        f"{who} cannot reach the MLflow store {tracking_uri()}; set MLFLOW_TRACKING_URI"
        f"{' (or KUBE_MLFLOW_TRACKING_URI)' if who == 'pods' else ''} to an http(s):// tracking server "
        "the cluster can reach (`mlflow server`, see docs/sweep-and-report.md)"
    )


@dataclass
class KubernetesProjectRun:
    """An MLflow Project run submitted to Kubernetes: its run id, state, and a way to stop it."""

    submitted: Any  # mlflow.projects.kubernetes.KubernetesSubmittedRun

    @property
    def run_id(self) -> str:
        return self.submitted.run_id

    def state(self) -> str:
        status = self.submitted.get_status()
        return status if isinstance(status, str) else RunStatus.to_string(status)

    def cancel(self) -> None:
        self.submitted.cancel()


def submit_kubernetes_run(
    project_dir: Path, entry_point: str, parameters: dict[str, str], backend_config: dict[str, Any],
    experiment_id: str, run_name: str,
) -> KubernetesProjectRun:
    """Build and push the project's image, create the Job, return without waiting.

    What stops a submission here is the environment (no docker, no registry login, no kube
    context, no rights in the namespace): EnvironmentFault, one line. A missing Python package
    is the installation's to fix: ConfigError.
    """
    import mlflow.projects

    try:
        import docker  # noqa: F401  MLflow's Kubernetes backend builds and pushes the image with it
        from kubernetes.client.exceptions import ApiException
        from kubernetes.config.config_exception import ConfigException
    except ImportError as error:
        raise ConfigError(
            f"the kubernetes backend needs the {error.name} package; pip install 'kubernetes<36' docker"
        ) from None
    try:
        submitted = mlflow.projects.run(
            str(project_dir), entry_point=entry_point, parameters=parameters, experiment_id=experiment_id,
            backend="kubernetes", backend_config=backend_config, synchronous=False, build_image=True,
            run_name=run_name,
        )
    except (mlflow.exceptions.ExecutionException, ConfigException, ApiException) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise EnvironmentFault(
            f"MLflow could not submit {run_name} to Kubernetes ({reason}); check docker, the registry "
            "login, the kube context and docs/sweep-and-report.md"
        ) from None
    return KubernetesProjectRun(submitted)
