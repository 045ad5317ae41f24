"""Energy meters and the one concept built on them: a measurement window.

A :class:`Meter` reports cumulative joules per device (``"gpu0"``, ``"cpu"``, ``"ram"``) and
the ``source`` that produced them. ``EnergyMonitor.window(name)`` reads every meter at both
edges and returns a :class:`Measurement`; windows may nest because reads never reset
anything. A meter that fails is dropped from that window with a flag, never read as 0 J.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Measurement:
    """Energy and time of one window."""

    name: str
    start: float  # wall-clock (time.time()) at the window's opening, for plots
    seconds: float
    joules: dict[str, float]  # device -> joules
    sources: dict[str, str]  # device -> source of those joules
    flags: tuple[str, ...] = ()  # anything a reader must know (too short, meter failed)

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

    Subclasses set ``source`` and ``update_period_s`` and implement ``read``; ``sync`` is
    called before every read (the GPU meter waits for queued kernels there).
    """

    source: str = "unknown"
    update_period_s: float = 0.0

    def devices(self) -> list[str]:
        raise NotImplementedError

    def read(self) -> dict[str, float]:
        """Cumulative joules per device since an arbitrary origin."""
        raise NotImplementedError

    def sync(self) -> None:
        """Wait until the work issued so far has run (no-op for host meters)."""

    def close(self) -> None:
        """Stop background threads, write files."""


@dataclass
class Window:
    """Handle of an open window; ``measurement`` is set when the window closes."""

    name: str
    measurement: Measurement | None = None


@dataclass
class EnergyMonitor:
    """Windows over a set of meters; keeps every finished measurement in order."""

    meters: list[Meter]
    unavailable: dict[str, str] = field(default_factory=dict)  # meter name -> why not used
    measurements: list[Measurement] = field(default_factory=list)
    clock: Callable[[], float] = time.perf_counter

    @contextmanager
    def window(self, name: str) -> Iterator[Window]:
        handle = Window(name)
        start_wall = time.time()
        start_readings, flags = self._read_all()
        start = self.clock()
        try:
            yield handle
        finally:
            end_readings, end_flags = self._read_all()
            seconds = self.clock() - start
            handle.measurement = self._measure(
                name, start_wall, seconds, start_readings, end_readings, flags + end_flags
            )
            self.measurements.append(handle.measurement)

    def _read_all(self) -> tuple[dict[int, dict[str, float]], list[str]]:
        readings: dict[int, dict[str, float]] = {}  # meter index -> cumulative joules
        flags: list[str] = []
        for index, meter in enumerate(self.meters):
            try:
                meter.sync()
                readings[index] = meter.read()
            except Exception as error:  # a failing meter must never take the run down
                flags.append(f"{meter.source} failed: {type(error).__name__}: {error}")
        return readings, flags

    def _measure(self, name, start_wall, seconds, begin, end, flags) -> Measurement:
        joules: dict[str, float] = {}
        sources: dict[str, str] = {}
        for index, meter in enumerate(self.meters):
            if index not in begin or index not in end:
                continue
            if seconds < meter.update_period_s:
                flags.append(
                    f"{meter.source}: window of {seconds * 1000:.1f} ms is shorter than the "
                    f"meter's {meter.update_period_s * 1000:.0f} ms update period"
                )
            for device, value in end[index].items():
                if device in begin[index]:
                    joules[device] = value - begin[index][device]
                    sources[device] = meter.source
        return Measurement(name, start_wall, seconds, joules, sources, tuple(flags))

    def close(self) -> None:
        for meter in self.meters:
            try:
                meter.close()
            except Exception as error:
                self.unavailable.setdefault(meter.source, f"close failed: {error}")
