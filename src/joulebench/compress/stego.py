"""stego: steganographic capacity reduction — overwrite the low-order bits of every float32 weight.

The ``bits`` lowest of float32's 23 mantissa bits are overwritten with zeros (``fill=zero``,
the compression) or with seeded random bits (``fill=random``, the hidden-payload experiment of
the group's earlier papers), on the integer bit pattern (``tensor.view(torch.int32)``); inf and
nan keep every bit. Zeroing bits rounds toward zero, unlike the round-to-nearest of
``.to(torch.bfloat16)``.

With ``bits >= 16`` what is left (sign, 8 exponent bits, at most 7 mantissa bits) is exactly a
bfloat16, so training autocasts to bfloat16; ``dtype=float16`` autocasts to float16 instead,
on CUDA only (the training loop adds gradient scaling). Below 16 bits the kept bits fit no
16-bit format: compute stays float32 and the run measures capacity only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from joulebench.compress.base import Method, ParamSpec
from joulebench.errors import ConfigError

MAX_BITS = 23  # float32's mantissa; overwriting more would reach the exponent
BFLOAT16_BITS = 16  # float32 keeps 16 more mantissa bits than bfloat16
FILLS = ("zero", "random")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def all_finite(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each tensor is free of inf and nan, read back in one transfer (one GPU sync).

    Built on the extremes (``aminmax`` propagates nan), one pass each: ``torch.isfinite``
    makes several passes and is ~15× slower on a CPU.
    """
    if not tensors:
        return []
    extremes = torch.stack([torch.stack(torch.aminmax(t)) for t in tensors])
    return torch.isfinite(extremes).all(dim=1).tolist()


def overwrite_low_bits_(
    tensor: torch.Tensor, bits: int, payload: torch.Tensor | None = None, finite: bool | None = None
) -> torch.Tensor:
    """In place: clear the ``bits`` low-order bits of every finite value of a float32 tensor,
    then set them to ``payload`` (int32 values below ``2**bits``) if one is given.

    inf and nan are left bit for bit: clearing a nan's low bits could turn it into inf.
    ``finite`` says whether the tensor holds only finite values, if the caller already knows.
    """
    pattern = tensor.view(torch.int32)
    keep_high = ~((1 << bits) - 1)
    if finite is None:
        finite = all_finite([tensor])[0]
    if finite:
        pattern.bitwise_and_(keep_high)  # the common case: one in-place pass
        if payload is not None:
            pattern.bitwise_or_(payload)
        return tensor
    overwritten = pattern & keep_high
    if payload is not None:
        overwritten |= payload
    pattern.copy_(torch.where(torch.isfinite(tensor), overwritten, pattern))
    return tensor


def float32_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every floating-point parameter, by name; ConfigError if one is not float32."""
    weights = {name: p for name, p in model.named_parameters() if p.is_floating_point()}
    for name, weight in weights.items():
        if weight.dtype != torch.float32:
            raise ConfigError(
                f"stego overwrites float32 bits but {name} is {weight.dtype}; "
                "load the model in float32 (the default) before compressing"
            )
    return weights


def random_payloads(model: nn.Module, bits: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random low-order bits for every float32 weight, drawn in parameter order on the
    CPU so that a seed gives the same payload on every device."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randint(
            0, 1 << bits, weight.shape, generator=generator, dtype=torch.int32
        ).to(weight.device)
        for name, weight in float32_weights(model).items()
    }


def reimpose_(model: nn.Module, bits: int, payloads: dict[str, torch.Tensor]) -> None:
    """Overwrite the low bits of every float32 weight again: zeros, or its payload if it has one."""
    weights = float32_weights(model)
    with torch.no_grad():
        finite = all_finite(list(weights.values()))
        for (name, weight), weight_finite in zip(weights.items(), finite):
            overwrite_low_bits_(weight, bits, payloads.get(name), weight_finite)


def overwrite_model_(model: nn.Module, bits: int, fill: str, seed: int) -> dict[str, torch.Tensor]:
    """Overwrite the low bits of ``model``'s weights in place; return the payloads (empty for
    ``fill=zero``) so that training can re-impose the same bits."""
    payloads = random_payloads(model, bits, seed) if fill == "random" else {}
    reimpose_(model, bits, payloads)
    return payloads


class Stego(Method):
    """Overwrite the ``bits`` low-order bits of every float32 weight and keep them overwritten."""

    name = "stego"
    params = {
        "bits": ParamSpec(
            16, int, f"an integer 0–{MAX_BITS} (low-order bits overwritten; default 16)",
            lambda bits: 0 <= bits <= MAX_BITS,
        ),
        "fill": ParamSpec(
            "zero", str.lower, "zero (the compression, default) or random (a seeded payload)",
            lambda fill: fill in FILLS,
        ),
        "seed": ParamSpec(
            0, int, "an integer ≥ 0 seeding fill=random (default 0)", lambda seed: seed >= 0
        ),
        "dtype": ParamSpec(
            "bfloat16", str.lower,
            "bfloat16 (default) or float16 (CUDA only) for the compute when bits ≥ 16",
            lambda dtype: dtype in DTYPES,
        ),
    }

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        if self.values["dtype"] == "float16" and self.values["bits"] < BFLOAT16_BITS:
            raise ConfigError(
                f"stego dtype=float16 needs bits ≥ {BFLOAT16_BITS} (with bits="
                f"{self.values['bits']} the kept bits fit no 16-bit format and compute is "
                "float32); raise bits or drop dtype"
            )
        self._payloads: dict[str, torch.Tensor] = {}

    def apply(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        self._payloads = overwrite_model_(
            model, self.values["bits"], self.values["fill"], self.values["seed"]
        )
        return model

    def autocast_dtype(self, device_type: str) -> torch.dtype | None:
        if self.values["bits"] < BFLOAT16_BITS:
            return None
        if self.values["dtype"] == "float16" and device_type != "cuda":
            # Refused rather than silently swapped: a float16 run must be float16 on every host.
            raise ConfigError(
                f"stego dtype=float16 runs on CUDA only (device is {device_type}); "
                "use dtype=bfloat16 (the default) or --device cuda"
            )
        return DTYPES[self.values["dtype"]]

    def after_optimizer_step(self, model: nn.Module) -> None:
        reimpose_(model, self.values["bits"], self._payloads)

    def facts(self, model: nn.Module) -> dict[str, Any]:
        bits = self.values["bits"]
        sizes = [weight.numel() for weight in float32_weights(model).values()]
        float_weights = sum(sizes)
        return {
            "float_weights": float_weights,
            "freed_capacity_mb": bits * float_weights / 8 / 1e6,
            # Bytes if each tensor were stored bit-packed at the 32 - bits kept bits.
            "weight_bytes_at_kept_precision": sum(math.ceil((32 - bits) * n / 8) for n in sizes),
            "compute": self._compute_description(),
        }

    def _compute_description(self) -> str:
        if self.values["bits"] < BFLOAT16_BITS:
            return (
                f"float32: the {32 - self.values['bits']} kept bits fit no 16-bit format, "
                "so this run measures capacity only"
            )
        if self.values["dtype"] == "float16":
            return "float16 autocast with gradient scaling (CUDA)"
        return "bfloat16 autocast"
