"""NVML: GPU energy from the total-energy counter, or from integrated power samples.

``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded; Volta and newer) is the
measurement: :class:`NvmlCounterMeter`, source ``nvml_counter``, read after
``torch.cuda.synchronize()`` so that queued kernels are inside the window they belong to.
GPUs without it are integrated from power samples by the trapezoid rule:
:class:`NvmlPowerMeter`, source ``nvml_power``. Both meters are polled by the power sampler
for the run's power trace. Power is the instantaneous field ``NVML_FI_DEV_POWER_INSTANT``
where the driver has it, because since Ampere (GA100 excepted) ``nvmlDeviceGetPowerUsage``
returns a one-second average, too smooth to integrate at 10 Hz.

Only the GPUs the run uses are opened: torch's device index (which ``CUDA_VISIBLE_DEVICES``
renumbers) is mapped to its NVML handle by UUID, or by PCI bus id where the UUID lookup fails.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from joulebench.energy.sampler import TrapezoidIntegrator
from joulebench.energy.window import Meter

COUNTER_UPDATE_S = 0.1  # the counter advances in steps of about 100 ms
AVERAGED_POWER_S = 1.0  # nvmlDeviceGetPowerUsage's averaging window on Ampere and newer


class NvmlUnavailable(Exception):
    """NVML cannot read the run's GPUs; the message says why."""


@dataclass(frozen=True)
class NvmlGpu:
    """One GPU the run uses, as NVML sees it."""

    label: str  # "gpu0": torch's index, as the rest of joulebench names it
    uuid: str  # NVML handles are only valid while NVML is initialised: meters look them up
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    nvml_index: int  # NVML's own numbering, ignoring CUDA_VISIBLE_DEVICES (for CodeCarbon)
    has_counter: bool
    has_instant_power: bool


def nvml_module():
    """pynvml, initialised (NVML reference-counts init/shutdown pairs)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # library missing, driver not loaded...
        raise NvmlUnavailable(f"NVML: {error}") from error
    return pynvml


def open_run_gpus(device: torch.device) -> list[NvmlGpu]:
    """The GPUs ``device`` runs on (one, for a single-device run)."""
    if device.type != "cuda":
        raise NvmlUnavailable(f"the run's device is {device}, not a GPU")
    if not torch.cuda.is_available():
        raise NvmlUnavailable("torch sees no CUDA device")
    index = device.index if device.index is not None else torch.cuda.current_device()
    pynvml = nvml_module()
    try:
        handle = _handle_for_torch_index(pynvml, index)
        return [
            NvmlGpu(
                label=f"gpu{index}",
                uuid=pynvml.nvmlDeviceGetUUID(handle),
                name=pynvml.nvmlDeviceGetName(handle),
                nvml_index=pynvml.nvmlDeviceGetIndex(handle),
                has_counter=_supports(lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)),
                has_instant_power=_supports(lambda: _instant_power_mw(pynvml, handle)),
            )
        ]
    finally:
        pynvml.nvmlShutdown()


def _handle_for_torch_index(pynvml, index: int):
    properties = torch.cuda.get_device_properties(index)
    try:
        return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{properties.uuid}")
    except pynvml.NVMLError:
        bus_id = (
            f"{properties.pci_domain_id:08X}:{properties.pci_bus_id:02X}:"
            f"{properties.pci_device_id:02X}.0"
        )
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)


def _supports(call: Callable[[], object]) -> bool:
    try:
        call()
        return True
    except Exception:  # NVMLError_NotSupported, or a driver too old for the call
        return False


_VALUE_FIELD = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


def _instant_power_mw(pynvml, handle) -> float:
    (value,) = pynvml.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(value.nvmlReturn)
    return float(getattr(value.value, _VALUE_FIELD[value.valueType]))


def power_watts(pynvml, gpu: NvmlGpu, handle) -> float:
    """Power now: instantaneous where supported, else NVML's (possibly averaged) reading."""
    if gpu.has_instant_power:
        return _instant_power_mw(pynvml, handle) / 1000
    return pynvml.nvmlDeviceGetPowerUsage(handle) / 1000


class _NvmlMeter(Meter):
    """Shared by both NVML meters: init/shutdown, the sync, and power polling."""

    def __init__(self, gpus: list[NvmlGpu], device: torch.device, poll_period_s: float) -> None:
        self.gpus = list(gpus)
        self.poll_period_s = poll_period_s
        self._device = device
        self._pynvml = nvml_module()
        self._handles = {gpu.label: self._pynvml.nvmlDeviceGetHandleByUUID(gpu.uuid) for gpu in gpus}

    def devices(self) -> list[str]:
        return [gpu.label for gpu in self.gpus]

    def sync(self) -> None:
        torch.cuda.synchronize(self._device)

    def poll(self) -> dict[str, float]:
        return {gpu.label: power_watts(self._pynvml, gpu, self._handles[gpu.label]) for gpu in self.gpus}

    def close(self) -> None:
        if self._pynvml is not None:
            self._pynvml.nvmlShutdown()
            self._pynvml = None


class NvmlCounterMeter(_NvmlMeter):
    """Joules from NVML's total-energy counter."""

    source = "nvml_counter"
    update_period_s = COUNTER_UPDATE_S

    def read(self) -> dict[str, float]:
        return {
            label: self._pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000
            for label, handle in self._handles.items()
        }


class NvmlPowerMeter(_NvmlMeter):
    """Joules integrated (trapezoid) from power samples: the sampler's, and one per read."""

    source = "nvml_power"

    def __init__(
        self,
        gpus: list[NvmlGpu],
        device: torch.device,
        poll_period_s: float,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__(gpus, device, poll_period_s)
        self._clock = clock
        averaged = not all(gpu.has_instant_power for gpu in gpus)
        self.update_period_s = max(poll_period_s, AVERAGED_POWER_S if averaged else 0.0)
        self._integrators = {gpu.label: TrapezoidIntegrator() for gpu in gpus}
        self._lock = threading.Lock()  # read (window edges) and poll (sampler) both integrate
        self.poll()  # the integral's origin

    def poll(self) -> dict[str, float]:
        with self._lock:
            now = self._clock()
            watts = super().poll()
            for label, value in watts.items():
                self._integrators[label].add(now, value)
            return watts

    def read(self) -> dict[str, float]:
        self.poll()  # a sample at the window's edge, so the integral ends exactly there
        with self._lock:
            return {label: integ.joules for label, integ in self._integrators.items()}


def gpu_meters(gpus: list[NvmlGpu], device: torch.device, poll_period_s: float) -> list[Meter]:
    """The counter for GPUs that have it, integrated power for the others."""
    with_counter = [gpu for gpu in gpus if gpu.has_counter]
    without_counter = [gpu for gpu in gpus if not gpu.has_counter]
    meters: list[Meter] = []
    if with_counter:
        meters.append(NvmlCounterMeter(with_counter, device, poll_period_s))
    if without_counter:
        meters.append(NvmlPowerMeter(without_counter, device, poll_period_s))
    return meters
