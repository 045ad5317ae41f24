"""A real single-node Slurm (munged, slurmctld, slurmd as root) that a test starts and stops.

Everything lives in temporary folders: the munge key and socket, slurm.conf, state, spool, logs
and pid files. The daemons run in the foreground under this process (no systemd, no /etc/slurm,
no /run/munge), on free ports, so they collide neither with a system-wide Slurm nor with a
second copy of themselves. Clients find the cluster through ``SlurmCluster.env`` (SLURM_CONF).

Slurm 22.05 (Debian 12) has no accounting_storage/filetxt, so ``sacct`` needs slurmdbd and is
not available here: a job's final state, exit code and reason are read from ``scontrol show job``
(kept for MinJobAge seconds after it ends) and also written to ``jobcomp`` (jobcomp/filetxt).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from joulebench.sweep.slurm import parse_record

from . import free_port

PARTITION = "debug"
# Job states after which a job never changes again (squeue(1) "JOB STATE CODES").
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
})
# Inherited settings that would steer our clients elsewhere (a test run inside a real Slurm job).
_CLIENT_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_", "SACCT_")


@dataclass
class SlurmCluster:
    """A running cluster: ``env`` is what Slurm clients (sbatch, squeue, scontrol) need."""

    folder: Path           # slurm.conf, state, logs (kept by pytest for a post-mortem)
    runtime: Path          # munge socket and slurmd spool: a short path (AF_UNIX: 108 bytes)
    conf: Path
    env: dict[str, str]
    node: str
    logs: dict[str, Path]  # munged, slurmctld, slurmd
    jobcomp: Path          # one line per finished job (jobcomp/filetxt)
    partition: str = PARTITION
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster, e.g. ``run("squeue", "-h")``."""
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str) -> str:
        """Submit a batch job; returns its id (for an array: the array's job id)."""
        return self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` as one dict per job record (an array gives one per task)."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return [parse_record(line) for line in out.splitlines() if line.strip()]

    def wait(self, job_id: str, until: frozenset[str] = FINAL_STATES, timeout: float = 60) -> list[dict[str, str]]:
        """Block until every record of ``job_id`` is in a state of ``until`` (by default: final,
        so ExitCode and Reason are settled); returns the records."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.jobs(job_id)
            if records and all(r["JobState"] in until for r in records):
                return records
            if time.monotonic() > deadline:
                states = [(r["JobId"], r["JobState"], r.get("Reason")) for r in records]
                raise TimeoutError(f"job {job_id} not in {sorted(until)} after {timeout}s: {states}\n{self.tails()}")
            time.sleep(0.3)

    def tails(self, lines: int = 25) -> str:
        """The last lines of every daemon log, for a failure message."""
        parts = []
        for name, path in self.logs.items():
            if not (path.exists() and path.stat().st_size) and path.with_suffix(".stderr").exists():
                path = path.with_suffix(".stderr")  # died before opening its log
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"--- {name} ({path}) ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


@contextmanager
def slurm_cluster(folder: Path, start_seconds: float = 60.0) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd with their files under ``folder``; stop and reap them
    (and any job left) on exit, however the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    # pytest's tmp_path can exceed the AF_UNIX limit once slurmstepd adds "<node>_<job>.<step>".
    runtime = Path(tempfile.mkdtemp(prefix="jb-slurm-", dir="/tmp"))
    cluster = None
    try:
        cluster = _configure(folder, runtime)
        _start(cluster, start_seconds)
        yield cluster
    finally:
        if cluster is not None:
            _stop(cluster)
        shutil.rmtree(runtime, ignore_errors=True)


def _node_line() -> tuple[str, str]:
    """slurmd -C: this host's name and its real CPUs/memory, so the node never goes INVAL."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return line.split()[0].split("=", 1)[1], line


def _configure(folder: Path, runtime: Path) -> SlurmCluster:
    node, node_line = _node_line()
    for sub in ("state", "log"):
        (folder / sub).mkdir(exist_ok=True)
    (runtime / "spool").mkdir()
    key = runtime / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)  # munged refuses a key others can read
    logs = {name: folder / "log" / f"{name}.log" for name in ("munged", "slurmctld", "slurmd")}
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, runtime, node, node_line, logs))
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_PREFIXES)}
    env["SLURM_CONF"] = str(conf)
    return SlurmCluster(folder=folder, runtime=runtime, conf=conf, env=env, node=node, logs=logs,
                        jobcomp=folder / "log" / "jobcomp.txt")


def _slurm_conf(folder: Path, runtime: Path, node: str, node_line: str, logs: dict[str, Path]) -> str:
    node_spec = " ".join(word for word in node_line.split() if not word.startswith("UpTime="))
    controller_port, node_port = _two_free_ports()
    return "\n".join([
        "ClusterName=joulebench",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={controller_port}",  # not 6817/6818: a system Slurm may hold those
        f"SlurmdPort={node_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={runtime / 'munge.sock'}",  # our munged, not /run/munge
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={runtime / 'spool'}",
        f"SlurmctldPidFile={runtime / 'slurmctld.pid'}",
        f"SlurmdPidFile={runtime / 'slurmd.pid'}",
        f"SlurmctldLogFile={logs['slurmctld']}",
        f"SlurmdLogFile={logs['slurmd']}",
        # No cgroups: a container or CI runner rarely lets us manage them.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={folder / 'log' / 'jobcomp.txt'}",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "ReturnToService=2",
        "InactiveLimit=0",
        "KillWait=2",
        "MinJobAge=3600",  # finished jobs stay visible to scontrol (no sacct without slurmdbd)
        "SlurmdTimeout=60",
        "SchedulerParameters=sched_interval=1",  # start the next pending job (array task) at once
        f"{node_spec} NodeAddr=127.0.0.1 State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:  # the kernel may hand the same free port out twice
        second = free_port()
    return first, second


def _spawn(cluster: SlurmCluster, name: str, argv: list[str]) -> None:
    # Foreground daemons: their pid is ours to signal. munged's log is its stderr; slurmctld and
    # slurmd write their LogFile (slurmstepd too) and copy it to stderr under -D, so that copy
    # goes to <name>.stderr, read only when the log was never opened (a fatal config error).
    console = cluster.logs[name]
    if name != "munged":
        console = console.with_suffix(".stderr")
    with console.open("ab") as log:
        cluster.processes[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=cluster.env, start_new_session=True)


def _start(cluster: SlurmCluster, start_seconds: float) -> None:
    runtime, deadline = cluster.runtime, time.monotonic() + start_seconds
    # --force: the socket's folder (0700 under /tmp) is not world-executable, as munged wants.
    _spawn(cluster, "munged", [
        "munged", "--foreground", "--force", f"--socket={runtime / 'munge.sock'}",
        f"--key-file={runtime / 'munge.key'}", f"--pid-file={runtime / 'munged.pid'}",
        f"--seed-file={runtime / 'munged.seed'}"])  # --foreground: it logs to stderr
    _until(cluster, deadline, lambda: (runtime / "munge.sock").exists(), "munged made no socket")
    _spawn(cluster, "slurmctld", ["slurmctld", "-D", "-c", "-f", str(cluster.conf)])
    _spawn(cluster, "slurmd", ["slurmd", "-D", "-N", cluster.node, "-f", str(cluster.conf)])
    _until(cluster, deadline, lambda: _node_ready(cluster), "the node never became idle")


def _node_ready(cluster: SlurmCluster) -> bool:
    state = _node_state(cluster)
    if state.startswith(("inval", "drain")):  # slurmd -C disagrees with slurm.conf: no waiting helps
        raise RuntimeError(f"Slurm did not start: node {cluster.node} is {state!r}\n{cluster.tails()}")
    return state == "idle"


def _node_state(cluster: SlurmCluster) -> str:
    result = cluster.run("sinfo", "-h", "-o", "%T", check=False, timeout=20)
    return result.stdout.strip() if result.returncode == 0 else ""


def _until(cluster: SlurmCluster, deadline: float, ready: Callable[[], bool], failure: str) -> None:
    while not ready():
        dead = [name for name, p in cluster.processes.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else "timed out"
            state = _node_state(cluster) if "slurmctld" not in dead else "?"
            raise RuntimeError(f"Slurm did not start: {failure} ({why}; node: {state!r})\n{cluster.tails()}")
        time.sleep(0.2)


def _stop(cluster: SlurmCluster) -> None:
    controller = cluster.processes.get("slurmctld")
    if controller is not None and controller.poll() is None:
        # Cancel first so slurmstepd ends each job's processes while slurmd still listens.
        cluster.run("scancel", f"--partition={cluster.partition}", check=False, timeout=30)
        _drain(cluster, time.monotonic() + 20)
    for name in ("slurmd", "slurmctld", "munged"):  # clients first, munged last
        _terminate(cluster.processes.get(name))
    _reap_strays(cluster.conf)


def _drain(cluster: SlurmCluster, deadline: float) -> None:
    """Wait until no job of ours is pending, running or completing."""
    while time.monotonic() < deadline:
        result = cluster.run("squeue", "-h", "-o", "%i", check=False, timeout=20)
        if result.returncode or not result.stdout.strip():
            return
        time.sleep(0.3)


def _terminate(process: subprocess.Popen | None, seconds: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _reap_strays(conf: Path) -> None:
    """SIGKILL whatever still carries our SLURM_CONF: a slurmstepd or job that outlived slurmd
    (slurmstepd is detached from slurmd by design)."""
    for pid in processes_of(conf):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def processes_of(conf: Path) -> list[int]:
    """Live processes that carry ``SLURM_CONF=conf``: our daemons, slurmstepd and jobs. Our temp
    conf path names only what this cluster caused, never another Slurm or a test beside us;
    a zombie (reaped later by init) has no environment and is not counted."""
    marker, found = f"SLURM_CONF={conf}".encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone already, or not ours to read
    return found
