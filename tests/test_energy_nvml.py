"""NVML meters: the shared tests run against the real NVML on a GPU host (``real_nvml``) and
against a simulated GPU where none exists (``fake_nvml_no_gpu_here``). Tests that only make
sense with a simulated GPU (exact power ramps, GPUs without a counter, CUDA_VISIBLE_DEVICES
renumbering) say so in their name; ``gpu``-marked tests need the real thing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import codecarbon.core.gpu  # noqa: F401  binds CodeCarbon to the real pynvml before any fake
import pytest
import torch

from joulebench.energy import EnergyMonitor, build_monitor
from joulebench.energy.nvml import (
    AVERAGED_POWER_S,
    NvmlCounterMeter,
    NvmlGpu,
    NvmlPowerMeter,
    gpu_meters,
    open_run_gpus,
)


def _real_gpu_visible() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


HAS_GPU = _real_gpu_visible()
FAKE_UUID = "GPU-5a1f0c2e-0000-4000-8000-00000000beef"


class FakeNvml:
    """The pynvml calls joulebench makes, over one simulated GPU (this host has none).

    ``watts(t)`` is the board's instantaneous power and ``joules(t)`` its energy counter, at
    ``clock()`` time; the 1 s average that nvmlDeviceGetPowerUsage gives is ``average_watts``.
    """

    NVML_SUCCESS = 0
    NVML_FI_DEV_POWER_INSTANT = 186
    NOT_SUPPORTED, NOT_FOUND = 3, 6

    class NVMLError(Exception):
        def __init__(self, value: int) -> None:
            super().__init__(f"NVML error {value}")
            self.value = value

    def __init__(self, watts, joules, clock=time.perf_counter, has_counter=True,
                 has_instant=True, average_watts=200.0, nvml_index=3, bus_id="00000000:41:00.0"):
        self.watts, self.joules, self.clock = watts, joules, clock
        self.has_counter, self.has_instant = has_counter, has_instant
        self.average_watts, self.nvml_index, self.bus_id = average_watts, nvml_index, bus_id
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.inits -= 1

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid != FAKE_UUID:
            raise self.NVMLError(self.NOT_FOUND)
        return "handle"

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        if bus_id != self.bus_id:
            raise self.NVMLError(self.NOT_FOUND)
        return "handle"

    def nvmlDeviceGetName(self, handle):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetIndex(self, handle):
        return self.nvml_index

    def nvmlDeviceGetUUID(self, handle):
        return FAKE_UUID

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.has_counter:
            raise self.NVMLError(self.NOT_SUPPORTED)
        return int(self.joules(self.clock()) * 1000)

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(self.average_watts * 1000)

    def nvmlDeviceGetFieldValues(self, handle, field_ids):
        supported = self.has_instant and field_ids == [self.NVML_FI_DEV_POWER_INSTANT]
        milliwatts = round(self.watts(self.clock()) * 1000)
        return [SimpleNamespace(
            nvmlReturn=self.NVML_SUCCESS if supported else self.NOT_SUPPORTED,
            valueType=1, value=SimpleNamespace(uiVal=milliwatts),
        )]


def fake_cuda(monkeypatch, uuid: str = FAKE_UUID.removeprefix("GPU-")) -> None:
    """torch.cuda for one visible device (no CUDA here): index 0, whatever NVML calls it."""
    properties = SimpleNamespace(uuid=uuid, pci_domain_id=0, pci_bus_id=0x41, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: properties)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)


@dataclass
class GpuUnderTest:
    pynvml: object
    device: torch.device
    gpu: NvmlGpu
    busy: Callable[[float], None]  # keep the GPU working for that many seconds


def _busy_real_gpu(device: torch.device) -> Callable[[float], None]:
    def busy(seconds: float) -> None:
        x = torch.randn(4096, 4096, device=device)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            x = torch.tanh(x @ x)
            torch.cuda.synchronize(device)
    return busy


@pytest.fixture(params=[
    pytest.param("real", id="real_nvml", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU visible")]),
    pytest.param("fake", id="fake_nvml_no_gpu_here", marks=pytest.mark.skipif(
        HAS_GPU, reason="a real GPU is visible: the real_nvml case runs instead")),
])
def gpu_under_test(request, monkeypatch) -> GpuUnderTest:
    if request.param == "real":
        import pynvml

        device = torch.device("cuda", torch.cuda.current_device())
        (gpu,) = open_run_gpus(device)
        return GpuUnderTest(pynvml, device, gpu, _busy_real_gpu(device))
    fake = FakeNvml(watts=lambda t: 250.0, joules=lambda t: 1_000_000.0 + 250.0 * t)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    fake_cuda(monkeypatch)
    device = torch.device("cuda", 0)
    (gpu,) = open_run_gpus(device)
    return GpuUnderTest(fake, device, gpu, time.sleep)


def raw_counter_joules(pynvml, gpu: NvmlGpu) -> float:
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000
    finally:
        pynvml.nvmlShutdown()


def test_counter_meter_reads_the_counter_in_joules_between_raw_reads(gpu_under_test):
    gpu, pynvml = gpu_under_test.gpu, gpu_under_test.pynvml
    if not gpu.has_counter:
        pytest.skip(f"{gpu.name} has no total-energy counter (pre-Volta)")
    meter = NvmlCounterMeter([gpu], gpu_under_test.device, poll_period_s=0.1)
    try:
        before = raw_counter_joules(pynvml, gpu)
        (reading,) = meter.read().values()
        after = raw_counter_joules(pynvml, gpu)
        assert before <= reading <= after
        monitor = EnergyMonitor([meter])
        with monitor.window("train/epoch-1") as window:
            gpu_under_test.busy(0.5)
        joules = window.measurement.joules[gpu.label]
        assert window.measurement.sources == {gpu.label: "nvml_counter"}
        # Between a GPU's idle floor and its board limit, over half a second at least.
        assert 5.0 <= joules / window.measurement.seconds <= 1500.0
        (watts,) = meter.poll().values()
        assert 5.0 <= watts <= 1500.0
    finally:
        meter.close()


def test_power_meter_integrates_power_between_the_gpus_floor_and_limit(gpu_under_test):
    meter = NvmlPowerMeter([gpu_under_test.gpu], gpu_under_test.device, poll_period_s=0.05)
    try:
        monitor = EnergyMonitor([meter])
        with monitor.window("train/epoch-1") as window:
            for _ in range(10):
                gpu_under_test.busy(0.05)
                meter.poll()
        measurement = window.measurement
        assert measurement.sources == {gpu_under_test.gpu.label: "nvml_power"}
        assert 5.0 <= measurement.mean_watts <= 1500.0
    finally:
        meter.close()


def test_power_meter_integrates_a_power_ramp_exactly_fake_nvml_no_gpu_here(monkeypatch):
    now = [0.0]
    fake = FakeNvml(watts=lambda t: 100.0 + 20.0 * t, joules=lambda t: 0.0, clock=lambda: now[0])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpu = NvmlGpu("gpu0", FAKE_UUID, "NVIDIA H100 80GB HBM3", 3, False, True)
    meter = NvmlPowerMeter([gpu], torch.device("cuda", 0), 1.0, clock=lambda: now[0])
    for now[0] in (1.0, 2.5, 3.0):  # the sampler's polls, unevenly spaced
        assert meter.poll() == {"gpu0": 100.0 + 20.0 * now[0]}
    now[0] = 4.0
    assert meter.read() == {"gpu0": 560.0}  # ∫0..4 (100 + 20 t) dt = 400 + 160
    meter.close()
    assert fake.inits == 0


def test_gpu_without_counter_falls_back_to_integrated_power_fake_nvml_no_gpu_here(monkeypatch):
    fake = FakeNvml(watts=lambda t: 250.0, joules=lambda t: 0.0, has_counter=False)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    fake_cuda(monkeypatch)
    (gpu,) = open_run_gpus(torch.device("cuda", 0))
    (meter,) = gpu_meters([gpu], torch.device("cuda", 0), poll_period_s=0.1)
    assert (type(meter), meter.source, meter.update_period_s) == (NvmlPowerMeter, "nvml_power", 0.1)
    meter.close()


def test_instant_power_is_preferred_to_the_one_second_average_fake_nvml_no_gpu_here(monkeypatch):
    cases = [(True, 250.0, 0.1), (False, 200.0, AVERAGED_POWER_S)]
    for has_instant, expected_watts, update_period in cases:
        fake = FakeNvml(watts=lambda t: 250.0, joules=lambda t: 0.0, has_counter=False,
                        has_instant=has_instant, average_watts=200.0)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        fake_cuda(monkeypatch)
        (gpu,) = open_run_gpus(torch.device("cuda", 0))
        meter = NvmlPowerMeter([gpu], torch.device("cuda", 0), poll_period_s=0.1)
        assert gpu.has_instant_power is has_instant
        assert (meter.poll(), meter.update_period_s) == ({"gpu0": expected_watts}, update_period)
        meter.close()


def test_torch_index_maps_to_nvml_by_uuid_then_pci_bus_fake_nvml_no_gpu_here(monkeypatch):
    # CUDA_VISIBLE_DEVICES=3 makes NVML's GPU 3 torch's cuda:0: the label follows torch,
    # the NVML index (for CodeCarbon) follows NVML.
    fake = FakeNvml(watts=lambda t: 250.0, joules=lambda t: 0.0, nvml_index=3)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    fake_cuda(monkeypatch)
    (by_uuid,) = open_run_gpus(torch.device("cuda"))
    assert (by_uuid.label, by_uuid.nvml_index, by_uuid.uuid) == ("gpu0", 3, FAKE_UUID)
    fake_cuda(monkeypatch, uuid="unknown-to-nvml")  # a MIG or odd driver: fall back to PCI
    (by_bus,) = open_run_gpus(torch.device("cuda", 0))
    assert by_bus == by_uuid
    assert fake.inits == 0  # every nvmlInit was paired with a shutdown


def test_build_monitor_counts_the_gpu_by_nvml_and_cpu_ram_once_fake_nvml_no_gpu_here(
    monkeypatch, tmp_path: Path,
):
    fake = FakeNvml(watts=lambda t: 250.0, joules=lambda t: 1_000_000.0 + 250.0 * t)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    fake_cuda(monkeypatch)
    monitor = build_monitor(torch.device("cuda", 0), "USA", tmp_path, sample_hz=20,
                            powercap_root=tmp_path / "absent")
    try:
        assert [type(m).__name__ for m in monitor.meters] == ["NvmlCounterMeter", "CodeCarbonMeter"]
        with monitor.window("train/epoch-1") as window:
            time.sleep(1.1)
    finally:
        monitor.close()
    measurement = window.measurement
    assert measurement.sources == {
        "gpu0": "nvml_counter", "cpu": "codecarbon_estimate", "ram": "codecarbon_estimate",
    }
    # The counter advances 250 J/s: the window's GPU joules are 250 W x its seconds, to the
    # millijoule resolution of the counter and the microseconds between clock and read.
    assert measurement.joules["gpu0"] == pytest.approx(250.0 * measurement.seconds, rel=2e-3)
    assert all(watts["gpu0"] == 250.0 for _, watts in monitor.power_trace())
    assert monitor.peak_watts(measurement) > 250.0  # GPU plus the CPU/RAM estimates
    assert fake.inits == 0


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU visible")
def test_torch_device_and_nvml_handle_are_the_same_physical_gpu():
    import pynvml

    index = torch.cuda.current_device()
    (gpu,) = open_run_gpus(torch.device("cuda", index))
    properties = torch.cuda.get_device_properties(index)
    assert gpu.uuid == f"GPU-{properties.uuid}"
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
        bus_id = pynvml.nvmlDeviceGetPciInfo(handle).busId
        bus_id = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
        assert int(bus_id.split(":")[1], 16) == properties.pci_bus_id
    finally:
        pynvml.nvmlShutdown()
