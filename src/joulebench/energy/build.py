"""Choosing the meters for a run, so that every device is counted once, by the best source.

GPU: NVML's counter, else NVML's integrated power. CPU and RAM: RAPL where it can be read,
else CodeCarbon's estimate for whichever of the two RAPL does not cover. CodeCarbon always
runs, for the run's CO2; it is told the run's GPUs (by NVML index) so that its CO2 covers the
same devices, but its GPU joules are never reported beside NVML's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from joulebench.energy.carbon import CPU_RAM_FIELDS, CodeCarbonMeter, check_country
from joulebench.energy.nvml import NvmlGpu, NvmlUnavailable, gpu_meters, open_run_gpus
from joulebench.energy.rapl import POWERCAP_ROOT, RaplMeter, RaplUnavailable, find_zones
from joulebench.energy.sampler import PowerSampler
from joulebench.energy.window import EnergyMonitor, Meter
from joulebench.errors import ConfigError

MAX_SAMPLE_HZ = 100.0  # NVML's instantaneous power itself updates about every 10-20 ms


def check_sample_hz(sample_hz: float) -> float:
    """Return the sampling period in seconds; ConfigError for a rate out of range."""
    if not 0 < sample_hz <= MAX_SAMPLE_HZ:
        raise ConfigError(
            f"power sample rate {sample_hz} Hz is out of range; accepted: above 0 and at most "
            f"{MAX_SAMPLE_HZ:g} Hz; fix: pass e.g. 10"
        )
    return 1.0 / sample_hz


def build_monitor(
    device: torch.device,
    country: str,
    output_dir: Path = Path("."),
    sample_hz: float = 10.0,
    codecarbon_period_s: float = 1.0,
    powercap_root: Path = POWERCAP_ROOT,
) -> EnergyMonitor:
    """An EnergyMonitor over every meter this host can read for a run on ``device``.

    The power sampler is already running; ``close()`` the monitor to stop it (CodeCarbon then
    writes its CSV into ``output_dir``).
    """
    period = check_sample_hz(sample_hz)
    country_code = _checked_country(country)
    unavailable: dict[str, str] = {}
    meters: list[Meter] = []
    gpus = _run_gpus(device, unavailable)
    meters += gpu_meters(gpus, device, period)
    rapl_devices: set[str] = set()
    try:
        rapl = RaplMeter(powercap_root, period)
        meters.append(rapl)
        rapl_devices = set(rapl.devices())
    except RaplUnavailable as why:
        unavailable["rapl"] = str(why)
    if country_code is None:
        unavailable["codecarbon"] = "not installed"
    else:
        estimated = {dev: name for dev, name in CPU_RAM_FIELDS.items() if dev not in rapl_devices}
        gpu_ids = [gpu.nvml_index for gpu in gpus]
        try:
            meters.append(
                CodeCarbonMeter(country_code, output_dir, estimated, gpu_ids, codecarbon_period_s)
            )
        except Exception as error:  # energy from the other meters is still worth having
            unavailable["codecarbon"] = f"{type(error).__name__}: {error}"
    sampler = PowerSampler(meters)
    sampler.start()
    return EnergyMonitor(meters, unavailable, sampler=sampler)


def _checked_country(country: str) -> str | None:
    """The validated ISO code, or None where CodeCarbon is not installed."""
    try:
        return check_country(country)
    except ModuleNotFoundError:
        return None


def _run_gpus(device: torch.device, unavailable: dict[str, str]) -> list[NvmlGpu]:
    try:
        return open_run_gpus(device)
    except NvmlUnavailable as why:
        unavailable["nvml"] = str(why)
        return []


def describe_meters(
    device: torch.device, country: str, powercap_root: Path = POWERCAP_ROOT
) -> list[tuple[str, bool, str]]:
    """(meter, available, what it would read here / why not) for a run on ``device``."""
    return [
        *_describe_nvml(device),
        _describe_rapl(powercap_root),
        _describe_codecarbon(country, powercap_root),
    ]


def _describe_nvml(device: torch.device) -> list[tuple[str, bool, str]]:
    try:
        gpus = open_run_gpus(device)
    except NvmlUnavailable as why:
        return [("nvml_counter", False, str(why)), ("nvml_power", False, str(why))]
    counter = [f"{gpu.label} {gpu.name}" for gpu in gpus if gpu.has_counter]
    power = [
        f"{gpu.label} {gpu.name} ({'instantaneous' if gpu.has_instant_power else '1 s average'})"
        for gpu in gpus
    ]
    no_counter = "no total-energy counter on " + ", ".join(gpu.name for gpu in gpus)
    return [
        ("nvml_counter", bool(counter), f"GPU energy (mJ counter): {', '.join(counter)}"
         if counter else no_counter),
        ("nvml_power", True, "power trace" + ("" if counter else " and integrated GPU energy")
         + ": " + ", ".join(power)),
    ]


def _describe_rapl(powercap_root: Path) -> tuple[str, bool, str]:
    try:
        zones = find_zones(powercap_root)
    except RaplUnavailable as why:
        return ("rapl", False, str(why))
    reads = sorted({f"{zone.device} ({zone.energy_file.parent.name})" for zone in zones})
    return ("rapl", True, "CPU/DRAM energy: " + ", ".join(reads))


def _describe_codecarbon(country: str, powercap_root: Path) -> tuple[str, bool, str]:
    code = _checked_country(country)
    if code is None:
        return ("codecarbon", False, "not installed")
    try:
        covered = {zone.device for zone in find_zones(powercap_root)}
    except RaplUnavailable:
        covered = set()
    estimated = [dev for dev in CPU_RAM_FIELDS if dev not in covered]
    what = f"CO2-eq with {code}'s grid intensity"
    if estimated:
        what += f"; estimated energy of {', '.join(estimated)} (CPU load x TDP, RAM size)"
    return ("codecarbon", True, what)
