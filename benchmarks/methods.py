"""What each compression does to the cost of a training step, beside what it does to FLOPs.

For each model (random init, 10 classes) every arm is built and compressed once; then rounds
of timed training steps — joulebench's own ``train_epoch``: forward under the method's
autocast, cross-entropy, backward, Adam step, the method's ``after_optimizer_step`` — run arm
after arm, interleaved round by round so that a busy neighbour slows every arm alike. Each
arm first takes an untimed two-sample warm-up step (Adam allocates its state there). The
inputs are random images: step time does not depend on their content.

Arms: baseline · stego (bits=16: bfloat16 autocast) · stego bits=8 (float32 compute: the cost
of re-imposing the bits alone) · prune (masked) · prune structured=true · lowrank ·
lowrank conv=true.

Printed per arm, relative to baseline: FLOPs per sample and parameters (from the compression
report), and the step time as the median over rounds of the per-round ratio, in wall seconds
and in CPU seconds of this process (on a host shared with other jobs the wall clock also
measures the neighbours; CPU seconds measure the work done here).

    python benchmarks/methods.py [--models resnet18,vgg16] [--device cpu] [--size 32]
                                 [--batch-size 32] [--rounds 2] [--steps 1]

On a CPU without native bfloat16 (AVX2 only) PyTorch runs bfloat16 convolutions with its
reference kernels (aten::_slow_conv2d), so the stego arm alone takes most of the run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from joulebench.compress import (
    CompressionReport, Method, build_method, compress, parse_method_params,
)
from joulebench.models import build_model
from joulebench.train import autocast_context, train_epoch

ARMS: list[tuple[str, tuple[str, ...]]] = [
    ("baseline", ()),
    ("stego", ()),
    ("stego", ("bits=8",)),
    ("prune", ()),
    ("prune", ("structured=true",)),
    ("lowrank", ()),
    ("lowrank", ("conv=true",)),
]


@dataclass
class Arm:
    """One compressed model with its optimiser, and its timings round by round."""

    label: str
    model: torch.nn.Module
    method: Method
    report: CompressionReport
    optimizer: torch.optim.Optimizer
    compress_seconds: float
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,vgg16", help="comma-separated model names")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", type=int, default=32, help="input image size in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per arm, interleaved")
    parser.add_argument("--steps", type=int, default=1, help="training steps per arm per round")
    return parser.parse_args()


def build_arm(
    model_name: str, method_name: str, pairs: tuple[str, ...], example: torch.Tensor
) -> Arm:
    torch.manual_seed(0)
    model = build_model(model_name, 10).to(example.device)
    method = build_method(method_name, parse_method_params(method_name, pairs))
    started = time.perf_counter()
    model, report = compress(method, model, example)
    compress_seconds = time.perf_counter() - started
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    label = " ".join((method_name, *pairs))
    return Arm(label, model, method, report, optimizer, compress_seconds)


def timed_steps(
    arm: Arm, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> tuple[float, float]:
    """Wall and CPU seconds of ``train_epoch`` over ``batches`` (it reads the loss back at the
    end, so queued GPU work is finished when the clock stops)."""
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # no arm autocasts to float16
    autocast = autocast_context(arm.method, device)
    wall, cpu = time.perf_counter(), time.process_time()
    train_epoch(arm.model, batches, arm.optimizer, scaler, arm.method, autocast, device,
                None, arm.label, progress=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def benchmark_model(model_name: str, args: argparse.Namespace, device: torch.device) -> list[Arm]:
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch_size, 3, args.size, args.size, generator=generator).to(device),
         torch.randint(0, 10, (args.batch_size,), generator=generator).to(device))
        for _ in range(args.steps)
    ]
    arms = []
    for method_name, pairs in ARMS:
        arm = build_arm(model_name, method_name, pairs, batches[0][0][:2])
        print(f"  built {model_name} {arm.label}: compress {arm.compress_seconds:.1f} s", flush=True)
        arms.append(arm)
    warm_up = [(images[:2], labels[:2]) for images, labels in batches[:1]]
    for arm in arms:
        # Adam allocates its state in the first step; two samples suffice for that and keep
        # the warm-up cheap where a step is slow (bfloat16 convolutions on CPUs without it).
        timed_steps(arm, warm_up, device)
    for round_index in range(args.rounds):
        for arm in arms:
            wall, cpu = timed_steps(arm, batches, device)
            arm.wall.append(wall / args.steps)
            arm.cpu.append(cpu / args.steps)
        print(f"  round {round_index + 1}/{args.rounds} done", flush=True)
    return arms


def median_ratio(values: list[float], reference: list[float]) -> float:
    return statistics.median(v / r for v, r in zip(values, reference))


def print_table(model_name: str, arms: list[Arm]) -> None:
    baseline = arms[0]
    print(f"\n{model_name}: ratios to baseline (step time: median over rounds of per-round ratios)")
    print(f"  {'arm':26s} {'FLOPs':>7s} {'params':>7s} {'time wall':>9s} {'time CPU':>9s} "
          f"{'ms/step wall':>12s} {'spread':>14s}")
    for arm in arms:
        flops = arm.report.after.flops_per_sample / baseline.report.after.flops_per_sample
        params = arm.report.after.parameters / baseline.report.after.parameters
        spread = f"{min(arm.wall) * 1e3:.0f}–{max(arm.wall) * 1e3:.0f}"
        wall = median_ratio(arm.wall, baseline.wall)
        cpu = median_ratio(arm.cpu, baseline.cpu)
        milliseconds = statistics.median(arm.wall) * 1e3
        print(f"  {arm.label:26s} {flops:7.3f} {params:7.3f} {wall:9.2f} {cpu:9.2f} "
              f"{milliseconds:12.0f} {spread:>14s}")


def describe_host(device: torch.device) -> str:
    if device.type == "cuda":
        return f"device: {torch.cuda.get_device_name(device)}"
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native_bf16 = "avx512_bf16" in cpuinfo or "amx_bf16" in cpuinfo
    return (f"device: CPU, {torch.get_num_threads()} threads, torch capability "
            f"{torch.backends.cpu.get_cpu_capability()}, native bfloat16 (AVX512-BF16/AMX): "
            f"{'yes' if native_bf16 else 'no'}")


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    print(describe_host(device))
    print(f"{args.size} px, batch {args.batch_size}, Adam, "
          f"{args.rounds} rounds × {args.steps} step(s) per arm")
    started = time.perf_counter()
    for model_name in args.models.split(","):
        arms = benchmark_model(model_name, args, device)
        print_table(model_name, arms)
        del arms  # free this model's seven copies before the next model
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
