"""stego: steganographic capacity reduction — overwrite the low-order bits of every float32 weight.

The ``bits`` lowest of float32's 23 mantissa bits are overwritten with zeros (``fill=zero``,
the compression) or with seeded random bits (``fill=random``, the hidden-payload experiment of
the group's earlier papers), on the integer bit pattern (``tensor.view(torch.int32)``).
Zeroing bits rounds toward zero, unlike the round-to-nearest of ``.to(torch.bfloat16)``.
The definition, held through training: after every optimiser step, each weight is the float32
update of the previous weight, its low bits overwritten again.

How each case runs (the method's arithmetic, not the kit's overhead):

- ``bits >= 16``, ``fill=zero``, ``dtype=bfloat16`` (the default): a float32 whose 16 low bits
  are zero *is* a bfloat16, so ``apply`` stores the weights as bfloat16 tensors (half the
  bytes) and forward and backward run on them directly — no autocast, no per-forward casts.
  Normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm) keep float32
  parameters, truncated like the rest, and float32 running statistics: PyTorch's
  normalisation kernels take bfloat16 activations with float32 parameters on CPU and CUDA,
  and a normalisation layer's handful of values costs nothing. Each optimiser step is
  computed in float32 on a float32 working copy that equals the stored weights exactly
  (float32 optimiser state), truncated in one pass, then stored back as bfloat16 — exactly
  the definition above (``tests/test_compress_stego.py`` checks it bit for bit).
- ``fill=random`` or ``bits < 16``: the kept bits fit no 16-bit format, so weights and compute
  stay float32; the weights are views of one flat buffer and the bits are re-imposed after
  every step in one fused pass over it (no per-tensor loop, no host sync).
- ``dtype=float16`` (CUDA only): float32 weights, float16 autocast with gradient scaling.

The one-time overwrite at compression leaves inf and nan bit for bit (clearing a nan's low
bits could turn it into inf). The per-step pass does not look for them: a non-finite weight
means training has diverged, and the run's loss says so.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from joulebench.compress.base import (
    Method, OptimizerFactory, OptimizerWithPasses, flat_views, trainable,
)
from joulebench.errors import ConfigError
from joulebench.method_params import BFLOAT16_BITS, PARAMS, STEGO_DTYPES, device_problem

DTYPES = {name: getattr(torch, name) for name in STEGO_DTYPES}
# Layers whose parameters stay float32 when the rest is stored in bfloat16 (see the docstring).
# Public types, not the private _NormBase and _InstanceNorm they share (the same set of classes).
NORMALISATION_LAYERS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d, nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d, nn.LayerNorm, nn.GroupNorm,
)


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
    """Overwrite the low bits of every float32 weight: zeros, or its payload if it has one."""
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


def keep_high_mask(bits: int) -> int:
    """The int32 mask that keeps the 32 − ``bits`` high bits of a float32 pattern."""
    return ~((1 << bits) - 1)


def store_in_bfloat16_(model: nn.Module) -> None:
    """Replace every parameter outside normalisation layers by its bfloat16 copy — exact when
    its 16 low bits are zero, which the caller has made so."""
    for module in model.modules():
        if isinstance(module, NORMALISATION_LAYERS):
            continue
        for name, weight in list(module.named_parameters(recurse=False)):
            stored = nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=weight.requires_grad)
            setattr(module, name, stored)


class BitOverwritingOptimizer(OptimizerWithPasses):
    """float32 weights as views of one flat buffer; after every step one pass clears their
    ``bits`` low bits (and one more ORs the payload in, for ``fill=random``)."""

    def __init__(
        self, model: nn.Module, build: OptimizerFactory, bits: int, payloads: dict[str, torch.Tensor]
    ) -> None:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.flat, views = flat_views([p for _, p in named], torch.float32)
        self.payload = None
        if payloads:
            self.payload = torch.zeros_like(self.flat, dtype=torch.int32)
            _, payload_views = flat_views([p for _, p in named], torch.int32, self.payload)
            for (name, _), view in zip(named, payload_views):
                view.copy_(payloads[name])
        for (_, weight), view in zip(named, views):
            weight.data = view.copy_(weight.detach())  # the model reads, the optimiser writes, the buffer
        self.keep = keep_high_mask(bits)
        super().__init__(build([p for _, p in named]))

    def after_step(self) -> None:
        pattern = self.flat.view(torch.int32)
        pattern.bitwise_and_(self.keep)
        if self.payload is not None:
            pattern.bitwise_or_(self.payload)


class TruncatingBfloat16Optimizer(OptimizerWithPasses):
    """Steps bfloat16-stored weights in float32 and stores the result truncated (its ``bits``
    ≥ 16 low bits cleared).

    The inner (float32) optimiser owns a float32 working copy of every bfloat16 weight, and
    the float32 normalisation parameters themselves; all of them are views of one flat
    buffer. A step: bfloat16 gradients are copied into the working copy's float32 gradients,
    the inner optimiser updates the working copy, one pass clears the low bits of the whole
    buffer (round toward zero), and the truncated values — now exact bfloat16s — are copied
    into the stored weights. So the working copy always equals the stored weights.
    """

    def __init__(self, model: nn.Module, build: OptimizerFactory, bits: int) -> None:
        self.keep = keep_high_mask(bits)
        self.weights = trainable(model)
        self.flat, working = flat_views(self.weights, torch.float32)
        _, grads = flat_views(self.weights, torch.float32)
        # (stored bfloat16 weight, its float32 working copy, that copy's gradient buffer)
        self.copies: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        stepped = []
        for weight, copy, grad in zip(self.weights, working, grads):
            if weight.dtype == torch.bfloat16:
                copy.copy_(weight.detach())
                self.copies.append((weight, copy, grad))
                stepped.append(copy)
            else:  # a float32 (normalisation) parameter: moved into the buffer, stepped in place
                weight.data = copy.copy_(weight.detach())
                stepped.append(weight)
        super().__init__(build(stepped))

    def zero_grad(self, set_to_none: bool = True) -> None:
        # The model's gradients; the working copy's are overwritten by every step.
        for weight in self.weights:
            weight.grad = None

    def before_step(self) -> None:
        copied = []
        for weight, copy, grad in self.copies:
            copy.grad = None if weight.grad is None else grad  # no gradient: the optimiser skips it
            if weight.grad is not None:
                copied.append((grad, weight.grad))
        if copied:
            torch._foreach_copy_([g for g, _ in copied], [source for _, source in copied])

    def after_step(self) -> None:
        self.flat.view(torch.int32).bitwise_and_(self.keep)
        torch._foreach_copy_([w for w, _, _ in self.copies], [c for _, c, _ in self.copies])


class Stego(Method):
    """Overwrite the ``bits`` low-order bits of every float32 weight and keep them overwritten."""

    name = "stego"
    params = PARAMS["stego"]

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._payloads: dict[str, torch.Tensor] = {}

    def stores_bfloat16(self) -> bool:
        """Whether the overwritten weights are exactly bfloat16s, stored and computed as such."""
        v = self.values
        return v["bits"] >= BFLOAT16_BITS and v["fill"] == "zero" and v["dtype"] == "bfloat16"

    def apply(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        self._payloads = overwrite_model_(
            model, self.values["bits"], self.values["fill"], self.values["seed"]
        )
        if self.stores_bfloat16():
            store_in_bfloat16_(model)
        return model

    def stored_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.stores_bfloat16() else None

    def autocast_dtype(self, device_type: str) -> torch.dtype | None:
        if self.values["dtype"] != "float16":
            return None
        problem = device_problem(self.name, self.values, device_type)  # make_config refused it already
        if problem:
            raise ConfigError(problem)
        return torch.float16

    def optimizer(self, model: nn.Module, build: OptimizerFactory) -> OptimizerWithPasses:
        if self.stores_bfloat16():
            return TruncatingBfloat16Optimizer(model, build, self.values["bits"])
        if self.values["bits"] == 0:
            return super().optimizer(model, build)  # nothing overwritten, nothing to re-impose
        return BitOverwritingOptimizer(model, build, self.values["bits"], self._payloads)

    def facts(self, model: nn.Module) -> dict[str, Any]:
        bits = self.values["bits"]
        sizes = [weight.numel() for weight in model.parameters() if weight.is_floating_point()]
        float_weights = sum(sizes)
        return {
            "float_weights": float_weights,
            "freed_capacity_mb": bits * float_weights / 8 / 1e6,
            # Bytes if each tensor were stored bit-packed at the 32 - bits kept bits.
            "weight_bytes_at_kept_precision": sum(math.ceil((32 - bits) * n / 8) for n in sizes),
            "compute": self._compute_description(),
        }

    def _compute_description(self) -> str:
        if self.stores_bfloat16():
            return ("bfloat16 weights (normalisation layers float32), float32 optimiser step "
                    "truncated to bfloat16")
        if self.values["dtype"] == "float16":
            return "float16 autocast with gradient scaling (CUDA), float32 weights"
        if self.values["fill"] == "random":
            return "float32: the low bits carry a payload, so the weights fit no 16-bit format"
        return (
            f"float32: the {32 - self.values['bits']} kept bits fit no 16-bit format, so this run "
            "measures capacity only"
        )
