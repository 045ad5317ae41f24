"""GPU validation of the energy meters: do counter, integrated power and CodeCarbon agree?

Run on a GPU host with the kit installed (needs torch, torchvision, nvidia-ml-py; CodeCarbon
is optional, MLflow is not used):

    python3 benchmarks/gpu_check.py [--bf16] [--train-seconds 75] [--idle-seconds 10]

It fine-tunes resnet50 at 224 px on synthetic data already on the GPU (so the data loader
plays no part) in three equal windows, and prints: the GPU, driver and which NVML readings
it supports; idle watts; per window the joules of NVML's energy counter, of the integrated
power samples and of CodeCarbon, with their agreement in % of the counter; the
repeat-to-repeat spread of J per image over the three windows; the cost of one window; and
how a window shorter than the counter's period is reported. About 2-3 minutes on an H100.

``--smoke`` runs every step at toy size on whatever device there is, so the script itself can
be checked on a CPU-only host; without a GPU and without ``--smoke`` it says so and exits 0.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
import torchvision

try:
    import joulebench  # noqa: F401  installed (editable or from a wheel)
except ModuleNotFoundError:  # a bare checkout on the GPU host: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from joulebench.energy import EnergyMonitor, Measurement, build_monitor, gpu_spec
from joulebench.energy.devices import peak_flops_per_joule
from joulebench.energy.nvml import NvmlGpu, NvmlPowerMeter, nvml_module, open_run_gpus
from joulebench.energy.sampler import PowerSampler


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-seconds", type=float, default=75.0, help="split in 3 windows")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (else fp32/TF32)")
    parser.add_argument("--sample-hz", type=float, default=10.0)
    parser.add_argument("--country", default="USA")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, any device")
    return parser.parse_args()


class Comparison:
    """Meters read beside the kit's monitor on the same windows: NVML integrated power for
    the GPU (even where the counter exists) and CodeCarbon's own GPU joules."""

    def __init__(self, gpu: NvmlGpu | None, device: torch.device, args, output_dir: Path):
        self.meters: dict[str, object] = {}
        self.sampler = None
        if gpu is not None:
            power = NvmlPowerMeter([gpu], device, poll_period_s=1.0 / args.sample_hz)
            self.meters["integrated power"] = power
            self.sampler = PowerSampler([power])
            self.sampler.start()
        self.codecarbon_note = _add_codecarbon(self.meters, gpu, args.country, output_dir)

    def read(self) -> dict[str, float]:
        """GPU joules so far per comparison meter (CodeCarbon: GPU, or CPU+RAM without one)."""
        return {name: sum(meter.read().values()) for name, meter in self.meters.items()}

    def close(self) -> None:
        if self.sampler:
            self.sampler.stop()
        for meter in self.meters.values():
            meter.close()


def _add_codecarbon(meters: dict, gpu: NvmlGpu | None, country: str, output_dir: Path) -> str:
    try:
        from joulebench.energy.carbon import CodeCarbonMeter
    except ModuleNotFoundError:
        return "codecarbon: not installed"
    try:
        reported = {"gpu": "gpu_energy"} if gpu else {"cpu": "cpu_energy", "ram": "ram_energy"}
        gpu_ids = [gpu.nvml_index] if gpu else []
        meters["codecarbon"] = CodeCarbonMeter(country, output_dir, reported, gpu_ids)
    except ModuleNotFoundError:
        return "codecarbon: not installed"
    return f"codecarbon: reads {', '.join(reported)}"


@contextmanager
def compared_window(monitor: EnergyMonitor, comparison: Comparison, name: str, results: list):
    """A kit window and the comparison meters read at (nearly) the same edges."""
    begin = comparison.read()
    with monitor.window(name) as window:
        yield window
    end = comparison.read()
    results.append((window.measurement, {key: end[key] - begin[key] for key in end}))


def train_step_factory(device: torch.device, args) -> tuple[Callable[[], None], int]:
    """One optimizer step of resnet50 (resnet18 for --smoke) on a fixed synthetic batch."""
    smoke = args.smoke
    size, batch = (32, 4) if smoke else (224, args.batch_size)
    model = (torchvision.models.resnet18 if smoke else torchvision.models.resnet50)(num_classes=1000)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=args.bf16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, batch


def train_for(step: Callable[[], None], seconds: float, device: torch.device) -> int:
    """Steps run until ``seconds`` have passed. On a GPU the clock is checked every 10 steps,
    after a sync, so that the queue stays full in between."""
    check_every = 10 if device.type == "cuda" else 1
    steps, end = 0, time.perf_counter() + seconds
    while True:
        for _ in range(check_every):
            step()
        steps += check_every
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if time.perf_counter() >= end:
            return steps


def driver_version() -> str:
    pynvml = nvml_module()
    try:
        return pynvml.nvmlSystemGetDriverVersion()
    finally:
        pynvml.nvmlShutdown()


