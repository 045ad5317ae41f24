"""What measuring energy costs: training throughput with every meter on against a plain loop.

Three arms train resnet18 (random init, 10 classes) on the embedded digits at 32 px, batch 64,
one epoch (or ``--batches`` of it) at a time, interleaved round by round so that a busy
neighbour slows every arm alike:

  plain    a bare PyTorch loop: forward, cross-entropy, backward, step;
  loop     joulebench's ``train_steps``, no monitor (NCHW and the same optimiser as plain,
           so that this arm differs from plain by the kit's loop alone);
  metered  ``train_steps`` inside the windows the training loop opens, all meters on.

It prints samples/s per arm (median and spread over rounds) and the ratio metered / plain
(target >= 0.99), both per wall second and per CPU second of the whole process (all threads,
the meters' included): on a host shared with other jobs the wall clock measures mostly the
neighbours, while CPU seconds measure the work this process did. Then the median cost of one
window open+close, and the CPU share of the
monitor's background threads (power sampler + CodeCarbon's timer) while the main thread
sleeps (target <= 1 % of a core). Where no GPU exists, a fake GPU power source is polled at
``--sample-hz`` so that the sampler thread runs at its GPU rate; the report says so.

    python benchmarks/energy_overhead.py [--rounds 7] [--batches 12]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from joulebench.data import load_digits_splits, make_loader
from joulebench.energy import EnergyMonitor, Meter, build_monitor
from joulebench.energy.sampler import PowerSampler
from joulebench.compute import ComputeSettings
from joulebench.train import LossTally, train_steps

CPU = torch.device("cpu")
# The kit's float32 path on CPU, NCHW like the plain arm: this benchmark measures the meters.
LOOP_SETTINGS = ComputeSettings(
    device=CPU, channels_last=False, deterministic=False, tf32=False, fused_optimizer=False,
    stored_dtype=None, autocast_dtype=None, emulated=None,
)


class FakeGpuPower(Meter):
    """Stands in for NVML's power poll on a host without a GPU: constant watts, no joules."""

    source = "fake_gpu_power"

    def __init__(self, poll_period_s: float) -> None:
        self.poll_period_s = poll_period_s

    def devices(self) -> list[str]:
        return []

    def read(self) -> dict[str, float]:
        return {}

    def poll(self) -> dict[str, float]:
        return {"fake_gpu0": 250.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="epochs per arm, interleaved")
    parser.add_argument("--batches", type=int, default=12, help="batches per epoch (0: all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sample-hz", type=float, default=10.0)
    parser.add_argument("--windows", type=int, default=200, help="windows timed for the edge cost")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="for the thread CPU share")
    return parser.parse_args()


def plain_epoch(model, loader, optimizer, batches: int | None) -> int:
    model.train()
    samples = 0
    for images, labels in islice(loader, batches):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += len(labels)
    return samples


def loop_epoch(model, loader, optimizer, batches: int | None) -> int:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_steps(model, islice(loader, batches), optimizer, scaler, LOOP_SETTINGS, LossTally(CPU))


def build_bench_monitor(output_dir: Path, sample_hz: float) -> tuple[EnergyMonitor, bool]:
    """All meters this host has; plus a fake GPU power source where there is no GPU."""
    device = torch.device("cuda") if torch.cuda.is_available() else CPU
    monitor = build_monitor(device, "USA", output_dir, sample_hz=sample_hz)
    fake = device.type != "cuda"
    if fake:
        # Here the sampler would only poll CodeCarbon (1 Hz): restart it with a fake GPU
        # source beside the meters, so that its thread wakes at the GPU rate as on a GPU host.
        monitor.sampler.stop()
        monitor.sampler = PowerSampler([*monitor.meters, FakeGpuPower(1.0 / sample_hz)])
        monitor.sampler.start()
    return monitor, fake


def main() -> None:
    args = parse_args()
    data = load_digits_splits(32, seed=0)
    loader = make_loader(data.train, args.batch_size, True, 0, CPU)
    torch.manual_seed(0)
    initial = torchvision.models.resnet18(num_classes=10)
    arms = {name: copy.deepcopy(initial) for name in ("plain", "loop", "metered")}
    with tempfile.TemporaryDirectory() as scratch:
        monitor, fake = build_bench_monitor(Path(scratch), args.sample_hz)
        print(f"meters: {[m.source for m in monitor.meters]}; unavailable: {monitor.unavailable}")
        if fake:
            print(f"no GPU here: the sampler also polls a FAKE GPU power source at "
                  f"{args.sample_hz:g} Hz")
        wall, cpu, samples = run_rounds(arms, loader, monitor, args.rounds, args.batches or None)
        window_us = time_windows(monitor, args.windows)
        background_share, sampler_share = background_cpu_share(monitor, args.idle_seconds)
        monitor.close()
    print(f"\nresnet18, digits 32 px, batch {args.batch_size}, {args.batches or 'all'} batches "
          f"per epoch, {args.rounds} interleaved rounds, torch threads {torch.get_num_threads()}")
    report_throughput("per wall second", wall)
    report_throughput("per CPU second of the process", cpu)
    report_costs(window_us, background_share, sampler_share, monitor)
    report_implied_ratio(samples / statistics.median(wall["metered"]), window_us, background_share)


