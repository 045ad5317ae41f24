"""A real single-node Slurm 22.05 (tests/support/slurm.py) runs, cancels and arrays batch jobs
and leaves nothing behind: the ground `joulebench sweep --backend slurm` is tested on."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support.slurm import SlurmCluster, processes_of, slurm_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("slurmctld") is None,
                       reason="Slurm is not installed (install.sh installs slurm-wlm and munge as root)"),
]


def submit(cluster: SlurmCluster, work: Path, command: str, *options: str) -> str:
    return cluster.sbatch(f"--chdir={work}", *options, "--wrap", command)


def assert_gone(cluster: SlurmCluster, pids: list[int]) -> None:
    """No daemon, slurmstepd or job of this cluster is alive (by pid, environment and command line)."""
    assert all(process.poll() is not None for process in cluster.processes.values())
    assert processes_of(cluster.conf) == [], f"left running: {processes_of(cluster.conf)}"
    for marker in (str(cluster.conf), str(cluster.runtime)):  # slurmctld/slurmd -f conf; munged --socket
        found = subprocess.run(["pgrep", "-a", "-f", marker], capture_output=True, text=True).stdout
        assert found == "", f"left running: {found}"
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not cluster.runtime.exists()


def test_slurm_runs_cancels_and_arrays_jobs(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    with slurm_cluster(tmp_path / "slurm") as cluster:
        print(f"slurm up in {time.monotonic() - started:.1f} s on node {cluster.node}")
        hello = submit(cluster, work, "echo hello from $SLURM_JOB_ID > OUT")
        sleeper = submit(cluster, work, "sleep 300")

        [done] = cluster.wait(hello)
        assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0"), done
        assert (work / "OUT").read_text() == f"hello from {hello}\n"

        cluster.wait(sleeper, until=frozenset({"RUNNING"}))  # cancel a running job, not a queued one
        cluster.run("scancel", sleeper)
        [cancelled] = cluster.wait(sleeper)
        assert cancelled["JobState"] == "CANCELLED", cancelled

        array = submit(cluster, work, "echo task $SLURM_ARRAY_TASK_ID > task-$SLURM_ARRAY_TASK_ID", "--array=0-1")
        tasks = cluster.wait(array)
        assert sorted((t["ArrayTaskId"], t["JobState"]) for t in tasks) == [("0", "COMPLETED"), ("1", "COMPLETED")]
        assert [(work / f"task-{i}").read_text() for i in (0, 1)] == ["task 0\n", "task 1\n"]
        pids = [process.pid for process in cluster.processes.values()]
    assert_gone(cluster, pids)


def test_slurm_starts_again_after_a_stop_with_a_job_running(tmp_path: Path) -> None:
    """Stopping with a job still running leaks nothing that stops the next cluster starting."""
    for attempt in range(2):
        with slurm_cluster(tmp_path / f"slurm{attempt}") as cluster:
            job = submit(cluster, tmp_path, "sleep 300")
            cluster.wait(job, until=frozenset({"RUNNING"}))
            pids = [process.pid for process in cluster.processes.values()]
        assert_gone(cluster, pids)
