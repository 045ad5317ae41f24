"""RAPL reader, against powercap-shaped trees that the tests write.

RAPL is not readable on the development hosts (no /sys/class/powercap), so these trees are
the RAPL hardware here; every file the reader touches is one the kernel would have.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from joulebench.energy.rapl import RaplMeter, RaplUnavailable, find_zones
from support import PowercapTree



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
