"""RAPL reader and the window core, against powercap-shaped trees that the tests write.

RAPL is not readable on the development hosts (no /sys/class/powercap), so these trees are
the RAPL hardware here; every file the reader touches is one the kernel would have.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from itertools import count
from pathlib import Path

import pytest

from joulebench.energy import EnergyMonitor
from joulebench.energy.rapl import RaplMeter, RaplUnavailable, find_zones

MAX_RANGE_UJ = 262_143_328_850  # max_energy_range_uj of a real package zone (Xeon)


class PowercapTree:
    """A /sys/class/powercap look-alike: one directory per zone, as the kernel lays it out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "intel-rapl").mkdir(exist_ok=True)  # the control-type directory: no zone
        (root / "intel-rapl" / "enabled").write_text("1\n")

    def zone(self, zone: str, name: str, energy_uj: int = 0, max_range_uj: int = MAX_RANGE_UJ):
        directory = self.root / zone
        directory.mkdir()
        (directory / "name").write_text(name + "\n")
        (directory / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        self.set(zone, energy_uj)
        return self

    def energy(self, zone: str) -> int:
        return int((self.root / zone / "energy_uj").read_text())

    def set(self, zone: str, energy_uj: int) -> None:
        # Atomic, as a sysfs read is: a sampler thread must never see a half-written file.
        staging = self.root / zone / "energy_uj.new"
        staging.write_text(f"{energy_uj}\n")
        staging.replace(self.root / zone / "energy_uj")

    def add(self, zone: str, joules: float) -> None:
        """Advance a counter as the hardware does, wrapping at its range."""
        max_range = int((self.root / zone / "max_energy_range_uj").read_text())
        self.set(zone, (self.energy(zone) + round(joules * 1e6)) % max_range)


@pytest.fixture
def package_and_dram(tmp_path: Path) -> PowercapTree:
    return (
        PowercapTree(tmp_path / "powercap")
        .zone("intel-rapl:0", "package-0", 5_000_000)
        .zone("intel-rapl:0:2", "dram", 7_000_000)
    )


def test_cpu_sums_packages_ram_sums_dram_and_core_psys_mmio_are_left_out(tmp_path: Path):
    tree = (
        PowercapTree(tmp_path / "powercap")
        .zone("intel-rapl:0", "package-0", 1_000_000)
        .zone("intel-rapl:0:0", "core", 500_000)
        .zone("intel-rapl:0:2", "dram", 300_000)
        .zone("intel-rapl:1", "package-1", 2_000_000)
        .zone("intel-rapl:2", "psys", 9_000_000)
        .zone("intel-rapl-mmio:0", "package-0", 7_000_000)
    )
    meter = RaplMeter(tree.root)
    assert meter.devices() == ["cpu", "ram"]
    assert meter.read() == {"cpu": 0.0, "ram": 0.0}  # the first reading is the origin
    for zone, joules in [("intel-rapl:0", 1.5), ("intel-rapl:1", 0.5), ("intel-rapl:0:2", 0.25),
                         ("intel-rapl:0:0", 1.0), ("intel-rapl:2", 10.0), ("intel-rapl-mmio:0", 10.0)]:
        tree.add(zone, joules)
    assert meter.read() == {"cpu": 2.0, "ram": 0.25}


def test_counter_wrap_around_is_unwrapped_with_max_energy_range(tmp_path: Path):
    tree = PowercapTree(tmp_path / "powercap").zone(
        "intel-rapl:0", "package-0", energy_uj=999_900_000, max_range_uj=1_000_000_000
    )
    meter = RaplMeter(tree.root)
    tree.set("intel-rapl:0", 100_000)  # 0.1 J to the top, wrap, 0.1 J more
    assert meter.read() == {"cpu": 0.2}
    tree.set("intel-rapl:0", 999_000_000)
    assert meter.read() == {"cpu": pytest.approx(0.2 + 998.9, abs=1e-9)}
    tree.set("intel-rapl:0", 0)  # a wrap that lands exactly on zero
    assert meter.read() == {"cpu": pytest.approx(0.2 + 998.9 + 1.0, abs=1e-9)}


def test_unreadable_powercap_says_why(tmp_path: Path):
    with pytest.raises(RaplUnavailable, match=r"powercap-absent not present$"):
        find_zones(tmp_path / "powercap-absent")
    empty = PowercapTree(tmp_path / "empty")
    with pytest.raises(RaplUnavailable, match="has no intel-rapl zones$"):
        find_zones(empty.root)
    psys_only = PowercapTree(tmp_path / "psys").zone("intel-rapl:0", "psys")
    with pytest.raises(RaplUnavailable, match="has no package zone$"):
        find_zones(psys_only.root)


def test_poll_gives_watts_from_energy_between_polls(package_and_dram: PowercapTree):
    seconds = iter([10.0, 10.5, 12.5])  # construction, first poll, second poll
    meter = RaplMeter(package_and_dram.root, clock=lambda: next(seconds))
    package_and_dram.add("intel-rapl:0", 50.0)
    package_and_dram.add("intel-rapl:0:2", 5.0)
    assert meter.poll() == {"cpu": 100.0, "ram": 10.0}
    package_and_dram.add("intel-rapl:0", 60.0)
    assert meter.poll() == {"cpu": 30.0, "ram": 0.0}


def monitor_with_ticks(meter: RaplMeter, tick_s: float) -> EnergyMonitor:
    """A monitor whose clock advances ``tick_s`` per reading, so seconds are exact."""
    ticks = count()
    return EnergyMonitor([meter], clock=lambda: next(ticks) * tick_s)


def test_windows_nest_and_each_sees_its_own_energy(package_and_dram: PowercapTree):
    monitor = monitor_with_ticks(RaplMeter(package_and_dram.root), tick_s=1.0)
    with monitor.window("train") as outer:
        package_and_dram.add("intel-rapl:0", 1.0)
        with monitor.window("train", 1) as inner:
            package_and_dram.add("intel-rapl:0", 2.0)
            package_and_dram.add("intel-rapl:0:2", 0.5)
        package_and_dram.add("intel-rapl:0", 4.0)
    assert inner.measurement.joules == {"cpu": 2.0, "ram": 0.5}
    assert outer.measurement.joules == {"cpu": 7.0, "ram": 0.5}
    assert outer.measurement.sources == {"cpu": "rapl", "ram": "rapl"}
    assert (inner.measurement.seconds, outer.measurement.seconds) == (1.0, 3.0)
    assert outer.measurement.mean_watts == 7.5 / 3.0
    assert [m.name for m in monitor.measurements] == ["train/epoch-1", "train"]
    assert outer.measurement.flags == ()


def test_window_shorter_than_update_period_is_flagged_never_zero(package_and_dram: PowercapTree):
    monitor = monitor_with_ticks(RaplMeter(package_and_dram.root), tick_s=0.0004)
    with monitor.window("compress") as window:
        pass
    measurement = window.measurement
    assert measurement.joules == {} and measurement.total_joules is None
    assert measurement.mean_watts is None
    (flag,) = measurement.flags
    assert flag == (
        "rapl: window of 0.4 ms is shorter than the meter's 1 ms update period; "
        "cpu, ram not measured"
    )


def test_meter_failing_mid_window_is_flagged_and_the_next_window_works(
    package_and_dram: PowercapTree,
):
    monitor = monitor_with_ticks(RaplMeter(package_and_dram.root), tick_s=1.0)
    energy_file = package_and_dram.root / "intel-rapl:0" / "energy_uj"
    with monitor.window("eval") as failed:
        energy_file.unlink()
    assert failed.measurement.joules == {}
    assert len(failed.measurement.flags) == 1
    assert failed.measurement.flags[0].startswith("rapl failed: FileNotFoundError")
    package_and_dram.set("intel-rapl:0", 5_000_000)
    with monitor.window("inference") as recovered:
        package_and_dram.add("intel-rapl:0", 3.0)
    assert recovered.measurement.joules == {"cpu": 3.0, "ram": 0.0}


def test_root_only_counter_is_unavailable_with_the_reason():
    """Linux >= 5.10 makes energy_uj root-only: an ordinary user must get the reason, not a crash.

    The tests run as root here, which reads any file: the reader then runs in a forked child
    that has become ``nobody``, on a tree whose directories that user may enter.
    """
    root = Path(tempfile.mkdtemp(prefix="powercap-", dir="/tmp"))
    try:
        PowercapTree(root).zone("intel-rapl:0", "package-0", energy_uj=123)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o444)
        (root / "intel-rapl:0" / "energy_uj").chmod(0o400)  # as the kernel now ships it
        message = _in_child_as_nobody(lambda: find_zones(root))
    finally:
        shutil.rmtree(root)
    assert message == f"RaplUnavailable: {root}/intel-rapl:0/energy_uj: permission denied (root-only since Linux 5.10)"


def _in_child_as_nobody(function) -> str:
    """What ``function`` raised (type: message), called in a forked child running as nobody."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, call, report, leave without running pytest's teardown
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            function()
            outcome = "no error"
        except BaseException as error:  # noqa: BLE001 - everything is reported to the parent
            outcome = f"{type(error).__name__}: {error}"
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        return pipe.read()
