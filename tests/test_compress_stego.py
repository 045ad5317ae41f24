"""stego: exact bit patterns, truncation held through training, bfloat16 fit, seeded payloads."""

import pytest
import torch
from torch import nn

from joulebench.compress import build_method, compress, parse_method_params
from joulebench.compress.stego import overwrite_low_bits_
from joulebench.errors import ConfigError
from joulebench.models import build_model

# float32 bit patterns: normal ±, ±0, subnormals, the largest finite, ±inf and two nans — one
# whose payload lies only in the low bits, so that clearing them would turn it into inf.
PATTERNS = [
    0x40490FDB,  # pi
    0xC02DF854,  # -e
    0x3F800000,  # 1.0 (no low bits set)
    0x00000000,  # +0
    0x80000000,  # -0
    0x00000001,  # smallest subnormal
    0x007FFFFF,  # largest subnormal
    0x807FFFFF,  # negative subnormal
    0x7F7FFFFF,  # largest finite
    0x7F800000,  # +inf
    0xFF800000,  # -inf
    0x7FC00000,  # quiet nan
    0x7F800001,  # nan with only bit 0 set
]
NON_FINITE = {0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001}


def as_float32(patterns: list[int]) -> torch.Tensor:
    signed = [p - (1 << 32) if p >= 1 << 31 else p for p in patterns]
    return torch.tensor(signed, dtype=torch.int32).view(torch.float32).clone()


def as_patterns(tensor: torch.Tensor) -> list[int]:
    return [value & 0xFFFFFFFF for value in tensor.view(torch.int32).tolist()]


def stego(*pairs: str):
    return build_method("stego", parse_method_params("stego", pairs))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("tinynet", 10)


def low_bits_of_every_weight(model: nn.Module, bits: int) -> torch.Tensor:
    low = (1 << bits) - 1
    return torch.cat([p.detach().view(torch.int32).flatten() & low for p in model.parameters()])


def overwrite_each(
    patterns: list[int], together: bool, bits: int, payload: int | None = None
) -> list[int]:
    """Overwrite the patterns in one tensor (inf/nan among them: the masked path) or each in
    its own tensor (finite ones take the one-pass path); return the resulting patterns."""
    groups = [patterns] if together else [[p] for p in patterns]
    result = []
    for group in groups:
        fill = None if payload is None else torch.full((len(group),), payload, dtype=torch.int32)
        result += as_patterns(overwrite_low_bits_(as_float32(group), bits, fill))
    return result


@pytest.mark.parametrize("together", [True, False], ids=["one_tensor", "tensor_per_value"])
@pytest.mark.parametrize("bits", [0, 1, 7, 16, 23])
def test_bit_patterns_equal_the_integer_masked_value_and_leave_inf_nan_alone(bits, together):
    expected = [p if p in NON_FINITE else p & ~((1 << bits) - 1) & 0xFFFFFFFF for p in PATTERNS]
    assert overwrite_each(PATTERNS, together, bits) == expected


def test_sixteen_bits_of_pi_and_minus_e_are_the_bfloat16_truncations():
    overwritten = overwrite_low_bits_(as_float32([0x40490FDB, 0xC02DF854]), 16)
    assert overwritten.tolist() == [3.140625, -2.703125]


@pytest.mark.parametrize("together", [True, False], ids=["one_tensor", "tensor_per_value"])
def test_random_payload_fills_the_low_bits_and_keeps_the_high_bits_of_finite_values(together):
    expected = [p if p in NON_FINITE else (p & ~0xF | 0b1011) & 0xFFFFFFFF for p in PATTERNS]
    assert overwrite_each(PATTERNS, together, 4, payload=0b1011) == expected


def test_after_sixteen_bits_every_weight_round_trips_through_bfloat16_rounded_toward_zero():
    model = tiny_model()
    original = [p.detach().clone() for p in model.parameters()]
    compress(stego("bits=16"), model, torch.randn(2, 3, 32, 32))
    for before, after in zip(original, model.parameters()):
        after = after.detach()
        assert torch.equal(after.to(torch.bfloat16).to(torch.float32), after)
        assert torch.all(after.abs() <= before.abs())  # toward zero...
        assert torch.equal(torch.sign(after[after != 0]), torch.sign(before[after != 0]))
    # ...which is not .to(bfloat16)'s round-to-nearest: some weights differ from it.
    nearest = torch.cat([p.to(torch.bfloat16).float().flatten() for p in original])
    truncated = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (nearest != truncated).sum() > 1000


