"""lowrank: Eckart–Young error bounds, exact full rank, parameter and FLOP formulas, skips."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from joulebench.compress import build_method, compress, parse_method_params
from joulebench.compress.lowrank import (
    EXACT_SVD_MAX_ELEMENTS,
    energy_rank,
    factorize_conv,
    factorize_linear,
    low_rank_factors,
)


def lowrank(*pairs: str):
    return build_method("lowrank", parse_method_params("lowrank", pairs))


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.detach().double())


def with_spectrum(rows: int, cols: int, spectrum: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A rows × cols matrix whose singular values are exactly ``spectrum`` (float64 built)."""
    generator = torch.Generator().manual_seed(seed)
    u, v = (
        torch.linalg.qr(torch.randn(n, len(spectrum), generator=generator, dtype=torch.float64))[0]
        for n in (rows, cols)
    )
    return ((u * spectrum) @ v.T).float()


def test_factorised_linear_error_is_the_eckart_young_minimum_on_random_inputs():
    torch.manual_seed(0)
    layer, rank = nn.Linear(64, 48), 12
    sigma = singular_values(layer.weight)
    factorised, svd, error = factorize_linear(layer, rank)
    assert svd == "exact"
    dropped = sigma[rank:].square().sum().sqrt()
    assert error == pytest.approx(float(dropped / sigma.square().sum().sqrt()), rel=1e-5)
    inputs = torch.randn(256, 64)
    with torch.no_grad():
        gap = (layer(inputs) - factorised(inputs)).norm(dim=1)
        # ‖(W − W_r)x‖ ≤ σ_{r+1}‖x‖ for every x, with equality at the (r+1)-th right singular vector
        assert torch.all(gap <= sigma[rank] * inputs.norm(dim=1) * (1 + 1e-5))
        worst = torch.linalg.svd(layer.weight.double())[2][rank].float()
        worst_gap = (layer(worst) - factorised(worst)).norm()
    assert float(worst_gap) == pytest.approx(float(sigma[rank]), rel=1e-4)


def test_full_rank_linear_and_conv_reproduce_the_layer_to_1e_5():
    torch.manual_seed(0)
    linear = nn.Linear(40, 24)
    conv = nn.Conv2d(6, 20, 3, stride=2, padding=1)  # 20 × 54 kernel matrix: full rank 20
    full_linear, _, _ = factorize_linear(linear, 24)
    full_conv, _, _ = factorize_conv(conv, 20)
    inputs, images = torch.randn(16, 40), torch.randn(4, 6, 15, 15)
    with torch.no_grad():
        assert (linear(inputs) - full_linear(inputs)).abs().max() < 1e-5
        assert (conv(images) - full_conv(images)).abs().max() < 1e-5


def test_factorised_conv_is_the_conv_with_the_rank_r_kernel_keeping_stride_padding_dilation():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    rank = 5
    factorised, svd, error = factorize_conv(conv, rank)
    spatial, mix = factorised
    assert (spatial.out_channels, spatial.kernel_size, spatial.stride) == (rank, (3, 5), (2, 1))
    assert (spatial.padding, spatial.dilation) == ((1, 2), (1, 2))
    assert (mix.in_channels, mix.out_channels, mix.kernel_size) == (rank, 16, (1, 1))
    matrix = conv.weight.detach().flatten(1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    kernel = ((u[:, :rank] * s[:rank]) @ vh[:rank]).reshape(conv.weight.shape)
    images = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        expected = F.conv2d(images, kernel, conv.bias, conv.stride, conv.padding, conv.dilation)
        assert (factorised(images) - expected).abs().max() < 1e-5
    squares = singular_values(matrix).square()
    assert error == pytest.approx(float((squares[rank:].sum() / squares.sum()).sqrt()), rel=1e-5)


def test_randomised_svd_on_a_large_layer_stays_within_1_percent_of_the_eckart_young_minimum():
    # Above EXACT_SVD_MAX_ELEMENTS the randomised SVD is used; on a decaying spectrum (as in
    # trained weights) its error is near the optimum, which it can never beat.
    rows, cols, rank = 1100, 1000, 100
    assert rows * cols > EXACT_SVD_MAX_ELEMENTS
    spectrum = 0.97 ** torch.arange(cols, dtype=torch.float64)
    matrix = with_spectrum(rows, cols, spectrum)
    _, _, svd, error = low_rank_factors(matrix, rank)
    optimum = float(spectrum[rank:].square().sum().sqrt() / spectrum.square().sum().sqrt())
    assert svd == "randomized"
    assert optimum * (1 - 1e-4) <= error <= optimum * 1.01


def test_energy_chooses_the_fewest_singular_values_holding_the_share():
    spectrum = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)  # squares 16 9 4 1 of 30
    matrix = with_spectrum(40, 30, spectrum)
    assert energy_rank(matrix, 0.5) == 1  # 16/30 = 0.533
    assert energy_rank(matrix, 0.8) == 2  # 25/30 = 0.833
    assert energy_rank(matrix, 0.9) == 3  # 29/30 = 0.967
    assert energy_rank(matrix, 0.99) == 4  # 30/30
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 10))
    with torch.no_grad():
        model[0].weight.copy_(matrix)
    model, report = compress(lowrank("energy=0.8"), model, torch.randn(2, 30))
    assert [(entry["layer"], entry["rank"]) for entry in report.facts["layers"]] == [("0", 2)]
    assert report.facts["layers"][0]["relative_error"] == pytest.approx(math.sqrt(5 / 30), rel=1e-4)


