"""A rootful podman configured for this machine and kept apart from any other podman use.

Every setting below answers a fact of these machines (DESIGN.md, "Environment facts"):
runc, because crun refuses hybrid cgroups; cgroupfs, because no systemd manages cgroups;
explicit ulimits, because podman's default (1048576 open files) is refused by the kernel here;
events written to a file, because there is no journald. Images and layers live under
``~/.cache/joulebench-container`` so that a later test run finds the base image already built.
The configuration is handed over through CONTAINERS_CONF / CONTAINERS_STORAGE_CONF, so every
podman process started with :attr:`Podman.env` (the Docker-compatible service included) sees the
same storage.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "joulebench-container"

# Enough for torch's thread pools and DataLoader workers; the kernel here refuses podman's default.
PROCESS_LIMIT = 4096


@dataclass(frozen=True)
class Podman:
    """Runs podman against the storage and settings kept under ``cache_root``."""

    cache_root: Path = DEFAULT_CACHE_ROOT

    @property
    def env(self) -> dict[str, str]:
        """The environment for any process that runs podman (or talks to a podman it starts)."""
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.cache_root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.cache_root / "storage.conf"),
        }

    def configure(self) -> None:
        """Write the two configuration files (idempotent: same machine, same content)."""
        run_root = self.cache_root / "run"
        run_root.mkdir(parents=True, exist_ok=True)
        open_files_soft, open_files_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        (self.cache_root / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.cache_root / "storage"}"\n'
            f'runroot = "{run_root}"\n'
        )
        (self.cache_root / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={open_files_soft}:{open_files_hard}",'
            f' "nproc={PROCESS_LIMIT}:{PROCESS_LIMIT}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{run_root / "libpod"}"\n'
        )

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``podman ARGS`` and return its captured output; raise with that output on failure."""
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def image_exists(self, reference: str) -> bool:
        return self.run("image", "exists", reference, check=False).returncode == 0

    def start_service(self, socket_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
        """Start the Docker-compatible API on a unix socket and wait until it answers."""
        with log_path.open("wb") as log:
            service = subprocess.Popen(
                ["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                stop(service)
                raise RuntimeError(f"podman system service did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        return service


def stop(process: subprocess.Popen[bytes], grace_seconds: float = 20) -> None:
    """Stop a process we started with ``start_new_session=True``, and its children.

    Its process group id is its PID, so the group is addressed by that PID alone: SIGTERM,
    then SIGKILL after a grace period.
    """
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:  # the whole group has already exited
        process.wait()
        return
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
