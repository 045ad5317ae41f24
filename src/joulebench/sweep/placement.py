"""Where a sweep's children run: which slots (GPUs) locally, or which cluster (Kubernetes, Slurm)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joulebench import tracking
from joulebench.errors import ConfigError
from joulebench.sweep.kubernetes import load_backend_config
from joulebench.sweep.slurm import SlurmOptions, check_submission


@dataclass(frozen=True)
class KubernetesBackend:
    """MLflow's Kubernetes backend config and the project folder it sits in."""

    config: dict[str, Any]
    project_dir: Path


@dataclass(frozen=True)
class Placement:
    """Where children run.

    ``slots``: one child at a time per entry — a ``CUDA_VISIBLE_DEVICES`` value, or ``None`` for
    the host. ``run_device``: the device children resolve where it is not this process's to
    resolve (a pinned GPU is always cuda:0, a pod's GPU is the template's), else None.
    ``kubernetes`` or ``slurm``: set when children are submitted to a cluster instead.
    """

    slots: list[str | None]
    run_device: str | None
    kubernetes: KubernetesBackend | None = None
    slurm: SlurmOptions | None = None


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


def kubernetes_run_device(requested: str) -> str:
    """Pods get one GPU from the template (cuda:0), or run on CPU if asked to."""
    return "cpu" if requested == "cpu" else pinned_run_device(requested, "--backend kubernetes")


def slurm_placement(gpus: str | None, device: str, slurm: SlurmOptions) -> Placement:
    """Slurm places the cells: each its own GPU(s) (cuda:0 to the cell), or the CPU with 0 GPUs."""
    if gpus:
        raise ConfigError("--gpus is for local runs; with --backend slurm each cell gets "
                          "--slurm-gpus-per-cell GPUs from Slurm: drop --gpus")
    tracking.check_cluster_reachable_store("Slurm's nodes")
    check_submission(slurm)
    if not slurm.gpus_per_cell:
        return Placement([None], "cpu", slurm=slurm)
    return Placement([None], pinned_run_device(device, "--backend slurm"), slurm=slurm)


def place(gpus: str | None, backend: str, backend_config: Path | None, device: str,
          slurm: SlurmOptions | None = None) -> Placement:
    """Where children run, from the sweep's --gpus, --backend, --backend-config, --device and
    --slurm-* options (``slurm``: None when none was given)."""
    if slurm is not None and backend != "slurm":
        raise ConfigError("--slurm-* options are read only with --backend slurm; add that or drop them")
    if backend == "slurm":
        return slurm_placement(gpus, device, slurm or SlurmOptions())
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
        tracking.check_cluster_reachable_store("pods")
        return Placement([None], kubernetes_run_device(device), KubernetesBackend(*load_backend_config(backend_config)))
    if backend_config is not None:
        raise ConfigError(
            "--backend-config is only read with --backend kubernetes; add that or drop --backend-config"
        )
    if not gpus:
        return Placement([None], None)
    import torch  # only --gpus needs to count devices

    indices = parse_gpus(gpus, torch.cuda.device_count())
    slots = pinned_device_ids(indices, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return Placement(list(slots), pinned_run_device(device, "--gpus"))