def run_rounds(arms, loader, monitor, rounds: int, batches: int | None):
    """One epoch per arm per round, the order rotating; samples per wall and per CPU second."""
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in arms.items()}
    wall: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    plain_epoch(arms["plain"], loader, optimizers["plain"], 2)  # warm-up: allocator, kernels
    with monitor.window("total"):
        for round_index in range(rounds):
            for name in list(arms)[round_index % 3:] + list(arms)[: round_index % 3]:
                start, start_cpu = time.perf_counter(), time.process_time()
                if name == "plain":
                    samples = plain_epoch(arms[name], loader, optimizers[name], batches)
                elif name == "loop":
                    samples = loop_epoch(arms[name], loader, optimizers[name], batches)
                else:
                    with monitor.window("train", round_index + 1):
                        samples = loop_epoch(arms[name], loader, optimizers[name], batches)
                    with monitor.window("eval", round_index + 1):
                        pass  # the eval window's edges: its work is not what is compared
                wall[name].append(samples / (time.perf_counter() - start))
                cpu[name].append(samples / (time.process_time() - start_cpu))
    return wall, cpu, samples


def time_windows(monitor: EnergyMonitor, count: int) -> list[float]:
    """Microseconds spent in one window's opening plus its closing. The body sleeps 60 ms
    because a run's edges are far apart: CodeCarbon skips measuring within 50 ms of its
    last measurement, so back-to-back edges would time only that shortcut."""
    costs = []
    for index in range(count):
        before_open = time.perf_counter()
        with monitor.window(f"bench-{index}"):
            opened = time.perf_counter()
            time.sleep(0.06)
            before_close = time.perf_counter()
        closed = time.perf_counter()
        costs.append(((opened - before_open) + (closed - before_close)) * 1e6)
    return costs


def background_cpu_share(monitor: EnergyMonitor, seconds: float) -> tuple[float, float]:
    """CPU seconds per wall second of every thread but the sleeping main one; and of the
    power sampler thread alone (its own thread CPU clock)."""
    sampler_before = monitor.sampler.cpu_seconds
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - wall_before
    sampler_cpu = monitor.sampler.cpu_seconds - sampler_before
    return (time.process_time() - cpu_before) / wall, sampler_cpu / wall


def report_throughput(unit: str, throughput: dict[str, list[float]]) -> None:
    print(f"samples {unit}:")
    for name, values in throughput.items():
        print(f"  {name:8s} median {statistics.median(values):7.1f}  "
              f"(min {min(values):.1f}, max {max(values):.1f})")
    ratio = statistics.median(throughput["metered"]) / statistics.median(throughput["plain"])
    loop_ratio = statistics.median(throughput["metered"]) / statistics.median(throughput["loop"])
    paired = [m / p for m, p in zip(throughput["metered"], throughput["plain"])]
    print(f"  ratio metered / plain = {ratio:.4f} (target >= 0.99); metered / loop = "
          f"{loop_ratio:.4f} (the meters alone); paired per round: median "
          f"{statistics.median(paired):.4f}, min {min(paired):.4f}, max {max(paired):.4f}")


def report_implied_ratio(epoch_s: float, window_us: list[float], background_share: float) -> None:
    """The ratio the measured parts allow, for hosts too noisy to resolve 1 % directly: each
    metered epoch pays two windows (train, eval), and the background threads take their CPU
    share from the cores training uses."""
    edges_share = 2 * statistics.median(window_us) / 1e6 / epoch_s
    threads_share = background_share / torch.get_num_threads()
    print(f"implied by the parts: 1 - {edges_share:.5f} (window edges per {epoch_s:.1f} s epoch) "
          f"- {threads_share:.5f} (background threads) = {1 - edges_share - threads_share:.4f}")


def report_costs(window_us, background_share, sampler_share, monitor) -> None:
    print(f"window open+close: median {statistics.median(window_us):.0f} us, "
          f"p90 {statistics.quantiles(window_us, n=10)[-1]:.0f} us over {len(window_us)} windows")
    print(f"background threads CPU while idle: {background_share * 100:.2f} % of a core "
          f"(power sampler alone: {sampler_share * 100:.3f} %; target <= 1 %)")
    print(f"emissions over the benchmark: {monitor.emissions_kg} kg CO2-eq")


if __name__ == "__main__":
    main()