def describe_gpu(gpu: NvmlGpu | None, args) -> None:
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}")
    if gpu is None:
        return
    dtype = "bf16" if args.bf16 else "tf32"
    spec, peak = gpu_spec(gpu.name), peak_flops_per_joule(gpu.name, dtype)
    print(f"GPU {gpu.label}: {gpu.name}, driver {driver_version()}, NVML index {gpu.nvml_index}")
    print(f"  energy counter: {'yes' if gpu.has_counter else 'NO (integrated power is used)'}; "
          f"power reading: {'instantaneous field' if gpu.has_instant_power else '1 s average'}")
    print(f"  datasheet: {spec.model + f', {spec.board_watts:g} W' if spec else 'not in the table'}"
          + (f", peak {dtype} {peak:.3g} FLOP/J" if peak else ""))


def percent(value: float, reference: float) -> str:
    return f"{100 * (value - reference) / reference:+.2f} %" if reference else "n/a"


def reference_joules(measurement: Measurement) -> float:
    """The GPU's joules where there is one (what the comparisons read), else the total."""
    gpu = [j for device, j in measurement.joules.items() if device.startswith("gpu")]
    return sum(gpu) if gpu else measurement.total_joules or 0.0


def print_window(measurement: Measurement, compared: dict[str, float], images: int | None) -> None:
    reference = reference_joules(measurement)
    by = ", ".join(
        f"{device} {measurement.joules[device]:.1f} J by {source}"
        for device, source in sorted(measurement.sources.items())
    )
    line = f"  {measurement.name:12s} {measurement.seconds:6.1f} s  kit: {by or 'nothing'}"
    for name, joules in compared.items():
        line += f" | {name} {joules:.1f} J ({percent(joules, reference)})"
    if images:
        line += f" | {images} img, {reference / images * 1000:.2f} mJ/img"
    print(line)


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("no GPU: torch.cuda.is_available() is False; nothing to check (use --smoke to "
              "exercise the script on the CPU)")
        return 0
    has_gpu = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if has_gpu else torch.device("cpu")
    (gpu,) = open_run_gpus(device) if device.type == "cuda" else (None,)
    describe_gpu(gpu, args)
    if gpu is None:
        print("no GPU: running the CPU smoke path (NVML comparisons skipped)")
    idle_s = 1.5 if args.smoke else args.idle_seconds
    window_s = 1.5 if args.smoke else args.train_seconds / 3
    with tempfile.TemporaryDirectory() as scratch:
        monitor = build_monitor(device, args.country, Path(scratch) / "kit", sample_hz=args.sample_hz)
        comparison = Comparison(gpu, device, args, Path(scratch) / "compare")
        print(f"kit meters: {[m.source for m in monitor.meters]}; unavailable: {monitor.unavailable}")
        print(f"compared with: {list(comparison.meters)}; {comparison.codecarbon_note}")
        try:
            run_checks(monitor, comparison, device, args, idle_s, window_s)
        finally:
            comparison.close()
            monitor.close()
        print(f"CO2 of the whole check (kit's CodeCarbon): {monitor.emissions_kg} kg")
    return 0


def run_checks(monitor, comparison, device, args, idle_s: float, window_s: float) -> None:
    results: list[tuple[Measurement, dict[str, float]]] = []
    with compared_window(monitor, comparison, "idle", results):
        time.sleep(idle_s)
    idle, idle_compared = results[0]
    kit_watts = f"{idle.mean_watts:.1f} W" if idle.mean_watts is not None else "n/a"
    print(f"idle: kit {kit_watts}; "
          + ", ".join(f"{k} {v / idle.seconds:.1f} W" for k, v in idle_compared.items()))
    step, batch = train_step_factory(device, args)
    train_for(step, min(window_s, 10.0), device)  # warm-up: cuDNN autotuning, allocator
    images = []
    for repeat in range(1, 4):
        with compared_window(monitor, comparison, f"train-rep-{repeat}", results):
            images.append(train_for(step, window_s, device) * batch)
    print(f"windows (training in {'bf16' if args.bf16 else 'fp32/TF32'}, batch {batch}):")
    print_window(idle, idle_compared, None)
    for (measurement, compared), count in zip(results[1:], images):
        print_window(measurement, compared, count)
        peak = monitor.peak_watts(measurement)
        print(f"    mean {measurement.mean_watts or 0:.1f} W, peak {peak or 0:.1f} W, "
              f"{count / measurement.seconds:.1f} img/s, flags {list(measurement.flags)}")
    per_image = [reference_joules(m) / n for (m, _), n in zip(results[1:], images)]
    spread = (max(per_image) - min(per_image)) / statistics.mean(per_image) if all(per_image) else 0
    print(f"repeat spread of J/image over 3 windows: {100 * spread:.2f} % (max-min over mean)")
    print_window_cost(monitor, device)


def print_window_cost(monitor: EnergyMonitor, device: torch.device) -> None:
    costs = []
    for index in range(50):
        before_open = time.perf_counter()
        with monitor.window(f"cost-{index}"):
            opened = time.perf_counter()
            time.sleep(0.06)  # edges 60 ms apart: CodeCarbon measures at each, as in a run
            before_close = time.perf_counter()
        costs.append((opened - before_open + time.perf_counter() - before_close) * 1e6)
    print(f"window open+close: median {statistics.median(costs):.0f} us, max {max(costs):.0f} us")
    with monitor.window("short") as short:
        time.sleep(0.05)
    print(f"a 50 ms window: joules {short.measurement.joules}, flags {list(short.measurement.flags)}")


if __name__ == "__main__":
    sys.exit(main())
