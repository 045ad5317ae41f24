"""build_monitor and describe_meters on this host: real CodeCarbon, RAPL trees the tests write.

This host has no GPU, so every monitor here is for ``cpu``; the GPU side is in
test_energy_nvml.py.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch
from support import PowercapTree

from joulebench.energy import build_monitor, describe_meters, write_trace
from joulebench.errors import ConfigError

CPU = torch.device("cpu")


def work_for(seconds: float) -> None:
    """Some real CPU work, so the windows are not idle."""
    x = torch.randn(256, 256)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        x = torch.tanh(x @ x)


def test_without_rapl_cpu_and_ram_are_codecarbon_estimates_and_artefacts_are_written(
    tmp_path: Path,
):
    absent = tmp_path / "no-powercap"
    monitor = build_monitor(CPU, "USA", tmp_path / "out", sample_hz=20, powercap_root=absent)
    try:
        assert monitor.unavailable == {
            "nvml": "the run's device is cpu, not a GPU",
            "rapl": f"{absent} not present",
        }
        with monitor.window("train", 1) as epoch:
            work_for(1.2)
    finally:
        monitor.close()
    measurement = epoch.measurement
    assert measurement.sources == {"cpu": "codecarbon_estimate", "ram": "codecarbon_estimate"}
    assert measurement.total_joules > 0 and measurement.flags == ()
    assert [path.name for path in monitor.artifacts() + write_trace(monitor, tmp_path / "out")] == [
        "emissions.csv", "power_trace.csv", "power_trace.png",
    ]
    with (tmp_path / "out" / "power_trace.csv").open() as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["time", "cpu_watts", "ram_watts"] and len(rows) >= 1
    assert monitor.emissions_kg > 0


def test_rapl_package_only_cpu_from_rapl_ram_from_codecarbon_each_once(tmp_path: Path):
    tree = PowercapTree(tmp_path / "powercap").zone("intel-rapl:0", "package-0", 1_000_000)
    monitor = build_monitor(CPU, "DEU", tmp_path / "out", sample_hz=50, powercap_root=tree.root)
    try:
        assert "rapl" not in monitor.unavailable
        with monitor.window("train", 1) as epoch:
            for _ in range(12):
                tree.add("intel-rapl:0", 2.5)
                time.sleep(0.1)
        (tmp_path / "powercap" / "intel-rapl:0" / "energy_uj").unlink()  # the meter breaks
        with monitor.window("eval", 1) as broken:
            time.sleep(1.05)
        trace = monitor.power_trace()
    finally:
        monitor.close()
    assert epoch.measurement.sources == {"cpu": "rapl", "ram": "codecarbon_estimate"}
    assert epoch.measurement.joules["cpu"] == 30.0
    assert monitor.peak_watts(epoch.measurement) > 0
    # Rows from the first CodeCarbon poll on carry both devices (cpu at 50 Hz, ram at 1 Hz).
    first_ram = next(i for i, (_, watts) in enumerate(trace) if "ram" in watts)
    assert all(set(watts) == {"cpu", "ram"} for _, watts in trace[first_ram:])
    # A meter that breaks mid-run costs its own device only, and the run says why.
    assert broken.measurement.sources == {"ram": "codecarbon_estimate"}
    assert any(flag.startswith("rapl failed: FileNotFoundError") for flag in broken.measurement.flags)
    assert monitor.unavailable["rapl"].startswith("power sampling failed: FileNotFoundError")


def test_rapl_with_dram_leaves_codecarbon_with_the_co2_only(tmp_path: Path):
    tree = (
        PowercapTree(tmp_path / "powercap")
        .zone("intel-rapl:0", "package-0")
        .zone("intel-rapl:0:2", "dram")
    )
    monitor = build_monitor(CPU, "FRA", tmp_path / "out", powercap_root=tree.root)
    try:
        with monitor.window("idle") as idle:
            tree.add("intel-rapl:0", 4.0)
            tree.add("intel-rapl:0:2", 1.0)
            time.sleep(0.01)  # longer than RAPL's 1 ms update period, or it is not measured
    finally:
        monitor.close()
    assert idle.measurement.joules == {"cpu": 4.0, "ram": 1.0}
    assert idle.measurement.sources == {"cpu": "rapl", "ram": "rapl"}
    assert monitor.emissions_kg > 0  # CodeCarbon still ran, for the CO2


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"sample_hz": 0}, "power sample rate 0 Hz is out of range"),
        ({"sample_hz": 1000}, "power sample rate 1000 Hz is out of range"),
        ({"country": "XX"}, "country 'XX' has no CodeCarbon grid-intensity data"),
    ],
)
def test_bad_options_are_one_line_config_errors(tmp_path: Path, kwargs, expected):
    with pytest.raises(ConfigError) as error:
        build_monitor(CPU, **({"country": "USA"} | kwargs), output_dir=tmp_path)
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message and "fix:" in message


def test_describe_meters_says_what_each_meter_reads_or_why_not(tmp_path: Path):
    absent = tmp_path / "absent"
    assert describe_meters(CPU, "USA", powercap_root=absent) == [
        ("nvml_counter", False, "the run's device is cpu, not a GPU"),
        ("nvml_power", False, "the run's device is cpu, not a GPU"),
        ("rapl", False, f"{absent} not present"),
        ("codecarbon", True,
         "CO2-eq with USA's grid intensity; estimated energy of cpu, ram (CPU load x TDP, RAM size)"),
    ]
    tree = (
        PowercapTree(tmp_path / "powercap")
        .zone("intel-rapl:0", "package-0")
        .zone("intel-rapl:0:2", "dram")
    )
    rapl, codecarbon = describe_meters(CPU, "fra", powercap_root=tree.root)[2:]
    assert rapl == ("rapl", True, "CPU/DRAM energy: cpu (intel-rapl:0), ram (intel-rapl:0:2)")
    assert codecarbon == ("codecarbon", True, "CO2-eq with FRA's grid intensity")
