"""CodeCarbon: the run's CO2-equivalent, and CPU/RAM energy where nothing can be read.

CodeCarbon's ``OfflineEmissionsTracker`` (no network; grid intensity from the country ISO
code) estimates CPU power from load and the CPU's TDP, and RAM power from its size, unless it
finds RAPL. Its joules are therefore labelled ``codecarbon_estimate``, never a measurement.

How a reading at any instant is taken: CodeCarbon measures on its own timer thread every
``measure_power_secs``; a window edge between two timer ticks would see a stale total, and a
measurement of our own running beside that timer could count the same interval twice. So
the timer is stopped after ``start()`` and every measurement is taken by this meter, under
one lock: at each window edge (``read``) and every ``measure_power_secs`` from the power
sampler (``poll``). A measurement is the tracker's own timer callback followed by the public
``flush()``: ``flush`` alone skips measuring within 50 ms of the last measurement, which
would leave an edge up to 50 ms stale. ``flush`` hands the cumulative
:class:`EmissionsData` to every output handler; ours keeps the latest one, and writes
CodeCarbon's CSV with CodeCarbon's own ``FileOutput`` when the tracker stops (writing it on
every flush would cost ~20 ms each).

Because every edge is measured then, the meter's update period is not ``measure_power_secs``
but the resolution of the CPU load it estimates from: psutil's CPU times advance in 10 ms
ticks, so below 100 ms the load (and the estimate) would be off by more than 10 %.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from joulebench.energy.sampler import RateOfCumulative
from joulebench.energy.window import Meter
from joulebench.errors import ConfigError

JOULES_PER_KWH = 3.6e6
SHORTEST_WINDOW_S = 0.1  # see the module docstring: CPU-time ticks are 10 ms
CSV_NAME = "emissions.csv"
# Our device label -> the EmissionsData field with its cumulative kWh.
CPU_RAM_FIELDS = {"cpu": "cpu_energy", "ram": "ram_energy"}


def known_country_codes() -> set[str]:
    """The 3-letter ISO codes CodeCarbon has offline grid-intensity data for."""
    from codecarbon.input import DataSource

    return set(DataSource().get_global_energy_mix_data())


def check_country(country_iso_code: str) -> str:
    """Return the upper-cased code, or raise ConfigError naming what is accepted."""
    code = country_iso_code.strip().upper()
    known = known_country_codes()
    if code not in known:
        raise ConfigError(
            f"country {country_iso_code!r} has no CodeCarbon grid-intensity data; accepted: a "
            f"3-letter ISO code such as USA, FRA, DEU, CHN ({len(known)} known); "
            "fix: pass one of them as the country option"
        )
    return code


def _latest_emissions_output(csv_dir: Path):
    """An output handler keeping the latest cumulative EmissionsData; writes CSV at exit."""
    from codecarbon.output_methods.base_output import BaseOutput
    from codecarbon.output_methods.file import FileOutput

    class LatestEmissions(BaseOutput):
        def __init__(self) -> None:
            self.latest = None
            self.csv_path: Path | None = None

        def out(self, total, delta) -> None:  # called by every flush() and by stop()
            self.latest = total

        def exit(self) -> None:  # called once, by stop(), after the final out()
            if self.latest is not None:
                FileOutput(CSV_NAME, str(csv_dir), on_csv_write="append").out(self.latest, None)
                self.csv_path = csv_dir / CSV_NAME

    return LatestEmissions()


# The tracker's private members this meter drives (see the module docstring); checked when the
# meter is built, so a CodeCarbon release that renames them makes the meter unavailable.
PRIVATE_API = ("_scheduler", "_measure_power_and_energy")


class CodeCarbonApiChanged(RuntimeError):
    """CodeCarbon lacks a private member this meter relies on."""


def check_private_api(tracker: object) -> None:
    missing = [name for name in PRIVATE_API if not hasattr(tracker, name)]
    if not missing and not callable(getattr(tracker._scheduler, "stop", None)):
        missing = ["_scheduler.stop"]
    if missing:
        from codecarbon import __version__

        raise CodeCarbonApiChanged(
            f"codecarbon {__version__} has no {', '.join(missing)} (private API this meter drives); "
            "install a codecarbon release in the range pyproject.toml pins"
        )


class CodeCarbonMeter(Meter):
    """CodeCarbon as a meter: cumulative estimated joules for ``reported`` devices.

    ``reported`` maps our device labels to CodeCarbon's EmissionsData fields (``cpu`` →
    ``cpu_energy``...). It may be empty where RAPL and NVML read every device: the tracker
    then only gives the run's CO2. ``gpu_ids`` are the NVML indices of the GPUs the run uses
    (CodeCarbon counts them for CO2 only; their joules come from NVML).
    """

    source = "codecarbon_estimate"

    def __init__(
        self,
        country_iso_code: str,
        output_dir: Path,
        reported: dict[str, str] | None = None,
        gpu_ids: list[int] | None = None,
        measure_power_secs: float = 1.0,
    ) -> None:
        from codecarbon import OfflineEmissionsTracker

        self.country = check_country(country_iso_code)
        self._reported = dict(CPU_RAM_FIELDS if reported is None else reported)
        self.update_period_s = SHORTEST_WINDOW_S
        self.poll_period_s = measure_power_secs if self._reported else None
        self._lock = threading.Lock()
        self._rate = RateOfCumulative()
        self._final_emissions: float | None = None
        output_dir.mkdir(parents=True, exist_ok=True)
        self._output = _latest_emissions_output(output_dir)
        # Its first log lines are written before log_level takes effect.
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        tracker = OfflineEmissionsTracker(
            country_iso_code=self.country,
            project_name="joulebench",
            measure_power_secs=measure_power_secs,
            api_call_interval=-1,  # no live outputs between our flushes
            output_dir=str(output_dir),
            output_methods=[],  # the CSV is written once, at stop, by our handler
            output_handlers=[self._output],
            gpu_ids=list(gpu_ids or []),
            tracking_mode="machine",  # the host's power, like RAPL and NVML read it
            allow_multiple_runs=True,
            log_level="error",
        )
        check_private_api(tracker)  # before start: a mismatch is "meter unavailable", not a failed window
        self._tracker = tracker
        self._tracker.start()
        self._tracker._scheduler.stop()  # see the module docstring: we drive measurements
        # The first measurement builds CodeCarbon's emissions engine (~0.2 s), outside any
        # window, and is the origin of the power rate.
        self._rate(self._cumulative_joules())

    def devices(self) -> list[str]:
        return list(self._reported)

    def read(self) -> dict[str, float]:
        if not self._reported:
            return {}
        with self._lock:
            return self._cumulative_joules()

    def poll(self) -> dict[str, float]:
        with self._lock:
            return self._rate(self._cumulative_joules())

    def _cumulative_joules(self) -> dict[str, float]:
        data = self._flush()
        return {
            device: getattr(data, field) * JOULES_PER_KWH
            for device, field in self._reported.items()
        }

    def _flush(self):
        self._tracker._measure_power_and_energy()  # now, not "unless measured < 50 ms ago"
        # flush() swallows its own exceptions (returns None); turn that into a failed read.
        if self._tracker.flush() is None or self._output.latest is None:
            raise RuntimeError("CodeCarbon flush failed (it logs the cause at warning level)")
        return self._output.latest

    @property
    def emissions_kg(self) -> float | None:
        if self._final_emissions is not None:
            return self._final_emissions
        latest = self._output.latest
        return latest.emissions if latest is not None else None

    def close(self) -> None:
        with self._lock:
            if self._final_emissions is None:
                self._final_emissions = self._tracker.stop()

    def artifacts(self) -> list[Path]:
        path = self._output.csv_path
        return [path] if path is not None and path.exists() else []
