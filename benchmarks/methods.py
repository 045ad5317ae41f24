"""What each compression does to the cost of a training step, beside what it does to FLOPs —
and whether the kit's own training path costs anything beyond a bare PyTorch loop.

For each model (random init, 10 classes) every arm is built and compressed once; then rounds
of timed training steps run arm after arm, interleaved round by round so that a busy
neighbour slows every arm alike. Each arm first takes one untimed step on a full batch
(kernel selection, allocator growth, the optimiser's state), as the kit's ``warmup/epoch-1``
window does. The inputs are random images: step time does not depend on their content.

Arms:
  plain                 a bare best-practice PyTorch loop written here, not the kit's:
                        channels_last (conv nets), fused Adam, forward, cross-entropy, backward,
                        step — the reference the kit's baseline must match;
  baseline …            the kit's training path (``train.prepare`` + ``train.train_steps``):
                        the method's stored dtype, optimiser passes and the same layout;
  stego                 bits=16: weights stored and computed in bfloat16;
  stego bits=8          float32 compute: the cost of re-imposing the bits alone;
  prune                 masked: dense compute, zeros kept by two passes around each step;
  prune structured=true, lowrank, lowrank conv=true: layers physically smaller.

Printed per model: FLOPs per sample, parameters and weight bytes as stored relative to
baseline (from the compression report); step time as the median over rounds of the per-round ratio, in wall seconds and in CPU
seconds of this process; energy per step where a meter *reads* (RAPL, NVML) — CodeCarbon's
estimate is CPU time × an assumed power, so its ratio is the CPU-time ratio and is not shown as
energy. Then the targets of issue 10 with their verdicts.

    python benchmarks/methods.py [--models resnet18:112,vgg16:64] [--device cpu]
                                 [--batch-size 32] [--rounds 3] [--steps 2]

On a CPU without native bfloat16 (AVX2 only) PyTorch runs bfloat16 convolutions with its
reference kernels: the stego arm then says nothing about the method (the host line says which
this is, and the kit tags such runs ``compute_emulated``).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from joulebench import energy
from joulebench.compress import CompressionReport, build_method, compress, parse_method_params
from joulebench.config import make_config
from joulebench.models import build_model
from joulebench.compute import compute_settings, cpu_bfloat16_units
from joulebench.train import LossTally, prepare, synchronize, train_steps

KIT_ARMS: list[tuple[str, tuple[str, ...]]] = [
    ("baseline", ()),
    ("stego", ()),
    ("stego", ("bits=8",)),
    ("prune", ()),
    ("prune", ("structured=true",)),
    ("lowrank", ()),
    ("lowrank", ("conv=true",)),
]
MEASURED_SOURCES = ("nvml_counter", "nvml_power", "rapl")  # meters that read, not estimate
Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Arm:
    """One model ready to train, the function that trains it on batches, and its timings."""

    label: str
    report: CompressionReport | None  # None for plain: it compresses nothing
    train: Callable[[Batches], torch.Tensor]  # returns the summed loss (read back: a sync)
    release: Callable[[], None]  # frees the gradients between rounds (memory for the others)
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    joules: list[float] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18:112,vgg16:64",
                        help="comma-separated MODEL:PIXELS (the issue's targets: resnet18:112,vgg16:64)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per arm, interleaved")
    parser.add_argument("--steps", type=int, default=2, help="training steps per arm per round")
    return parser.parse_args()


def plain_arm(model_name: str, device: torch.device) -> Arm:
    """The reference: a bare best-practice PyTorch loop, written without the kit."""
    torch.manual_seed(0)
    model = build_model(model_name, 10).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def train(batches: Batches) -> torch.Tensor:
        total = torch.zeros((), device=device)
        for images, labels in batches:
            loss = F.cross_entropy(model(images.contiguous(memory_format=torch.channels_last)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        return total

    return Arm("plain (bare PyTorch)", None, train, lambda: optimizer.zero_grad(set_to_none=True))


def kit_arm(model_name: str, method_name: str, pairs: tuple[str, ...], example: torch.Tensor) -> Arm:
    """A method on the kit's own training path, exactly as ``joulebench train`` runs it."""
    torch.manual_seed(0)
    config = make_config(model=model_name, method=method_name, params=pairs, device=str(example.device), lr=1e-3,
                         weights="none")
    method = build_method(method_name, parse_method_params(method_name, pairs))
    model = build_model(model_name, 10).to(example.device)
    settings = compute_settings(config, model, method)
    settings.apply_backends()
    model, report = compress(method, model, example)
    model, optimizer, scaler = prepare(config, model, method, settings)

    def train(batches: Batches) -> torch.Tensor:
        tally = LossTally(example.device)
        train_steps(model, batches, optimizer, scaler, settings, tally)
        return tally.total

    return Arm(" ".join((method_name, *pairs)), report, train, lambda: optimizer.zero_grad(set_to_none=True))


