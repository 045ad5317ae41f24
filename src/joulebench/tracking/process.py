"""Which process a run belongs to, so that a later sweep can tell a live run from an orphan.

Every ``train`` run is tagged with its host, pid and the pid's start time (``/proc``: a pid
the kernel reuses for another process has another start time). A run left RUNNING whose
process is gone was killed without a chance to close it (SIGKILL, a crashed node).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

from joulebench import names

HOST_TAG = "process.host"
PID_TAG = "process.pid"
START_TAG = "process.start"


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat); None
    for no such process, or one that has exited and waits to be reaped (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return None if fields[0] in ("Z", "X") else fields[19]


def process_tags() -> dict[str, str]:
    """The tags naming this process, and the Slurm job it runs in, if any."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), START_TAG: _start_time(os.getpid()) or ""} | (
        slurm_tags(os.environ))


def slurm_tags(environment: Mapping[str, str]) -> dict[str, str]:
    """Slurm's job id, node and allocated GPUs, from the variables it sets in a job's environment."""
    if "SLURM_JOB_ID" not in environment:
        return {}
    array = environment.get("SLURM_ARRAY_JOB_ID"), environment.get("SLURM_ARRAY_TASK_ID")
    return {
        names.SLURM_JOB_ID: f"{array[0]}_{array[1]}" if all(array) else environment["SLURM_JOB_ID"],
        names.SLURM_NODE: environment.get("SLURMD_NODENAME", ""),
        names.SLURM_GPUS: environment.get("SLURM_JOB_GPUS") or environment.get("SLURM_STEP_GPUS") or "none",
    }


def process_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process a run's tags name still runs; None when it ran on another host
    (or the run has no such tags) and this host cannot tell."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    started = _start_time(int(tags[PID_TAG]))
    return started is not None and started == tags.get(START_TAG)
