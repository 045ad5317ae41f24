"""One sweep of a grid at a time on a host.

Two identical sweeps started together would each find every cell unfinished and run each twice at
once on one device, corrupting both measurements; the check for a live cell cannot see a run the
other sweep has not opened yet. So a sweep holds an exclusive ``flock`` on a file named by its
store, experiment and grid for as long as it runs. The kernel drops the lock however its holder
ends (SIGKILL and a crashed host included), so a stale lock never blocks the rerun that resumes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from joulebench.errors import EnvironmentFault

LOCK_FOLDER = Path(tempfile.gettempdir()) / "joulebench-locks"


@contextmanager
def hold_grid(store_uri: str, experiment_id: str, grid_hash: str) -> Iterator[None]:
    """Hold the grid's lock while the body runs; EnvironmentFault if another sweep holds it."""
    key = hashlib.sha256(f"{store_uri}\0{experiment_id}\0{grid_hash}".encode()).hexdigest()[:16]
    path = LOCK_FOLDER / f"sweep-{key}.lock"
    descriptor = _open_shared(path)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EnvironmentFault(
                f"the same sweep (grid {grid_hash}, experiment {experiment_id}) is already running on this "
                f"host{_holder(path)}; two runs on one device corrupt both measurements: wait for it or "
                "stop it, then run it again (finished cells are kept)"
            ) from None
        _record_holder(descriptor)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _open_shared(path: Path) -> int:
    """The lock file, made if new in a folder every user of the host can add to (like /tmp)."""
    if not LOCK_FOLDER.is_dir():
        LOCK_FOLDER.mkdir(exist_ok=True)
        os.chmod(LOCK_FOLDER, 0o1777)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:  # another user's lock file: reading is enough to lock it
        return os.open(path, os.O_RDONLY)


def _record_holder(descriptor: int) -> None:
    """Write this process's id into the lock file, for the refusal another sweep prints."""
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
    except OSError:  # opened read-only: the refusal then names no process
        pass


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isascii() and pid.isdigit() else ""
