"""Background power sampling: one thread polls every power source on its own period.

The sampler gives the run's power trace (for plots and peak watts); sources without an energy
counter integrate their own samples with :class:`TrapezoidIntegrator`. Each trace row holds
the latest watts of every device, so slow sources (CodeCarbon, 1 Hz) are carried forward
between their polls and a row's sum is the power of the whole host at that instant.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

TraceRow = tuple[float, dict[str, float]]  # (time.time(), watts per device)


class PowerSource(Protocol):
    """Anything the sampler can poll: a name, a period, and watts per device."""

    source: str
    poll_period_s: float | None

    def poll(self) -> dict[str, float]: ...


class TrapezoidIntegrator:
    """Energy (J) of a power signal known only at sample times, by the trapezoid rule.

    Exact for power that is linear between samples; for any other signal the error falls
    with the square of the sample spacing.
    """

    def __init__(self) -> None:
        self.joules = 0.0
        self._last: tuple[float, float] | None = None  # (seconds, watts)

    def add(self, seconds: float, watts: float) -> float:
        """Take one sample; return the energy integrated so far."""
        if self._last is not None:
            last_seconds, last_watts = self._last
            self.joules += (seconds - last_seconds) * (watts + last_watts) / 2
        self._last = (seconds, watts)
        return self.joules


class RateOfCumulative:
    """Watts per device from successive cumulative-joule readings (ΔJ / Δt)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._last: tuple[float, dict[str, float]] | None = None

    def __call__(self, cumulative_joules: dict[str, float]) -> dict[str, float]:
        now = self._clock()
        previous, self._last = self._last, (now, dict(cumulative_joules))
        if previous is None or now <= previous[0]:
            return {}
        seconds = now - previous[0]
        return {
            device: (joules - previous[1][device]) / seconds
            for device, joules in cumulative_joules.items()
            if device in previous[1]
        }


def peak_watts(trace: list[TraceRow], start: float, end: float) -> float | None:
    """Highest summed power of the rows sampled within [start, end], or None if there are none."""
    totals = [sum(watts.values()) for t, watts in trace if start <= t <= end and watts]
    return max(totals) if totals else None


class PowerSampler:
    """A daemon thread that polls each source when its period is due and keeps the trace.

    A source that raises is recorded in ``failures`` (first error only) and polled again at
    its next period: one bad read must not end the trace. ``cpu_seconds`` is the thread's own
    CPU time, for ``benchmarks/energy_overhead.py``, which reports what sampling costs.
    """

    def __init__(self, sources: Iterable[PowerSource], clock: Callable[[], float] = time.time):
        self._sources = [s for s in sources if s.poll_period_s]
        self._clock = clock
        self._rows: list[TraceRow] = []
        self._latest: dict[str, float] = {}
        self._rows_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures: dict[str, str] = {}
        self.cpu_seconds = 0.0

    @property
    def sources(self) -> list[PowerSource]:
        return list(self._sources)

    def start(self) -> None:
        if self._sources and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="joulebench-power", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def trace(self) -> list[TraceRow]:
        with self._rows_lock:
            return list(self._rows)

    def _run(self) -> None:
        cpu_start = time.thread_time()
        # Sources took their first reading when built: the first poll is one period later.
        started = time.perf_counter()
        next_due = [started + source.poll_period_s for source in self._sources]
        while not self._stop.is_set():
            now, stamp = time.perf_counter(), self._clock()  # the row's time: its samples'
            due = [i for i, when in enumerate(next_due) if when <= now]
            for i in due:
                self._poll(self._sources[i])
                next_due[i] += self._sources[i].poll_period_s  # a fixed grid: no drift
                if next_due[i] <= now:  # ticks missed while a poll was slow are skipped
                    next_due[i] = now + self._sources[i].poll_period_s
            if due:
                self._append_row(stamp)
            self.cpu_seconds = time.thread_time() - cpu_start
            self._stop.wait(max(0.0, min(next_due) - time.perf_counter()))

    def _poll(self, source: PowerSource) -> None:
        try:
            watts = source.poll()
        except Exception as error:  # the trace goes on without this source's sample
            self.failures.setdefault(source.source, f"{type(error).__name__}: {error}")
            return
        self._latest.update(watts)

    def _append_row(self, stamp: float) -> None:
        if self._latest:
            with self._rows_lock:
                self._rows.append((stamp, dict(self._latest)))
