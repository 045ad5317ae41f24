"""The window core: meters, measurements, and the monitor that opens windows over them.

A :class:`Meter` reports cumulative joules per device (``"gpu0"``, ``"cpu"``, ``"ram"``) and
the ``source`` that produced them. ``EnergyMonitor.window(phase, epoch)`` reads every meter at
both edges and returns a :class:`Measurement`; windows may nest because reads never reset
anything. A meter that fails is dropped from that window with a flag, never read as 0 J, and
so is a meter whose update period is longer than the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from joulebench.energy.sampler import PowerSampler, TraceRow, peak_watts


@dataclass(frozen=True)
class Measurement:
    """Energy and time of one window: a phase of the run, of one epoch or of the whole run."""

    phase: str  # "idle", "train", "eval", ...
    start: float  # wall-clock (time.time()) at the window's opening, for plots
    seconds: float
    joules: dict[str, float]  # device -> joules
    sources: dict[str, str]  # device -> source of those joules
    flags: tuple[str, ...] = ()  # anything a reader must know (too short, meter failed)
    epoch: int | None = None  # None: the phase spans the run

    @property
    def name(self) -> str:
        """``phase``, or ``phase/epoch-N`` for one epoch's window (as artefacts and plots show it)."""
        return self.phase if self.epoch is None else f"{self.phase}/epoch-{self.epoch}"

    @property
    def end(self) -> float:
        """Wall-clock time at the window's closing."""
        return self.start + self.seconds

    @property
    def total_joules(self) -> float | None:
        """Joules over all devices, or None when no device could be read."""
        return sum(self.joules.values()) if self.joules else None

    @property
    def mean_watts(self) -> float | None:
        total = self.total_joules
        return total / self.seconds if total is not None and self.seconds > 0 else None


class Meter:
    """A source of cumulative energy readings for some devices.

    Subclasses set ``source`` and ``update_period_s`` and implement ``devices`` and ``read``;
    ``sync`` is called before every read (the GPU meter waits for queued kernels there). A
    meter may also be a power source for the sampler (``poll_period_s`` and ``poll``), write
    files (``artifacts``) and know the run's CO2 (``emissions_kg``).
    """

    source: str = "unknown"
    update_period_s: float = 0.0
    poll_period_s: float | None = None  # None: the power sampler never polls this meter

    def devices(self) -> list[str]:
        raise NotImplementedError

    def read(self) -> dict[str, float]:
        """Cumulative joules per device since an arbitrary origin."""
        raise NotImplementedError

    def poll(self) -> dict[str, float]:
        """Watts per device now (called from the sampler thread)."""
        raise NotImplementedError

    def sync(self) -> None:
        """Wait until the work issued so far has run (no-op for host meters)."""

    def close(self) -> None:
        """Stop background threads, write files."""

    def artifacts(self) -> list[Path]:
        """Files this meter wrote (after close)."""
        return []

    @property
    def emissions_kg(self) -> float | None:
        """CO2-equivalent of everything this meter saw, where it knows one."""
        return None


@dataclass
class Window:
    """Handle of an open window; ``measurement`` is set when the window closes."""

    measurement: Measurement | None = None


@dataclass
class _Edge:
    """One side of a window: when it was (monitor clock and wall clock) and what was read."""

    clock: float
    wall: float
    readings: dict[int, dict[str, float]]  # meter index -> cumulative joules per device
    flags: list[str]


def _failure(meter: Meter, error: Exception) -> str:
    return f"{meter.source} failed: {type(error).__name__}: {error}"


@dataclass
class EnergyMonitor:
    """Windows over a set of meters; keeps every finished measurement in order.

    The optional ``sampler`` polls the meters' power in the background for the power trace;
    ``close`` stops it and closes the meters. The monitor only records: what is written from
    its trace (``energy.write_trace``) is the caller's business.
    """

    meters: list[Meter]
    unavailable: dict[str, str] = field(default_factory=dict)  # meter name -> why not used
    measurements: list[Measurement] = field(default_factory=list)
    clock: Callable[[], float] = time.perf_counter
    sampler: PowerSampler | None = None
    _closed: bool = False

    @contextmanager
    def window(self, phase: str, epoch: int | None = None) -> Iterator[Window]:
        """Measure the block as ``phase`` (of ``epoch``, where the phase repeats per epoch)."""
        handle = Window()
        begin = self._edge()
        try:
            yield handle
        finally:
            handle.measurement = self._measure(phase, epoch, begin, self._edge())
            self.measurements.append(handle.measurement)

    def _edge(self) -> _Edge:
        """Every meter syncs first (waiting for queued GPU work belongs to the window), then
        the edge is timed, then the meters are read in order, the most exact (NVML) first, so
        that the window's seconds and the counter's joules span the same interval."""
        flags: list[str] = []
        synced: list[Meter] = []
        for meter in self.meters:
            try:
                meter.sync()
                synced.append(meter)
            except Exception as error:  # a failing meter must never take the run down
                flags.append(_failure(meter, error))
        edge = _Edge(self.clock(), time.time(), {}, flags)
        for index, meter in enumerate(self.meters):
            if meter not in synced:
                continue
            try:
                edge.readings[index] = meter.read()
            except Exception as error:
                flags.append(_failure(meter, error))
        return edge

    def _measure(self, phase: str, epoch: int | None, begin: _Edge, end: _Edge) -> Measurement:
        seconds = end.clock - begin.clock
        joules: dict[str, float] = {}
        sources: dict[str, str] = {}
        flags = begin.flags + end.flags
        for index, meter in enumerate(self.meters):
            first, last = begin.readings.get(index), end.readings.get(index)
            if not first or not last:
                continue
            if seconds < meter.update_period_s:
                # Such a difference is mostly quantisation (often exactly 0 J): report nothing.
                flags.append(
                    f"{meter.source}: window of {seconds * 1000:.1f} ms is shorter than the "
                    f"meter's {meter.update_period_s * 1000:.0f} ms update period; "
                    f"{', '.join(sorted(last))} not measured"
                )
                continue
            for device in (d for d in last if d in first):
                joules[device] = last[device] - first[device]
                sources[device] = meter.source
        return Measurement(phase, begin.wall, seconds, joules, sources, tuple(flags), epoch)

    def power_trace(self) -> list[TraceRow]:
        """(wall time, watts per device) rows sampled so far, oldest first."""
        return self.sampler.trace() if self.sampler else []

    def peak_watts(self, measurement: Measurement) -> float | None:
        """Highest summed power over the trace rows inside ``measurement``, if any."""
        return peak_watts(self.power_trace(), measurement.start, measurement.end)

    @property
    def emissions_kg(self) -> float | None:
        """CO2-equivalent of the monitor's lifetime (final after ``close``)."""
        known = [m.emissions_kg for m in self.meters if m.emissions_kg is not None]
        return known[0] if known else None

    def artifacts(self) -> list[Path]:
        """Files the meters wrote (CodeCarbon's CSV), after ``close``."""
        return [path for meter in self.meters for path in meter.artifacts() if path.exists()]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.sampler:
            self.sampler.stop()
            for meter_name, reason in self.sampler.failures.items():
                self.unavailable.setdefault(meter_name, f"power sampling failed: {reason}")
        for meter in self.meters:
            try:
                meter.close()
            except Exception as error:
                self.unavailable.setdefault(meter.source, f"close failed: {error}")
