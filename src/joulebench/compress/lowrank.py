"""lowrank: truncated-SVD factorisation of Linear (and, with ``conv=true``, Conv2d) layers.

A Linear layer W (out × in) becomes Linear(in → r) then Linear(r → out) from W ≈ U_r S_r V_rᵀ,
each factor carrying √S_r. A k×k Conv2d becomes a k×k conv with r filters then a 1×1 conv, from
the SVD of its kernel reshaped to out × (in·k·k). The rank is ``rank_ratio`` × min(rows, cols),
or, with ``energy``, the fewest singular values whose squares hold that share of the total.
A layer is left as it is when rank r would not reduce its parameters
(r·(rows + cols) ≥ rows·cols), when it is a classifier head (rank-r logits could tell at most
r + 1 classes apart), when it is grouped or all zero, or when it sits inside
nn.MultiheadAttention (which reads ``out_proj.weight`` directly and cannot run a replacement).

The SVD is exact (``torch.linalg.svd``) for matrices of up to ``EXACT_SVD_MAX_ELEMENTS``
entries; larger ones use the randomised ``torch.svd_lowrank`` (Halko et al.) with
``OVERSAMPLING`` extra columns and ``POWER_ITERATIONS``, seeded: on 2 CPU cores a full SVD of
VGG16's 4096 × 25088 layer takes about 2 minutes, the randomised rank-1024 one 20 s. With
``energy`` the rank comes from the whole spectrum, read from the Gram matrix's eigenvalues.
The exact SVD reaches the Eckart–Young minimum ‖W − W_r‖_F = √(Σ_{i>r} σ_i²); the randomised
one can only exceed it, by how much depends on how fast the spectrum decays (on Gaussian
matrices, the worst case of a flat spectrum, by about 3 % at rank_ratio 0.25). Every layer's
measured relative error ‖W − W_r‖_F / ‖W‖_F and the SVD used are reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from joulebench.compress.base import Method, classifier_heads, output_classes
from joulebench.method_params import PARAMS

EXACT_SVD_MAX_ELEMENTS = 1 << 20
OVERSAMPLING = 10
POWER_ITERATIONS = 2
RANDOMIZED_SVD_SEED = 0


@dataclass
class LayerFactorisation:
    """One factorised layer, as reported."""

    layer: str
    shape: list[int]
    rank: int
    svd: str
    relative_error: float


def truncated_svd(
    matrix: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """U_r (rows × r), S_r, V_r (cols × r) and which SVD computed them ("exact"/"randomized")."""
    if matrix.numel() <= EXACT_SVD_MAX_ELEMENTS:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank].mT, "exact"
    columns = min(rank + OVERSAMPLING, *matrix.shape)
    # svd_lowrank draws its random test matrix from the global generator: fork and seed it, so
    # that a layer always factorises the same way and the run's own random stream is untouched.
    with torch.random.fork_rng(devices=[matrix.device] if matrix.is_cuda else []):
        torch.manual_seed(RANDOMIZED_SVD_SEED)
        u, s, v = torch.svd_lowrank(matrix, q=columns, niter=POWER_ITERATIONS)
    return u[:, :rank], s[:rank], v[:, :rank], "randomized"


def energy_rank(matrix: torch.Tensor, energy: float) -> int:
    """The fewest singular values whose squares hold ``energy`` of the total.

    The squares are the eigenvalues of the smaller Gram matrix (W Wᵀ or Wᵀ W): their shares
    match the exact spectrum's to ~1e-7, and on VGG16's 4096 × 25088 layer they take 9 s on
    2 CPU cores where ``torch.linalg.svdvals`` takes 2 minutes.
    """
    gram = matrix @ matrix.mT if matrix.shape[0] <= matrix.shape[1] else matrix.mT @ matrix
    squares = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0).double()  # descending, ≥ 0
    cumulative = squares.cumsum(0) / squares.sum()
    return min(int(torch.searchsorted(cumulative, energy)) + 1, len(squares))


def low_rank_factors(
    matrix: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, str, float]:
    """``first`` (r × cols) and ``second`` (rows × r) with second @ first ≈ matrix, each carrying
    √S_r; the SVD used; and the measured relative Frobenius error of the product."""
    matrix = matrix.detach()
    u, s, v, method = truncated_svd(matrix, rank)
    root = s.sqrt()
    first, second = root[:, None] * v.mT, u * root
    error = torch.linalg.matrix_norm(matrix - second @ first) / torch.linalg.matrix_norm(matrix)
    return first, second, method, float(error)


def saves_parameters(rows: int, cols: int, rank: int) -> bool:
    return rank * (rows + cols) < rows * cols


def factorize_linear(layer: nn.Linear, rank: int) -> tuple[nn.Sequential, str, float]:
    """Linear(in → r) then Linear(r → out, with the original bias); the SVD used; the error."""
    first, second, method, error = low_rank_factors(layer.weight, rank)
    like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    down = nn.Linear(layer.in_features, rank, bias=False, **like)
    up = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, **like)
    with torch.no_grad():
        down.weight.copy_(first)
        up.weight.copy_(second)
        if layer.bias is not None:
            up.bias.copy_(layer.bias)
    return nn.Sequential(down, up), method, error


def factorize_conv(conv: nn.Conv2d, rank: int) -> tuple[nn.Sequential, str, float]:
    """A k×k conv with ``rank`` filters (same stride, padding, dilation) then a 1×1 conv."""
    first, second, method, error = low_rank_factors(conv.weight.flatten(1), rank)
    like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    spatial = nn.Conv2d(
        conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=False, padding_mode=conv.padding_mode, **like,
    )
    mix = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None, **like)
    with torch.no_grad():
        spatial.weight.copy_(first.reshape(spatial.weight.shape))
        mix.weight.copy_(second.reshape(mix.weight.shape))
        if conv.bias is not None:
            mix.bias.copy_(conv.bias)
    return nn.Sequential(spatial, mix), method, error


class LowRank(Method):
    """Replace Linear (and optionally Conv2d) layers by two thinner ones from a truncated SVD."""

    name = "lowrank"
    params = PARAMS["lowrank"]

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        self._factorised: list[LayerFactorisation] = []
        self._skipped: list[dict[str, str]] = []

    def apply(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        heads = classifier_heads(model, output_classes(model, example))
        in_attention = {
            layer
            for attention in model.modules() if isinstance(attention, nn.MultiheadAttention)
            for layer in attention.modules()
        }
        kinds = (nn.Linear, nn.Conv2d) if self.values["conv"] else (nn.Linear,)
        candidates = [(n, layer) for n, layer in model.named_modules() if isinstance(layer, kinds)]
        for name, layer in candidates:
            reason = self._factorise(model, name, layer, heads, in_attention)
            if reason:
                self._skipped.append({"layer": name, "reason": reason})
        return model

    def _factorise(
        self, model: nn.Module, name: str, layer: nn.Module, heads: dict[str, nn.Module],
        in_attention: set[nn.Module],
    ) -> str | None:
        """Replace ``layer`` in ``model`` by its factorisation, or say why it stays."""
        if name in heads:
            return "classifier head"
        if layer in in_attention:
            return "inside nn.MultiheadAttention, which reads its weights directly"
        if isinstance(layer, nn.Conv2d) and layer.groups > 1:
            return f"grouped convolution (groups={layer.groups})"
        matrix = layer.weight.detach().flatten(1)
        if not matrix.any():
            return "all its weights are zero"
        rank = self._rank(matrix)
        if not saves_parameters(*matrix.shape, rank):
            rows, cols = matrix.shape
            return f"rank {rank} would not reduce the parameters of its {rows}×{cols} matrix"
        factorize = factorize_conv if isinstance(layer, nn.Conv2d) else factorize_linear
        replacement, method, error = factorize(layer, rank)
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, replacement)
        self._factorised.append(
            LayerFactorisation(name, list(layer.weight.shape), rank, method, error)
        )
        return None

    def _rank(self, matrix: torch.Tensor) -> int:
        if self.values["energy"] is not None:
            return energy_rank(matrix, self.values["energy"])
        # Rounded down; the 1e-9 absorbs float error (0.29 × 100 = 28.999…).
        return max(1, math.floor(self.values["rank_ratio"] * min(matrix.shape) + 1e-9))

    def facts(self, model: nn.Module) -> dict[str, Any]:
        return {
            "factorized_layers": len(self._factorised),
            "max_relative_error": max((f.relative_error for f in self._factorised), default=0.0),
            "layers": [asdict(f) for f in self._factorised],
            "skipped": self._skipped,
        }
