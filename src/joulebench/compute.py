"""The precision and hardware policy: the one training path every arm computes on, per device.

Every arm, the baseline included, gets the best-practice path of its device
(:class:`ComputeSettings`): channels_last for models with 2-D convolutions, cuDNN autotuning
unless ``--deterministic``, an explicit float32 precision policy (TF32 on CUDA unless
``--tf32 false``), fused optimisers. A method changes only what its arithmetic changes: the
stored dtype of the weights or an autocast — and where the hardware has no native units for that
precision, ``emulated`` says so, since the energy then says nothing about the method.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from joulebench.compress import Method
from joulebench.config import RunConfig

FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")  # torch.optim's fused Adam and SGD run on these


@dataclass(frozen=True)
class ComputeSettings:
    """The training path a run computes on — the same for every arm on a device, except what
    the method's arithmetic changes (stored dtype, autocast). Recorded as ``compute.*``."""

    device: torch.device
    channels_last: bool  # the model has 2-D convolutions
    deterministic: bool
    tf32: bool  # float32 matmuls and convolutions in TF32 (CUDA; CPUs compute float32 as IEEE)
    fused_optimizer: bool
    stored_dtype: torch.dtype | None  # the method stores the weights in it (stego: bfloat16)
    autocast_dtype: torch.dtype | None  # the method autocasts to it (stego dtype=float16)
    emulated: str | None  # why the hardware emulates the method's precision, if it does

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.stored_dtype or self.autocast_dtype or torch.float32

    def params(self) -> dict[str, str]:
        """What the run records about its training path."""
        cuda = self.device.type == "cuda"
        return {
            "compute.memory_format": "channels_last" if self.channels_last else "contiguous",
            "compute.cudnn": ("deterministic" if self.deterministic else "benchmark") if cuda else "n/a (cpu)",
            "compute.float32_precision": "tf32" if cuda and self.tf32 else "ieee",
            "compute.optimizer": "fused" if self.fused_optimizer else "foreach",
            "compute.weights_dtype": _dtype_name(self.stored_dtype or torch.float32),
            "compute.autocast": _dtype_name(self.autocast_dtype) if self.autocast_dtype else "none",
            "compute.dtype": _dtype_name(self.compute_dtype),
            # Native bfloat16 is not always faster than float32 (AVX512-BF16 without AMX can be
            # slower), so runs compared across hosts say which units each had.
            "compute.bfloat16_units": "n/a (cuda)" if cuda else ", ".join(cpu_bfloat16_units()) or "none",
        }

    def apply_backends(self) -> None:
        """Set PyTorch's global kernel choices to these settings (before any work)."""
        torch.backends.cudnn.benchmark = not self.deterministic
        torch.backends.cudnn.deterministic = self.deterministic
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        precision = "tf32" if self.tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images as the model takes it: on the device, in the stored dtype and the
        memory format of the weights."""
        images = images.to(self.device, dtype=self.stored_dtype or images.dtype, non_blocking=True)
        return images.contiguous(memory_format=self.memory_format) if images.dim() == 4 else images

    def autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def compute_settings(config: RunConfig, model: nn.Module, method: Method) -> ComputeSettings:
    """The training path for ``config``'s device and this model and method (make_config has
    checked the rules between them: BatchNorm's batch size, a precision the device cannot run)."""
    device = torch.device(config.device)
    stored, autocast = method.stored_dtype(), method.autocast_dtype(device.type)
    return ComputeSettings(
        device=device,
        channels_last=any(isinstance(m, nn.Conv2d) for m in model.modules()),
        deterministic=config.deterministic,
        tf32=config.tf32,
        fused_optimizer=device.type in FUSED_OPTIMIZER_DEVICES,
        stored_dtype=stored,
        autocast_dtype=autocast,
        emulated=emulated_precision(stored or autocast, device),
    )


def cpu_bfloat16_units() -> tuple[str, ...]:
    """This CPU's units that multiply bfloat16 natively ("AVX512-BF16", "AMX"); PyTorch's probes."""
    probes = {"AVX512-BF16": torch.cpu._is_avx512_bf16_supported, "AMX": torch.cpu._is_amx_tile_supported}
    return tuple(name for name, present in probes.items() if present())


def native_bfloat16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX)."""
    return bool(cpu_bfloat16_units())


def emulated_precision(dtype: torch.dtype | None, device: torch.device) -> str | None:
    """Why ``device`` would emulate ``dtype`` (no native units: PyTorch falls back to reference
    kernels and the energy says nothing about the method), or None where it is native."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    name = _dtype_name(dtype)
    if device.type == "cpu":
        if dtype == torch.bfloat16 and not native_bfloat16_cpu():
            return ("cpu: no native bfloat16 (AVX512-BF16/AMX); PyTorch runs reference kernels "
                    "(about 26× slower on an AVX2 host)")
        return None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        needed = (8, 0) if dtype == torch.bfloat16 else (7, 0)
        if (major, minor) < needed:
            return (f"cuda: compute capability {major}.{minor} has no {name} tensor cores "
                    f"(needs {needed[0]}.{needed[1]})")
    return None
