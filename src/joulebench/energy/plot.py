"""The power trace as artefacts: a CSV (time, watts per device) and a PNG with phases shaded."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from joulebench.energy.sampler import TraceRow
from joulebench.plotting import pyplot

if TYPE_CHECKING:
    from joulebench.energy.window import EnergyMonitor, Measurement

TRACE_CSV = "power_trace.csv"
TRACE_PNG = "power_trace.png"


def write_trace(monitor: EnergyMonitor, folder: Path) -> list[Path]:
    """The closed monitor's power trace as CSV and PNG in ``folder``; nothing when nothing was
    sampled. Without matplotlib (a lean GPU host) only the CSV, and the monitor says why."""
    trace = monitor.power_trace()
    if not trace:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = [write_trace_csv(trace, folder / TRACE_CSV)]
    try:
        written.append(plot_power_trace(trace, monitor.measurements, folder / TRACE_PNG))
    except ModuleNotFoundError as missing:
        monitor.unavailable["trace_plot"] = f"{missing.name} not installed"
    return written


def trace_devices(trace: Sequence[TraceRow]) -> list[str]:
    """Every device that appears in the trace, sorted."""
    return sorted({device for _, watts in trace for device in watts})


def write_trace_csv(trace: Sequence[TraceRow], path: Path) -> Path:
    """One row per sample: ``time`` (Unix seconds), then watts per device (empty if unknown)."""
    devices = trace_devices(trace)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", *(f"{device}_watts" for device in devices)])
        for t, watts in trace:
            writer.writerow([f"{t:.3f}", *(_cell(watts.get(device)) for device in devices)])
    return path


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def plot_power_trace(
    trace: Sequence[TraceRow], measurements: Sequence[Measurement], path: Path
) -> Path:
    """Watts per device and their sum against time, each window shaded and named."""
    plt = pyplot()

    starts = [trace[0][0]] if trace else []
    origin = min(starts + [m.start for m in measurements], default=0.0)
    times = [t - origin for t, _ in trace]
    figure, axes = plt.subplots(figsize=(10, 4), layout="constrained")
    for device in trace_devices(trace):
        axes.plot(times, [watts.get(device, float("nan")) for _, watts in trace], label=device)
    if len(trace_devices(trace)) > 1:
        axes.plot(times, [sum(watts.values()) for _, watts in trace], "k", lw=1, label="total")
    _shade_phases(axes, measurements, origin)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("seconds since the monitor's first record")
    axes.set_ylabel("watts")
    if trace:
        axes.legend(loc="upper right")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _shade_phases(axes, measurements: Sequence[Measurement], origin: float) -> None:
    """One colour per phase, so that the epochs of one phase match."""
    phases = sorted({m.phase for m in measurements})
    colours = {phase: f"C{(i + 3) % 10}" for i, phase in enumerate(phases)}
    for m in measurements:
        left, right = m.start - origin, m.end - origin
        axes.axvspan(left, right, color=colours[m.phase], alpha=0.15, lw=0)
        axes.annotate(
            m.name, xy=(left, 1), xycoords=("data", "axes fraction"), rotation=90,
            va="top", ha="left", fontsize=7,
        )
