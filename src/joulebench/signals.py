"""How a joulebench process ends when it is told to: as on Ctrl-C, with its run closed.

SIGTERM (``kill``, ``scancel``, a sweep stopping its children) and SIGHUP (the terminal or
SSH session closed) raise KeyboardInterrupt, so the run is marked KILLED and the process
exits 130. A stop signal that arrives while the main thread is in a call to the tracking
store takes effect when that call returns (``uninterrupted``): a KeyboardInterrupt in the middle
of an SQLite transaction or an upload leaves the store's connection holding its lock, and the
run's end, written next, then fails as "database is locked". A second signal stops at once.
A sweep's child also asks the kernel to send it SIGTERM when the sweep dies, however it dies
(SIGKILL included): no child outlives its sweep to measure beside a rerun.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PARENT_PID_ENV = "JOULEBENCH_SWEEP_PID"  # set by a sweep for each child it starts
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


_calls_open = 0  # how many ``uninterrupted`` blocks the main thread is in
_held: int | None = None  # a stop signal that arrived inside one, not acted on yet


def _stop(signum: int, frame: Any) -> None:
    global _held
    if _calls_open and _held is None:
        _held = signum
        return
    raise KeyboardInterrupt


def handle_stop_signals() -> None:
    """SIGTERM and SIGHUP end this process as Ctrl-C does; Ctrl-C, unless it is ignored (a
    background job's), waits for an open store call as they do."""
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Finish the block before a stop signal takes effect: it is raised, as KeyboardInterrupt,
    when the outermost block ends. Signals reach only the main thread; other threads pass."""
    global _calls_open, _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _calls_open += 1
    try:
        yield
    finally:
        _calls_open -= 1
        if not _calls_open and _held is not None:
            _held = None
            raise KeyboardInterrupt


def die_with_sweep() -> None:
    """In a sweep's child: SIGTERM when the sweep's thread that started it exits; exit now if
    the sweep is already gone (it died before this process could ask)."""
    sweep_pid = os.environ.get(PARENT_PID_ENV)
    if not sweep_pid or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(sweep_pid):
        sys.exit(f"joulebench: the sweep (pid {sweep_pid}) that started this run is gone; not starting")