def adam_steps(model: nn.Module, method, steps: int = 3) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    inputs, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if method is not None:
            method.after_optimizer_step(model)


def test_weights_stay_truncated_after_optimiser_steps():
    model, method = tiny_model(), stego("bits=12")
    compress(method, model, torch.randn(2, 3, 32, 32))
    before = [p.detach().clone() for p in model.parameters()]
    adam_steps(model, method)
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # it trained
    assert int(low_bits_of_every_weight(model, 12).count_nonzero()) == 0


def test_without_reprojection_adam_steps_refill_the_low_bits():
    # The control for the test above: an optimiser step alone does not keep bits cleared.
    model = tiny_model()
    compress(stego("bits=12"), model, torch.randn(2, 3, 32, 32))
    adam_steps(model, None)
    assert int(low_bits_of_every_weight(model, 12).count_nonzero()) > 1000


def test_random_fill_is_reproducible_by_seed_and_kept_through_training():
    example = torch.randn(2, 3, 32, 32)
    first, second, other = tiny_model(), tiny_model(), tiny_model()
    method = stego("bits=10", "fill=random", "seed=7")
    compress(method, first, example)
    compress(stego("bits=10", "fill=random", "seed=7"), second, example)
    compress(stego("bits=10", "fill=random", "seed=8"), other, example)
    payload = low_bits_of_every_weight(first, 10)
    assert torch.equal(payload, low_bits_of_every_weight(second, 10))
    assert (payload != low_bits_of_every_weight(other, 10)).float().mean() > 0.99
    adam_steps(first, method)
    assert torch.equal(low_bits_of_every_weight(first, 10), payload)


def test_report_gives_freed_capacity_and_storage_at_the_kept_precision():
    model = nn.Sequential(nn.Linear(100, 30), nn.Linear(30, 7))  # 3030 + 217 = 3247 floats
    _, report = compress(stego("bits=20"), model, torch.randn(2, 100))
    assert report.facts["float_weights"] == 3247
    assert report.facts["freed_capacity_mb"] == 20 * 3247 / 8 / 1e6
    # 12 kept bits per weight, bit-packed per tensor: ceil(12·n/8) bytes for each of the 4 tensors
    assert report.facts["weight_bytes_at_kept_precision"] == 4500 + 45 + 315 + 11
    assert report.facts["compute"] == "bfloat16 autocast"


@pytest.mark.parametrize(
    ("pairs", "device", "dtype"),
    [
        ((), "cpu", torch.bfloat16),
        ((), "cuda", torch.bfloat16),
        (("bits=23",), "cpu", torch.bfloat16),
        (("bits=15",), "cuda", None),
        (("dtype=float16",), "cuda", torch.float16),
    ],
)
def test_autocast_dtype_follows_bits_and_dtype(pairs, device, dtype):
    assert stego(*pairs).autocast_dtype(device) == dtype


def test_float16_on_cpu_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="CUDA only") as error:
        stego("dtype=float16").autocast_dtype("cpu")
    assert "\n" not in str(error.value)


def test_float16_with_fewer_than_sixteen_bits_is_refused():
    with pytest.raises(ConfigError, match="needs bits ≥ 16"):
        stego("bits=12", "dtype=float16")


def test_a_non_float32_model_is_refused():
    with pytest.raises(ConfigError, match="is torch.float64"):
        compress(stego(), nn.Linear(3, 2).double(), torch.randn(2, 3, dtype=torch.float64))


def test_bfloat16_training_step_on_cpu_keeps_the_bfloat16_weights():
    model, method = tiny_model(), stego()
    compress(method, model, torch.randn(2, 3, 32, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.autocast("cpu", dtype=method.autocast_dtype("cpu")):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    assert loss.dtype == torch.float32  # cross-entropy autocasts to float32
    loss.backward()
    optimizer.step()
    method.after_optimizer_step(model)
    for weight in model.parameters():
        assert torch.equal(weight.detach().to(torch.bfloat16).float(), weight.detach())