def measure(arm: Arm, batches: Batches, monitor: energy.EnergyMonitor, steps: int) -> None:
    with monitor.window(arm.label) as window:
        wall, cpu = time.perf_counter(), time.process_time()
        arm.train(batches).item()  # the read-back waits for queued GPU work
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    arm.release()
    measured = {d: j for d, j in window.measurement.joules.items()
                if window.measurement.sources[d] in MEASURED_SOURCES}
    arm.wall.append(wall / steps)
    arm.cpu.append(cpu / steps)
    if measured:
        arm.joules.append(sum(measured.values()) / steps)


def benchmark_model(model_name: str, size: int, args: argparse.Namespace, device: torch.device,
                    monitor: energy.EnergyMonitor) -> list[Arm]:
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch_size, 3, size, size, generator=generator).to(device),
         torch.randint(0, 10, (args.batch_size,), generator=generator).to(device))
        for _ in range(args.steps)
    ]
    arms = [plain_arm(model_name, device)]
    for method_name, pairs in KIT_ARMS:
        started = time.perf_counter()
        arms.append(kit_arm(model_name, method_name, pairs, batches[0][0][:2]))
        print(f"  built {model_name} {arms[-1].label}: {time.perf_counter() - started:.1f} s", flush=True)
    for arm in arms:  # the untimed warm-up step, on a full batch
        arm.train(batches[:1]).item()
        arm.release()
    for round_index in range(args.rounds):
        for arm in arms:
            measure(arm, batches, monitor, args.steps)
        print(f"  round {round_index + 1}/{args.rounds} done", flush=True)
    synchronize(device)
    return arms


def median_ratio(values: list[float], reference: list[float]) -> float | None:
    if not values or len(values) != len(reference):
        return None
    return statistics.median(v / r for v, r in zip(values, reference))


def print_table(model_name: str, size: int, arms: list[Arm]) -> dict[str, tuple[float, float]]:
    """The table; returns label → (wall-time ratio to baseline, FLOP ratio) for the verdicts."""
    baseline = next(arm for arm in arms if arm.label == "baseline")
    print(f"\n{model_name} at {size} px: ratios to the kit's baseline "
          "(time: median over rounds of per-round ratios)")
    print(f"  {'arm':24s} {'FLOPs':>7s} {'params':>7s} {'bytes':>7s} {'time wall':>9s} {'time CPU':>9s} "
          f"{'energy':>7s} {'ms/step':>8s} {'spread ms':>12s}")
    ratios = {}
    for arm in arms:
        report = arm.report or baseline.report
        flops = report.after.flops_per_sample / baseline.report.after.flops_per_sample
        params = report.after.parameters / baseline.report.after.parameters
        stored = report.after.weight_bytes / baseline.report.after.weight_bytes
        wall = median_ratio(arm.wall, baseline.wall)
        cpu = median_ratio(arm.cpu, baseline.cpu)
        joules = median_ratio(arm.joules, baseline.joules)
        energy_text = f"{joules:7.2f}" if joules is not None else f"{'n/a':>7s}"
        spread = f"{min(arm.wall) * 1e3:.0f}–{max(arm.wall) * 1e3:.0f}"
        print(f"  {arm.label:24s} {flops:7.3f} {params:7.3f} {stored:7.3f} {wall:9.2f} {cpu:9.2f} {energy_text} "
              f"{statistics.median(arm.wall) * 1e3:8.0f} {spread:>12s}")
        ratios[arm.label] = (wall, flops)
    return ratios


