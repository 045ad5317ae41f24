"""The window core (energy/window.py): nesting, windows shorter than a meter's period, failing
meters — measured against a powercap tree the test writes (see test_energy_rapl)."""

from __future__ import annotations

from itertools import count

from joulebench.energy import EnergyMonitor
from joulebench.energy.rapl import RaplMeter
from support import PowercapTree


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
