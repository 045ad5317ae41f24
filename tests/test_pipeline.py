"""pipeline.py: what a finished run's windows become in MLflow — energy tags, the windows
artefact and the power trace — from a real monitor over a powercap tree (RAPL on this host)."""

from __future__ import annotations

from itertools import count
from pathlib import Path

from joulebench import pipeline
from joulebench.compress import CompressionReport, ModelStats
from joulebench.config import make_config
from joulebench.energy import EnergyMonitor
from joulebench.energy.rapl import RaplMeter
from joulebench.results import RunResult
from support import PowercapTree


def recorded_windows(tree: PowercapTree) -> tuple[EnergyMonitor, RunResult]:
    """total ⊃ (idle, train/epoch-1): 1 J idle, 3 J training, RAPL read with an exact clock."""
    ticks = count()
    monitor = EnergyMonitor([RaplMeter(tree.root)], {"nvml": "no GPU here"}, clock=lambda: next(ticks) * 1.0)
    with monitor.window("total"):
        with monitor.window("idle"):
            tree.add("intel-rapl:0", 1.0)
        with monitor.window("train", 1):
            tree.add("intel-rapl:0", 2.0)
            tree.add("intel-rapl:0:2", 1.0)
    stats = ModelStats(parameters=10, nonzero_parameters=10, weight_bytes=40, flops_per_sample=100)
    result = RunResult(make_config(), CompressionReport("baseline", {}, stats, stats),
                       phases={m.phase: m for m in monitor.measurements if m.epoch is None})
    return monitor, result


def test_energy_tags_name_every_device_source_and_every_unused_meter(package_and_dram: PowercapTree):
    monitor, result = recorded_windows(package_and_dram)
    assert pipeline.energy_tags(result, monitor) == {
        "energy_source": "rapl",
        "energy_source.cpu": "rapl",
        "energy_source.ram": "rapl",
        "energy_unavailable.nvml": "no GPU here",
    }


def test_windows_artefact_rows_carry_phase_and_epoch_beside_the_name(package_and_dram: PowercapTree):
    monitor, _ = recorded_windows(package_and_dram)
    rows = {row["name"]: row for row in pipeline.measurements_table(monitor)}
    assert list(rows) == ["idle", "train/epoch-1", "total"]
    assert (rows["train/epoch-1"]["phase"], rows["train/epoch-1"]["epoch"]) == ("train", 1)
    assert (rows["idle"]["phase"], rows["idle"]["epoch"]) == ("idle", None)
    assert rows["train/epoch-1"]["joules"] == {"cpu": 2.0, "ram": 1.0}
    assert rows["total"]["joules"] == {"cpu": 3.0, "ram": 1.0}


def test_a_monitor_that_sampled_nothing_leaves_no_trace_files(package_and_dram: PowercapTree, tmp_path: Path):
    monitor, _ = recorded_windows(package_and_dram)  # no sampler: nothing was polled
    monitor.close()
    assert pipeline.energy.write_trace(monitor, tmp_path / "energy") == []
    assert not (tmp_path / "energy").exists()