def print_targets(model_name: str, ratios: dict[str, tuple[float, float]]) -> bool:
    """Issue 10's targets for this model: each with its measured value and verdict."""
    plain = 1 / ratios["plain (bare PyTorch)"][0]  # baseline time ÷ plain time, inverted
    checks = [
        ("kit baseline throughput ÷ plain", 1 / plain, ">= 0.98", 1 / plain >= 0.98),
        ("masked prune time ÷ baseline", ratios["prune"][0], "<= 1.03", ratios["prune"][0] <= 1.03),
        ("stego (bits=16) time ÷ baseline", ratios["stego"][0], "<= 0.70", ratios["stego"][0] <= 0.70),
        ("stego bits=8 time ÷ baseline", ratios["stego bits=8"][0], "<= 1.05", ratios["stego bits=8"][0] <= 1.05),
    ]
    for label in ("prune structured=true", "lowrank conv=true"):
        time_ratio, flop_ratio = ratios[label]
        checks.append((f"{label} time ÷ FLOP ratio", time_ratio / flop_ratio, "<= 1.30",
                       time_ratio <= 1.3 * flop_ratio))
    print(f"  targets ({model_name}):")
    for name, value, target, met in checks:
        print(f"    {name:40s} {value:6.2f}  target {target}  {'met' if met else 'MISSED'}")
    return all(met for *_, met in checks)


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (Linux), else the platform's word."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def matmul_rate(dtype: torch.dtype, size: int = 1024, repeats: int = 10) -> float:
    """Multiply-adds per second of one size × size matmul in ``dtype`` on the CPU (best of
    ``repeats``, after two untimed ones)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return size ** 3 / best


def describe_host(device: torch.device) -> str:
    if device.type == "cuda":
        return f"device: {torch.cuda.get_device_name(device)}"
    # "Native" is not "faster": AVX512-BF16 alone (no AMX) multiplies bfloat16 at no more than
    # float32's rate on some CPUs, and the stego arm follows this ratio, so it is measured here.
    bf16_rate = matmul_rate(torch.bfloat16) / matmul_rate(torch.float32)
    units = cpu_bfloat16_units()
    return (f"device: {cpu_model()}, {torch.get_num_threads()} threads, torch capability "
            f"{torch.backends.cpu.get_cpu_capability()}; native bfloat16 units: "
            f"{', '.join(units) if units else 'none — the stego arm is emulated here'}; "
            f"bfloat16 matmul rate ÷ float32 (1024², side by side): {bf16_rate:.2f}")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    print(describe_host(device))
    print(f"batch {args.batch_size}, Adam, {args.rounds} rounds × {args.steps} step(s) per arm")
    started = time.perf_counter()
    verdicts = []
    with tempfile.TemporaryDirectory() as scratch:
        monitor = energy.build_monitor(device, country="USA", output_dir=Path(scratch))
        print(f"meters: {', '.join(sorted({m.source for m in monitor.meters}))} "
              f"(energy ratios shown only for {', '.join(MEASURED_SOURCES)})")
        for spec in args.models.split(","):
            model_name, _, size = spec.partition(":")
            arms = benchmark_model(model_name, int(size or 32), args, device, monitor)
            verdicts.append(print_targets(model_name, print_table(model_name, int(size or 32), arms)))
            del arms  # free this model's copies before the next model
        monitor.close()
    print(f"\nall targets met: {'yes' if all(verdicts) else 'no'}; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
