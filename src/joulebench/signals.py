"""How a joulebench process ends when it is told to: as on Ctrl-C, with its run closed.

SIGTERM (``kill``, ``scancel``, a sweep stopping its children) and SIGHUP (the terminal or
SSH session closed) raise KeyboardInterrupt, so the run is marked KILLED and the process
exits 130. A sweep's child also asks the kernel to send it SIGTERM when the sweep dies,
however it dies (SIGKILL included): no child outlives its sweep to measure beside a rerun.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

PARENT_PID_ENV = "JOULEBENCH_SWEEP_PID"  # set by a sweep for each child it starts
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def handle_stop_signals() -> None:
    """SIGTERM and SIGHUP end this process as Ctrl-C does."""
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _raise_keyboard_interrupt)


def die_with_sweep() -> None:
    """In a sweep's child: SIGTERM when the sweep's thread that started it exits; exit now if
    the sweep is already gone (it died before this process could ask)."""
    sweep_pid = os.environ.get(PARENT_PID_ENV)
    if not sweep_pid or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(sweep_pid):
        sys.exit(f"joulebench: the sweep (pid {sweep_pid}) that started this run is gone; not starting")
