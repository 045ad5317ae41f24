"""capacity: the overwrite/evaluate sweep, the largest safe bits, the PNG curve, bits parsing."""

import matplotlib.image
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from joulebench.capacity import capacity_curve, largest_safe_bits, parse_bits_values, plot_capacity
from joulebench.errors import ConfigError


def truncated(tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """The float32 values with their ``bits`` low-order bits cleared (finite values only)."""
    return (tensor.view(torch.int32) & ~((1 << bits) - 1)).view(torch.float32)


def test_each_bits_value_evaluates_a_fresh_truncated_copy_and_the_model_is_untouched():
    torch.manual_seed(0)
    model, probe = nn.Linear(5, 3), torch.randn(4, 5)
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    seen: list[nn.Module] = []

    def evaluate(candidate: nn.Module) -> float:
        seen.append(candidate)
        with torch.no_grad():
            return float(candidate(probe).sum())

    curve = capacity_curve(model, evaluate, [0, 4, 12, 23])
    weight, bias = original["weight"], original["bias"]
    expected = [
        (bits, float((probe @ truncated(weight, bits).T + truncated(bias, bits)).sum()))
        for bits in (0, 4, 12, 23)
    ]
    assert [bits for bits, _ in curve] == [bits for bits, _ in expected]
    values, expected_values = [v for _, v in curve], [v for _, v in expected]
    assert values == pytest.approx(expected_values, rel=1e-6)
    assert curve[0][1] != curve[-1][1]
    assert len({id(candidate) for candidate in seen}) == 4 and model not in seen
    assert all(torch.equal(original[name], p) for name, p in model.named_parameters())


def test_random_fill_curve_is_reproducible_by_seed():
    torch.manual_seed(0)
    model = nn.Linear(50, 1)

    def low_bits_sum(candidate: nn.Module) -> float:
        return float((candidate.weight.detach().view(torch.int32) & 0xFF).sum())

    first = capacity_curve(model, low_bits_sum, [8], fill="random", seed=3)
    assert first == capacity_curve(model, low_bits_sum, [8], fill="random", seed=3)
    assert first != capacity_curve(model, low_bits_sum, [8], fill="random", seed=4)


def digits_classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on scikit-learn's digits (8×8 images), fit by L-BFGS."""
    digits = load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=100)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return model, images, labels


def test_a_digits_classifier_keeps_its_accuracy_with_16_bits_overwritten():
    model, images, labels = digits_classifier()

    def accuracy(candidate: nn.Module) -> float:
        with torch.no_grad():
            return float((candidate(images).argmax(1) == labels).float().mean())

    curve = capacity_curve(model, accuracy)
    assert [bits for bits, _ in curve] == list(range(24))
    assert curve[0][1] == accuracy(model) > 0.95
    assert largest_safe_bits(curve) >= 16


def test_largest_safe_bits_stops_at_the_first_loss_beyond_tolerance():
    curve = [(22, 0.95), (0, 0.90), (8, 0.90), (16, 0.895), (20, 0.89), (21, 0.8899)]
    assert largest_safe_bits(curve) == 20  # 21 loses 0.0101; the lucky 22 after it does not count
    assert largest_safe_bits(curve, tolerance=0.02) == 22
    assert largest_safe_bits([(0, 0.57), (1, 0.56)]) == 1  # 0.57 − 0.56 is 0.010000000000000009


def test_largest_safe_bits_needs_the_untouched_reference():
    with pytest.raises(ConfigError, match="needs bits = 0"):
        largest_safe_bits([(8, 0.9), (16, 0.9)])


def test_plot_is_a_png_of_the_requested_size(tmp_path):
    curve = [(0, 0.9), (8, 0.9), (16, 0.89), (23, 0.1)]
    path = plot_capacity(curve, tmp_path / "capacity.png", "resnet18")
    pixels = matplotlib.image.imread(path)
    assert pixels.shape == (400, 700, 4)  # 7 × 4 inches at 100 dpi, RGBA
    assert len(torch.unique(torch.from_numpy(pixels).reshape(-1, 4), dim=0)) > 10


@pytest.mark.parametrize(
    ("text", "values"),
    [("0-23", list(range(24))), ("0,8,16", [0, 8, 16]), ("16, 0-2,2", [0, 1, 2, 16]), ("23,0", [0, 23])],
)
def test_bits_values_parse_from_ranges_and_lists(text, values):
    assert parse_bits_values(text) == values


@pytest.mark.parametrize("text", ["0-24", "-1", "a", "", "5-3", "0,,8"])
def test_bad_bits_values_are_one_line_errors(text):
    with pytest.raises(ConfigError, match="accepted: integers 0–23") as error:
        parse_bits_values(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["23", "8,16", "1-23"])
def test_bits_values_without_zero_are_refused_before_any_training(text):
    """bits = 0 is the curve's reference: without it, the run would train and then fail."""
    with pytest.raises(ConfigError, match=r"lack 0: the capacity curve measures against the untouched model"):
        parse_bits_values(text)


def test_sweep_refuses_bits_out_of_range_and_unknown_fills():
    with pytest.raises(ConfigError, match="must be integers 0–23"):
        capacity_curve(nn.Linear(2, 2), lambda m: 0.0, [0, 24])
    with pytest.raises(ConfigError, match="use one of: zero, random"):
        capacity_curve(nn.Linear(2, 2), lambda m: 0.0, [0], fill="ones")
