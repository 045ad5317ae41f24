"""CodeCarbon as a meter, with the real OfflineEmissionsTracker (no network needed)."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from codecarbon.input import DataSource

from joulebench.energy import EnergyMonitor, Measurement, build_monitor
from joulebench.energy.carbon import JOULES_PER_KWH, CodeCarbonMeter, check_country
from joulebench.errors import ConfigError


class TrackerLife(NamedTuple):
    meter: CodeCarbonMeter
    monitor: EnergyMonitor
    short: Measurement  # empty: below the meter's update period
    idle: Measurement  # 1.3 s
    brief: Measurement  # 0.5 s: shorter than measure_power_secs
    csv_rows: list[dict[str, str]]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> TrackerLife:
    """One tracker's whole life: a too-short window, a 1.3 s window, a 0.5 s one, close."""
    output_dir = tmp_path_factory.mktemp("codecarbon")
    meter = CodeCarbonMeter("usa", output_dir)
    monitor = EnergyMonitor([meter])
    with monitor.window("compress") as short:
        pass
    with monitor.window("idle") as idle:
        time.sleep(1.3)
    with monitor.window("eval") as brief:  # shorter than measure_power_secs (1 s)
        time.sleep(0.5)
    monitor.close()
    with (output_dir / "emissions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return TrackerLife(meter, monitor, short.measurement, idle.measurement, brief.measurement, rows)


def test_country_is_normalised_and_an_unknown_one_is_a_one_line_config_error(finished_run):
    assert finished_run.meter.country == "USA"
    with pytest.raises(ConfigError) as error:
        check_country("Narnia")
    message = str(error.value)
    assert "\n" not in message
    assert "'Narnia'" in message and "USA, FRA" in message and "fix:" in message


def test_window_ram_energy_is_codecarbons_ram_power_times_the_window(finished_run):
    idle, (row,) = finished_run.idle, finished_run.csv_rows
    assert idle.sources == {"cpu": "codecarbon_estimate", "ram": "codecarbon_estimate"}
    assert idle.seconds >= 1.3 and idle.flags == ()
    # CodeCarbon models RAM power as a constant of the installed memory: our window must
    # see exactly that power, to the few ms between its measurement and our clock.
    assert idle.joules["ram"] / idle.seconds == pytest.approx(float(row["ram_power"]), rel=0.02)
    assert idle.joules["cpu"] > 0


def test_window_shorter_than_the_cpu_load_resolution_is_flagged_not_zero(finished_run):
    short = finished_run.short
    assert short.joules == {} and short.total_joules is None
    (flag,) = short.flags
    assert flag.startswith("codecarbon_estimate: window of ")
    assert flag.endswith("shorter than the meter's 100 ms update period; cpu, ram not measured")


def test_window_shorter_than_measure_power_secs_is_measured_at_its_edges(finished_run):
    # Each edge forces a measurement, so a 0.5 s window (a fast epoch) is not stale: its RAM
    # energy is the constant RAM power times this window, to the edges' few ms of jitter.
    brief, (row,) = finished_run.brief, finished_run.csv_rows
    assert brief.flags == () and 0.5 <= brief.seconds < 1.0
    assert brief.joules["ram"] / brief.seconds == pytest.approx(float(row["ram_power"]), rel=0.05)
    assert brief.joules["cpu"] > 0


def test_csv_is_written_once_at_close_and_carries_the_runs_co2(finished_run):
    meter, monitor, idle = finished_run.meter, finished_run.monitor, finished_run.idle
    (row,) = finished_run.csv_rows
    assert meter.artifacts() == monitor.artifacts() and monitor.artifacts()[0].name == "emissions.csv"
    assert float(row["emissions"]) == monitor.emissions_kg > 0
    assert row["country_iso_code"] == "USA" and row["project_name"] == "joulebench"
    intensity_kg_per_kwh = DataSource().get_global_energy_mix_data()["USA"]["carbon_intensity"] / 1000
    kwh = float(row["energy_consumed"])
    assert monitor.emissions_kg == pytest.approx(kwh * intensity_kg_per_kwh, rel=1e-9)
    assert kwh * JOULES_PER_KWH >= idle.total_joules  # the tracker's life covers the window


def test_meter_reporting_no_device_still_gives_the_runs_co2(tmp_path: Path):
    meter = CodeCarbonMeter("FRA", tmp_path, reported={})
    assert meter.devices() == [] and meter.read() == {} and meter.poll_period_s is None
    meter.close()
    assert meter.emissions_kg > 0
    assert [path.name for path in meter.artifacts()] == ["emissions.csv"]


def test_a_codecarbon_without_the_private_calls_the_meter_drives_is_unavailable_not_a_failed_window(
    tmp_path: Path, monkeypatch
):
    from codecarbon.emissions_tracker import BaseEmissionsTracker

    monkeypatch.delattr(BaseEmissionsTracker, "_measure_power_and_energy")
    monitor = build_monitor(torch.device("cpu"), "USA", tmp_path, powercap_root=tmp_path / "no-powercap")
    try:
        assert all(meter.source != "codecarbon_estimate" for meter in monitor.meters)
        why = monitor.unavailable["codecarbon"]
        assert why.startswith("CodeCarbonApiChanged: codecarbon ") and "has no _measure_power_and_energy" in why
    finally:
        monitor.close()