@pytest.mark.parametrize("shape", [(60, 200), (200, 60)])
def test_energy_rank_from_the_gram_matrix_matches_the_exact_spectrum(shape):
    torch.manual_seed(0)
    matrix = torch.randn(*shape) @ torch.diag(torch.linspace(3, 0.1, shape[1]))  # uneven spectrum
    squares = singular_values(matrix).square()
    cumulative = squares.cumsum(0) / squares.sum()
    for energy in (0.3, 0.6, 0.9, 0.97):
        assert energy_rank(matrix, energy) == int((cumulative < energy).sum()) + 1


class SmallNet(nn.Module):
    """Convs (one grouped), a linear layer, attention and a 10-class head at 16 × 16 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.attention = nn.MultiheadAttention(64, 4, batch_first=True)
        self.fc = nn.Linear(64 * 8 * 8, 256)
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.grouped(F.relu(self.conv1(x))))))
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]
        return self.head(F.relu(self.fc(tokens.flatten(1))))


# (layer, rows, cols, output positions per sample, rank = ⌊0.25 · min(rows, cols)⌋) of the
# layers lowrank may factorise.
CONV1 = ("conv1", 32, 27, 16 * 16, 6)
CONV2 = ("conv2", 64, 288, 8 * 8, 16)
FC = ("fc", 256, 4096, 1, 64)


@pytest.mark.parametrize(
    ("pairs", "factorised"), [((), [FC]), (("conv=true",), [CONV1, CONV2, FC])]
)
def test_parameter_and_flop_counts_match_the_formula(pairs, factorised):
    torch.manual_seed(0)
    model, example = SmallNet(), torch.randn(2, 3, 16, 16)
    model, report = compress(lowrank(*pairs), model, example)
    # a rows × cols layer becomes r × cols + rows × r, at every output position
    saved = [(rows * cols - r * (rows + cols), positions) for _, rows, cols, positions, r in factorised]
    before, after = report.before, report.after
    assert after.parameters == before.parameters - sum(n for n, _ in saved)
    assert after.flops_per_sample == before.flops_per_sample - sum(2 * n * p for n, p in saved)
    ranks = [(entry["layer"], entry["rank"]) for entry in report.facts["layers"]]
    assert ranks == [(name, r) for name, *_, r in factorised]
    skipped = {entry["layer"]: entry["reason"] for entry in report.facts["skipped"]}
    assert skipped["head"] == "classifier head"
    assert skipped["attention.out_proj"].startswith("inside nn.MultiheadAttention")
    if "conv=true" in pairs:
        assert skipped["grouped"] == "grouped convolution (groups=4)"
    model.train()
    F.cross_entropy(model(example), torch.tensor([1, 2])).backward()


def test_a_rank_that_saves_no_parameters_leaves_the_layer_and_says_why():
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 10))
    model, report = compress(lowrank("rank_ratio=1"), model, torch.randn(2, 30))
    assert isinstance(model[0], nn.Linear)
    assert report.facts["skipped"][0] == {
        "layer": "0", "reason": "rank 30 would not reduce the parameters of its 40×30 matrix"
    }
    assert report.after == report.before


def test_an_all_zero_layer_is_left_and_reported():
    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 10))
    nn.init.zeros_(model[0].weight)
    model, report = compress(lowrank("energy=0.9"), model, torch.randn(2, 30))
    assert isinstance(model[0], nn.Linear)
    assert report.facts["skipped"][0] == {"layer": "0", "reason": "all its weights are zero"}
