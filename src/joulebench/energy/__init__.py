"""Energy meters and the one concept built on them: a measurement window.

A :class:`Meter` reports cumulative joules per device (``"gpu0"``, ``"cpu"``, ``"ram"``) and
the ``source`` that produced them: ``nvml_counter``, ``nvml_power``, ``rapl`` or
``codecarbon_estimate``. ``EnergyMonitor.window(phase, epoch)`` reads every meter at both edges and
returns a :class:`Measurement`; windows may nest because reads never reset anything. A meter
that fails is dropped from that window with a flag, never read as 0 J.

``build_monitor(device, ...)`` picks the meters this host can read (``build.py``);
``describe_meters(device)`` says which those are and why the others are not.
"""

from joulebench.energy.build import build_monitor, check_sample_hz, describe_meters
from joulebench.energy.devices import gpu_spec, peak_flops_per_joule
from joulebench.energy.plot import plot_power_trace, write_trace, write_trace_csv
from joulebench.energy.window import EnergyMonitor, Measurement, Meter, Window

__all__ = [
    "EnergyMonitor", "Measurement", "Meter", "Window", "build_monitor", "check_sample_hz",
    "describe_meters", "gpu_spec", "peak_flops_per_joule", "plot_power_trace", "write_trace", "write_trace_csv",
]
