"""stego: exact bit patterns, truncation held through training, bfloat16 fit, seeded payloads."""

import pytest
import torch
from torch import nn

from joulebench.compress import build_method, compress, parse_method_params
from joulebench.compress.base import as_model_input
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
    return torch.cat([p.detach().float().view(torch.int32).flatten() & low for p in model.parameters()])


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


def adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-2)


def adam_steps(model: nn.Module, method, steps: int = 3) -> None:
    """Adam steps through the method's optimiser (``None``: the plain one, no re-imposition)."""
    optimizer = adam(list(model.parameters())) if method is None else method.optimizer(model, adam)
    inputs, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(as_model_input(model, inputs)).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


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
    assert report.facts["compute"].startswith("bfloat16 weights")


@pytest.mark.parametrize(
    ("pairs", "stored", "autocast"),
    [
        ((), torch.bfloat16, None),
        (("bits=23",), torch.bfloat16, None),
        (("bits=15",), None, None),
        (("fill=random",), None, None),  # a payload in the low bits fits no 16-bit format
        (("dtype=float16",), None, torch.float16),
    ],
)
def test_stored_and_autocast_dtypes_follow_bits_fill_and_dtype(pairs, stored, autocast):
    assert (stego(*pairs).stored_dtype(), stego(*pairs).autocast_dtype("cuda")) == (stored, autocast)


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


class ConvBnNet(nn.Module):
    """conv → batchnorm → relu → linear: a weight, a normalisation layer and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


def test_sixteen_zero_bits_store_weights_in_bfloat16_and_normalisation_in_float32():
    torch.manual_seed(0)
    model = ConvBnNet()
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    _, report = compress(stego(), model, torch.randn(2, 3, 8, 8))
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes == {
        "conv.weight": torch.bfloat16, "conv.bias": torch.bfloat16,
        "norm.weight": torch.float32, "norm.bias": torch.float32,
        "head.weight": torch.bfloat16, "head.bias": torch.bfloat16,
    }
    assert {b.dtype for b in model.norm.buffers() if b.is_floating_point()} == {torch.float32}
    for name, weight in model.named_parameters():  # every value is the truncation, exactly
        expected = overwrite_low_bits_(original[name].clone(), 16)
        assert torch.equal(weight.detach().float().view(torch.int32), expected.view(torch.int32))
    bf16 = sum(p.numel() for p in model.parameters() if p.dtype == torch.bfloat16)
    assert report.after.weight_bytes == report.before.weight_bytes - 2 * bf16


def float32_reference_step(reference: nn.Module, optimizer, model: nn.Module, bits: int) -> None:
    """Today's definition on a float32 copy: the float32 update with the stored model's
    gradient of this step, then the low ``bits`` overwritten (zeros)."""
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        theirs.grad = ours.grad.float()
    optimizer.step()
    for weight in reference.parameters():
        overwrite_low_bits_(weight.data, bits)


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "adam_fused": lambda params: torch.optim.Adam(params, lr=1e-2, fused=True),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True),
    "sgd_fused": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True),
}


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("pairs", [(), ("bits=8",), ("bits=20",), ("bits=12", "fill=random", "seed=3")])
def test_every_step_stores_the_truncated_float32_update_bit_for_bit(pairs, optimizer_name, memory_format):
    # bits ≥ 16 trains bfloat16-stored weights; the others train float32 weights in one flat
    # buffer. Either way, after every step each stored weight must equal, bit for bit, the
    # float32 update of the previous weight with that step's gradient, its low bits overwritten.
    torch.manual_seed(0)
    model, method = ConvBnNet(), stego(*pairs)
    compress(method, model, torch.randn(2, 3, 8, 8))
    model = model.to(memory_format=memory_format)
    reference = ConvBnNet().to(memory_format=memory_format)
    for theirs, ours in zip(reference.parameters(), model.parameters()):
        theirs.data.copy_(ours.detach().float())
    build = OPTIMIZERS[optimizer_name]
    optimizer, reference_optimizer = method.optimizer(model, build), build(list(reference.parameters()))
    bits, payload = method.values["bits"], low_bits_of_every_weight(model, method.values["bits"])
    for step in range(5):
        inputs = torch.randn(4, 3, 8, 8).to(memory_format=memory_format)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(as_model_input(model, inputs)).float(), torch.arange(4))
        loss.backward()
        optimizer.step()
        float32_reference_step(reference, reference_optimizer, model, bits)
        if method.values["fill"] == "random":  # the reference re-imposes the same payload
            for theirs, ours in zip(reference.parameters(), model.parameters()):
                theirs.data.view(torch.int32).bitwise_or_(ours.detach().view(torch.int32) & ((1 << bits) - 1))
            assert torch.equal(low_bits_of_every_weight(model, bits), payload)
        for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
            assert torch.equal(ours.detach().float().view(torch.int32), theirs.detach().view(torch.int32)), (
                f"{name} differs after step {step + 1}"
            )
    assert loss.isfinite()


def test_without_truncation_the_float32_update_is_not_a_bfloat16():
    # The control for the test above: a float32 Adam update of bfloat16 values has non-zero
    # low bits, so storing it needs the truncation that the optimiser performs.
    torch.manual_seed(0)
    model = ConvBnNet()
    compress(stego(), model, torch.randn(2, 3, 8, 8))
    weights = [p.detach().float().requires_grad_() for p in model.parameters()]
    for weight in weights:
        weight.grad = torch.randn_like(weight)
    adam(weights).step()
    assert sum(int((w.detach().view(torch.int32) & 0xFFFF).count_nonzero()) for w in weights) > 100


def test_float32_weights_are_views_of_one_buffer_so_one_pass_reimposes_them():
    torch.manual_seed(0)
    model, method = ConvBnNet(), stego("bits=8")
    compress(method, model, torch.randn(2, 3, 8, 8))
    optimizer = method.optimizer(model, adam)
    storage = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert storage == {optimizer.flat.untyped_storage().data_ptr()}
    assert optimizer.flat.numel() == sum(p.numel() for p in model.parameters())


def test_bfloat16_training_steps_on_cpu_keep_bfloat16_weights_and_train():
    model, method = tiny_model(), stego()
    compress(method, model, torch.randn(2, 3, 32, 32))
    before = [p.detach().clone() for p in model.parameters()]
    adam_steps(model, method)
    assert not all(torch.equal(b, p) for b, p in zip(before, model.parameters()))  # it trained
    assert [p.dtype for p in model.parameters()] == [b.dtype for b in before]
    assert torch.bfloat16 in {b.dtype for b in before}


def test_the_normalisation_layers_kept_float32_are_every_torch_norm_layer():
    """Named by public types; torch's private bases (_NormBase, _InstanceNorm) are the reference."""
    import inspect

    from torch import nn

    from joulebench.compress.stego import NORMALISATION_LAYERS

    private = (nn.modules.batchnorm._NormBase, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm)
    layers = [c for c in vars(nn).values() if inspect.isclass(c) and issubclass(c, nn.Module)]
    assert [c for c in layers if issubclass(c, private) != issubclass(c, NORMALISATION_LAYERS)] == []
