"""RAPL: CPU package and DRAM energy from the Linux powercap tree.

Each zone ``<root>/intel-rapl:N[:M]`` has ``name`` (``package-0``, ``dram``, ``core``,
``psys``...), ``energy_uj`` (a counter that wraps at ``max_energy_range_uj``) and the range
itself. ``cpu`` is the sum of the ``package-N`` zones and ``ram`` the sum of the ``dram``
zones; ``core``/``uncore`` are inside a package and ``psys`` covers the whole platform, so
they are left out to count nothing twice, as are the ``intel-rapl-mmio`` duplicates of the
package zones. The counter must be read more often than it wraps (minutes at full load):
the power sampler polls this meter, so long windows are safe.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from joulebench.energy.sampler import RateOfCumulative
from joulebench.energy.window import Meter

POWERCAP_ROOT = Path("/sys/class/powercap")
ZONE_DIR = re.compile(r"^intel-rapl:\d+(:\d+)?$")
DEVICE_OF_ZONE = {"package": "cpu", "dram": "ram"}  # name prefix -> our device label


class RaplUnavailable(Exception):
    """RAPL cannot be read here; the message says why, in a form for `joulebench meters`."""


@dataclass
class RaplZone:
    """One counter: where it is, which device it adds to, and its running total."""

    energy_file: Path
    device: str
    max_range_uj: int
    last_uj: int
    total_uj: int = 0

    def advance(self) -> None:
        raw = int(self.energy_file.read_text())
        delta = raw - self.last_uj
        if delta < 0:  # wrapped (exact to within one hardware energy unit, ~61 µJ)
            delta += self.max_range_uj
        self.total_uj += delta
        self.last_uj = raw


def find_zones(root: Path = POWERCAP_ROOT) -> list[RaplZone]:
    """The readable package and DRAM zones under ``root``; RaplUnavailable says why not."""
    if not root.is_dir():
        raise RaplUnavailable(f"{root} not present")
    zone_dirs = sorted(p for p in root.iterdir() if ZONE_DIR.match(p.name))
    if not zone_dirs:
        raise RaplUnavailable(f"{root} has no intel-rapl zones")
    zones = [zone for zone_dir in zone_dirs if (zone := _open_zone(zone_dir)) is not None]
    if not any(zone.device == "cpu" for zone in zones):
        raise RaplUnavailable(f"{root} has no package zone")
    return zones


def _open_zone(zone_dir: Path) -> RaplZone | None:
    name = (zone_dir / "name").read_text().strip()
    device = next((dev for prefix, dev in DEVICE_OF_ZONE.items() if name.startswith(prefix)), None)
    if device is None:
        return None
    energy_file = zone_dir / "energy_uj"
    try:
        first = int(energy_file.read_text())
    except PermissionError:
        # Linux >= 5.10 made energy_uj root-only (CVE-2020-8694, the Platypus attack).
        raise RaplUnavailable(f"{energy_file}: permission denied (root-only since Linux 5.10)")
    max_range = int((zone_dir / "max_energy_range_uj").read_text())
    return RaplZone(energy_file, device, max_range, last_uj=first)


class RaplMeter(Meter):
    """Cumulative joules of ``cpu`` (packages) and ``ram`` (DRAM, where exposed)."""

    source = "rapl"
    update_period_s = 0.001  # the hardware updates the counters about every millisecond

    def __init__(
        self,
        root: Path = POWERCAP_ROOT,
        poll_period_s: float = 0.1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.root = root
        self.poll_period_s = poll_period_s
        self._zones = find_zones(root)
        self._lock = threading.Lock()  # read (window edges) and poll (sampler) both advance
        self._rate = RateOfCumulative(clock)
        self._rate(self.read())  # the first poll then has a trace row

    def devices(self) -> list[str]:
        return sorted({zone.device for zone in self._zones})

    def read(self) -> dict[str, float]:
        with self._lock:
            return self._advance_all()

    def poll(self) -> dict[str, float]:
        with self._lock:
            return self._rate(self._advance_all())

    def _advance_all(self) -> dict[str, float]:
        joules: dict[str, float] = {}
        for zone in self._zones:
            zone.advance()
            joules[zone.device] = joules.get(zone.device, 0.0) + zone.total_uj / 1e6
        return joules
