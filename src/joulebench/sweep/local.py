"""Local children: each combination a ``joulebench train`` process, one at a time per slot.

A child is forked from a server process that has imported torch, torchvision, MLflow and the
kit once (``multiprocessing``'s forkserver with those modules preloaded): a new interpreter per
cell spent about 7 of its 12 fixed seconds importing them. Each cell is still its own process,
so its CUDA context is fresh (the server never touches CUDA) and its meters, signals and exit
code are its own.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.context
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, Protocol

from joulebench import timings, tracking
from joulebench.signals import PARENT_PID_ENV
from joulebench.sweep.grid import Combination
from joulebench.sweep.progress import Outcome, Progress, log_tail


PRELOADED = ["joulebench.sweep.warm"]  # the fork server imports it once, before any cell


class Child(Protocol):
    """A started child: ``subprocess.Popen`` or a ``ForkedCell``."""

    pid: int

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, signal: int) -> None: ...

    def kill(self) -> None: ...


class ForkedCell:
    """``joulebench train ARGUMENTS`` in a child forked from the preloaded server."""

    _context: multiprocessing.context.ForkServerContext | None = None

    def __init__(self, arguments: list[str], environment: dict[str, str], log_path: Path) -> None:
        self._process = self._server().Process(target=run_train, args=(arguments, environment, str(log_path)),
                                               daemon=False)
        self._process.start()
        self.pid = self._process.pid

    @classmethod
    def _server(cls) -> multiprocessing.context.ForkServerContext:
        if cls._context is None:
            cls._context = multiprocessing.get_context("forkserver")
            cls._context.set_forkserver_preload(PRELOADED)
        return cls._context

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired("joulebench train", timeout or 0)
        return self._process.exitcode

    def send_signal(self, signal: int) -> None:
        os.kill(self.pid, signal)

    def kill(self) -> None:
        self._process.kill()


def run_train(arguments: list[str], environment: dict[str, str], log_path: str) -> None:
    """In the forked child: its own session (a Ctrl-C reaches the sweep only), its environment,
    its output into the log, then ``joulebench train``; the exit code is train's."""
    os.setsid()
    # The server lives while any holder of its "alive" pipe does, and a forked child is handed one:
    # closed here, the server ends with the sweep however the sweep ends (SIGKILL included), and
    # the kernel then stops this child (PR_SET_PDEATHSIG, set by die_with_sweep for the server).
    os.close(forkserver._forkserver._forkserver_alive_fd)
    os.environ.clear()
    os.environ.update(environment | {PARENT_PID_ENV: str(os.getppid())})
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # The installed console script, found by its name as Slurm and a user run it: the sweep stays
    # below the command line (which runs sweeps) instead of importing it back.
    (script,) = entry_points(group="console_scripts", name="joulebench")
    try:
        script.load()(["train", *arguments])
    finally:  # a forked child ends in os._exit: run the exit handlers an interpreter's exit would
        atexit._run_exitfuncs()


@dataclass
class _Running:
    combination: Combination
    process: Child
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
        self._command = command  # None: joulebench train, forked; else this command line, spawned
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
                    kind, slot, payload = self._events.get(timeout=timings.PROGRESS_POLL.seconds())
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
                process.wait(timings.TERMINATE_GRACE.seconds())
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

    def _run_child(self, slot: int, combination: Combination) -> Outcome | None:
        log_path = self._log_dir / f"{combination.label}-{combination.config_hash}.log"
        environment = dict(os.environ) | {PARENT_PID_ENV: str(os.getpid())}
        if self._slots[slot] is not None:
            environment["CUDA_VISIBLE_DEVICES"] = self._slots[slot]
        with self._lock:
            if self._stop.is_set():
                return None
            start_ms = time.time_ns() // 1_000_000  # before its run can exist: the cell's runs start later
            process = self._start(combination, environment, log_path)
            self._running[slot] = _Running(combination, process, time.monotonic())
        self._events.put(("started", slot, combination))
        returncode = process.wait()
        with self._lock:
            started = self._running.pop(slot).started
        status = tracking.settle_cell(
            self._parent_run_id, tracking.cell_since(combination.config_hash, start_ms),
            "KILLED" if returncode < 0 else "FAILED", f"sweep: its process ended with {_ended(returncode)}",
        )
        return Outcome(combination, status, time.monotonic() - started, f"{_ended(returncode)}: {log_tail(log_path)}")

    def _start(self, combination: Combination, environment: dict[str, str], log_path: Path) -> Child:
        if self._command is None:
            return ForkedCell(combination.train_arguments(self._parent_run_id), environment, log_path)
        with log_path.open("w") as log:
            return subprocess.Popen(self._command(combination, self._parent_run_id), stdout=log,
                                    stderr=subprocess.STDOUT, env=environment, start_new_session=True)

    def _poll_epochs(self, progress: Progress) -> None:
        with self._lock:
            running = {slot: entry.combination for slot, entry in self._running.items()}
        for slot, combination in running.items():
            done = tracking.child_epochs_done(self._parent_run_id, combination.config_hash)
            if done is not None:
                progress.epochs(slot, done)


def _ended(returncode: int) -> str:
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"
