"""Power-trace artefacts: the CSV holds every sample exactly; the PNG is a real image."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image

from joulebench.energy import Measurement, plot_power_trace, write_trace_csv

TRACE = [
    (1700000000.0, {"cpu": 20.5}),
    (1700000000.1, {"cpu": 21.25, "gpu0": 301.125}),
    (1700000000.2, {"gpu0": 299.0}),
]
WINDOWS = [
    Measurement("idle", 1700000000.0, 0.1, {"cpu": 2.0}, {"cpu": "rapl"}),
    Measurement("train", 1700000000.1, 0.1, {"gpu0": 30.0}, {"gpu0": "nvml_counter"}, epoch=1),
    Measurement("train", 1700000000.15, 0.05, {"gpu0": 15.0}, {"gpu0": "nvml_counter"}, epoch=2),
]


def test_trace_csv_has_one_column_per_device_and_blank_where_unknown(tmp_path: Path):
    path = write_trace_csv(TRACE, tmp_path / "trace.csv")
    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["time", "cpu_watts", "gpu0_watts"],
        ["1700000000.000", "20.500", ""],
        ["1700000000.100", "21.250", "301.125"],
        ["1700000000.200", "", "299.000"],
    ]


def test_plot_is_a_png_of_the_configured_size(tmp_path: Path):
    path = plot_power_trace(TRACE, WINDOWS, tmp_path / "trace.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == (1200, 480)  # 10 x 4 inches at 120 dpi


def test_plot_with_windows_but_no_samples_still_draws_the_phases(tmp_path: Path):
    path = plot_power_trace([], WINDOWS, tmp_path / "phases.png")
    assert matplotlib.image.imread(path).shape[:2] == (480, 1200)
