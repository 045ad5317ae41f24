"""Local children: each combination a ``joulebench train`` process, one at a time per slot."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joulebench import tracking
from joulebench.errors import EXIT_BAD_INPUT
from joulebench.signals import PARENT_PID_ENV
from joulebench.sweep.grid import Combination
from joulebench.sweep.progress import Outcome, Progress

PROGRESS_POLL_SECONDS = 2.0
TERMINATE_GRACE_SECONDS = 60.0  # a child marks its run KILLED before exiting; give it time
LOG_TAIL_LINES = 5


@dataclass
class _Running:
    combination: Combination
    process: subprocess.Popen
    started: float


class LocalRunner:
    """Runs combinations as ``joulebench train`` children, one at a time per slot.

    A slot is a GPU (its ``CUDA_VISIBLE_DEVICES`` value) or, without ``--gpus``, the host
    (``None``): runs on one device are always sequential. Children get their own session so a
    Ctrl-C reaches the sweep only, which then stops each child once, with SIGTERM; a sweep
    killed outright takes its children with it (``signals.die_with_sweep``). A child that
    ends without closing its run (SIGKILL, a crash) has it closed here, KILLED or FAILED.
    """

    def __init__(
        self,
        slots: list[str | None],
        parent_run_id: str,
        log_dir: Path,
        command: Callable[[Combination, str], list[str]] | None = None,
    ) -> None:
        self._slots = slots
        self._parent_run_id = parent_run_id
        self._log_dir = log_dir
        self._command = command or _train_command
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._events: queue.Queue[tuple[str, int, Any]] = queue.Queue()

    def run(self, todo: list[Combination], progress: Progress) -> list[Outcome]:
        pending: queue.Queue[Combination] = queue.Queue()
        for combination in todo:
            pending.put(combination)
        workers = [threading.Thread(target=self._work, args=(slot, pending), daemon=True)
                   for slot in range(len(self._slots))]
        for worker in workers:
            worker.start()
        outcomes: list[Outcome] = []
        try:
            while any(worker.is_alive() for worker in workers) or not self._events.empty():
                try:
                    kind, slot, payload = self._events.get(timeout=PROGRESS_POLL_SECONDS)
                except queue.Empty:
                    if progress.bars:
                        self._poll_epochs(progress)
                    continue
                if kind == "started":
                    progress.started(slot, payload)
                else:
                    outcomes.append(payload)
                    progress.finished(payload, slot)
        except KeyboardInterrupt:
            self.terminate()
            for worker in workers:
                worker.join()
            raise
        return outcomes

    def terminate(self) -> None:
        """Start no more children; SIGTERM the running ones and wait until each has exited."""
        with self._lock:
            self._stop.set()
            processes = [running.process for running in self._running.values()]
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(TERMINATE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _work(self, slot: int, pending: queue.Queue[Combination]) -> None:
        while not self._stop.is_set():
            try:
                combination = pending.get_nowait()
            except queue.Empty:
                return
            outcome = self._run_child(slot, combination)
            if outcome is None:
                return
            self._events.put(("finished", slot, outcome))
            if outcome.rejected_input:
                self._stop.set()  # the same input would be rejected by every other child

    def _run_child(self, slot: int, combination: Combination) -> Outcome | None:
        log_path = self._log_dir / f"{combination.label}-{combination.config_hash}.log"
        environment = dict(os.environ) | {PARENT_PID_ENV: str(os.getpid())}
        if self._slots[slot] is not None:
            environment["CUDA_VISIBLE_DEVICES"] = self._slots[slot]
        with log_path.open("w") as log, self._lock:
            if self._stop.is_set():
                return None
            process = subprocess.Popen(
                self._command(combination, self._parent_run_id), stdout=log, stderr=subprocess.STDOUT,
                env=environment, start_new_session=True,
            )
            self._running[slot] = _Running(combination, process, time.monotonic())
        self._events.put(("started", slot, combination))
        returncode = process.wait()
        with self._lock:
            started = self._running.pop(slot).started
        if returncode not in (0, EXIT_BAD_INPUT):  # killed, or crashed, before it closed its run
            tracking.close_child_run(
                self._parent_run_id, combination.config_hash, "KILLED" if returncode < 0 else "FAILED",
                f"sweep: its process ended with {_ended(returncode)}",
            )
        return Outcome(
            combination, ok=returncode == 0, seconds=time.monotonic() - started,
            detail=f"exit {returncode}: {_tail(log_path)}", rejected_input=returncode == EXIT_BAD_INPUT,
        )

    def _poll_epochs(self, progress: Progress) -> None:
        with self._lock:
            running = {slot: entry.combination for slot, entry in self._running.items()}
        for slot, combination in running.items():
            done = tracking.child_epochs_done(self._parent_run_id, combination.config_hash)
            if done is not None:
                progress.epochs(slot, done)


def _train_command(combination: Combination, parent_run_id: str) -> list[str]:
    """``joulebench train`` under this interpreter (works installed or from a bare checkout)."""
    return [sys.executable, "-m", "joulebench", "train", *combination.train_arguments(parent_run_id)]


def _ended(returncode: int) -> str:
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def _tail(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-LOG_TAIL_LINES:]) or "no output"
