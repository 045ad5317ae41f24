"""Known GPUs: peak dense FLOP/s per dtype and board power; ``benchmarks/gpu_check.py`` prints
the datasheet's best FLOP/J beside the measured one (no run metric: a peak says nothing of a run).

Figures are NVIDIA's datasheet numbers *without* structured sparsity (datasheets print the
sparse figure with an asterisk; the dense one is half of it). Board power is the maximum
thermal design power of that form factor. ``None`` means the dtype has no tensor-core path
on that GPU (T4 and V100 have neither TF32 nor BF16).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from joulebench.errors import ConfigError

DTYPES = ("fp32", "tf32", "bf16", "fp16")
TERA = 1e12


@dataclass(frozen=True)
class GpuSpec:
    """Peak dense throughput (TFLOP/s) per dtype and board power (W) of one GPU model."""

    model: str
    fp32: float
    tf32: float | None
    bf16: float | None
    fp16: float
    board_watts: float


# (pattern on NVML's device name, spec); the first match wins, so specific names come first.
KNOWN_GPUS: list[tuple[re.Pattern[str], GpuSpec]] = [
    # H200 datasheet (2024): SXM 700 W, NVL 600 W; TF32 989 / 835, BF16 1979 / 1671 sparse.
    (re.compile(r"H200 NVL"), GpuSpec("H200 NVL", 60.0, 417.5, 835.5, 835.5, 600)),
    (re.compile(r"H200"), GpuSpec("H200 SXM", 67.0, 494.5, 989.5, 989.5, 700)),
    # H100 datasheet (2023): SXM 700 W, PCIe 350 W, NVL 400 W; TF32 989 / 756 / 835 sparse.
    (re.compile(r"H100 NVL"), GpuSpec("H100 NVL", 60.0, 417.5, 835.5, 835.5, 400)),
    (re.compile(r"H100.*PCIe", re.I), GpuSpec("H100 PCIe", 51.0, 378.0, 756.0, 756.0, 350)),
    (re.compile(r"H100"), GpuSpec("H100 SXM", 67.0, 494.5, 989.5, 989.5, 700)),
    # A100 datasheet (2021): TF32 156, BF16/FP16 312 dense; SXM 400 W, PCIe 80GB 300 W,
    # PCIe 40GB 250 W.
    (re.compile(r"A100.*SXM"), GpuSpec("A100 SXM", 19.5, 156.0, 312.0, 312.0, 400)),
    (re.compile(r"A100.*80GB.*PCIe|A100-PCIE-80GB", re.I),
     GpuSpec("A100 PCIe 80GB", 19.5, 156.0, 312.0, 312.0, 300)),
    (re.compile(r"A100.*PCIe", re.I), GpuSpec("A100 PCIe 40GB", 19.5, 156.0, 312.0, 312.0, 250)),
    # L40S datasheet (2023): FP32 91.6, TF32 183, BF16/FP16 362 dense, 350 W.
    (re.compile(r"L40S"), GpuSpec("L40S", 91.6, 183.0, 362.0, 362.0, 350)),
    # L4 datasheet (2023): FP32 30.3, TF32 60, BF16/FP16 121 dense, 72 W.
    (re.compile(r"\bL4\b"), GpuSpec("L4", 30.3, 60.0, 121.0, 121.0, 72)),
    # A10 datasheet (2021): FP32 31.2, TF32 62.5, BF16/FP16 125 dense, 150 W.
    (re.compile(r"\bA10\b"), GpuSpec("A10", 31.2, 62.5, 125.0, 125.0, 150)),
    # T4 datasheet (2019): FP32 8.1, FP16 tensor 65, 70 W.
    (re.compile(r"\bT4\b"), GpuSpec("T4", 8.1, None, None, 65.0, 70)),
    # V100 datasheet (2020): SXM2 15.7 / 125 at 300 W, PCIe 14 / 112 at 250 W,
    # V100S PCIe 16.4 / 130 at 250 W (FP32 / FP16 tensor).
    (re.compile(r"V100S"), GpuSpec("V100S PCIe", 16.4, None, None, 130.0, 250)),
    (re.compile(r"V100.*SXM"), GpuSpec("V100 SXM2", 15.7, None, None, 125.0, 300)),
    (re.compile(r"V100"), GpuSpec("V100 PCIe", 14.0, None, None, 112.0, 250)),
]


def gpu_spec(gpu_name: str) -> GpuSpec | None:
    """The spec of the GPU NVML calls ``gpu_name`` (e.g. "NVIDIA H100 80GB HBM3"), if known."""
    return next((spec for pattern, spec in KNOWN_GPUS if pattern.search(gpu_name)), None)


def peak_flops_per_joule(gpu_name: str, dtype: str) -> float | None:
    """Peak dense FLOP/s over board watts: the best FLOP/J the datasheet allows.

    None for an unknown GPU, or a dtype without a fast path on it.
    """
    if dtype not in DTYPES:
        raise ConfigError(
            f"unknown dtype {dtype!r} for peak FLOP/J; accepted: {', '.join(DTYPES)}; "
            "fix: name the precision the run computes in"
        )
    spec = gpu_spec(gpu_name)
    tflops = getattr(spec, dtype) if spec else None
    return tflops * TERA / spec.board_watts if tflops is not None else None
