"""prune: exact global sparsity held through training; channel pruning that really cuts FLOPs."""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils import prune as torch_prune

from joulebench.compress import build_method, compress, model_stats, parse_method_params
from joulebench.compress.prune import (
    MaskedOptimizer,
    masked_weights,
    prunable_weights,
    prune_channels,
)
from joulebench.models import build_model


def prune(*pairs: str):
    return build_method("prune", parse_method_params("prune", pairs))


class AttentionNet(nn.Module):
    """A conv stem, one multi-head attention block and a head: every kind of prunable weight."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(attended.mean(1))


def zeros_and_total(model: nn.Module) -> tuple[int, int]:
    weights = masked_weights(model)
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def train_steps(model: nn.Module, method, inputs: torch.Tensor, steps: int = 3) -> None:
    optimizer = method.optimizer(model, adam)
    labels = torch.arange(len(inputs)) % 10
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9])
def test_global_sparsity_is_exactly_amount_before_and_after_training(amount):
    torch.manual_seed(0)
    model, method = build_model("tinynet", 10), prune(f"amount={amount}")
    inputs = torch.randn(8, 3, 32, 32)
    _, report = compress(method, model, inputs)
    zeros, total = zeros_and_total(model)
    # every conv and linear weight of TinyNet: 16·3·9 + 32·16·9 + 32·512 + 10·32
    assert total == 432 + 4608 + 16384 + 320
    assert zeros == round(amount * total)
    assert report.facts["sparsity"] == zeros / total
    assert report.after.nonzero_parameters == report.before.nonzero_parameters - zeros
    # the masks keep the dense compute
    assert report.after.flops_per_sample == report.before.flops_per_sample
    masks = {
        name: mask.clone() for name, mask in model.named_buffers() if name.endswith("_prune_mask")
    }
    assert len(masks) == 4
    weights = masked_weights(model)
    assert all(torch.equal(w == 0, m == 0) for w, m in zip(weights, masks.values()))
    train_steps(model, method, inputs)
    assert zeros_and_total(model) == (zeros, total)
    assert all(torch.equal(mask, model.get_buffer(name)) for name, mask in masks.items())


def test_the_smallest_magnitudes_across_all_layers_are_the_ones_pruned():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    magnitudes = torch.cat([model[i].weight.detach().abs().flatten() for i in (0, 2)])
    threshold = magnitudes.sort().values[round(0.5 * magnitudes.numel()) - 1]
    compress(prune(), model, torch.randn(2, 20))
    kept = torch.cat([model[i].weight.detach().flatten() for i in (0, 2)])
    assert torch.equal(kept == 0, magnitudes <= threshold)


def test_attention_projections_are_pruned_and_train_for_several_steps():
    # nn.MultiheadAttention reads out_proj.weight without calling out_proj; with zeros stored
    # in place (no reparametrisation) that needs no special case.
    torch.manual_seed(0)
    model, method = AttentionNet(), prune()
    inputs = torch.randn(4, 3, 16, 16)
    _, report = compress(method, model, inputs)
    attention = model.attention
    assert hasattr(attention, "in_proj_weight_prune_mask")
    assert hasattr(attention.out_proj, "weight_prune_mask")
    zeros, total = zeros_and_total(model)
    assert total == 16 * 3 * 16 + 3 * 16 * 16 + 16 * 16 + 10 * 16
    assert zeros == round(0.5 * total)
    train_steps(model, method, inputs, steps=4)
    assert zeros_and_total(model) == (zeros, total)
    assert torch.equal(attention.out_proj.weight == 0, attention.out_proj.weight_prune_mask == 0)
    assert torch.equal(attention.in_proj_weight == 0, attention.in_proj_weight_prune_mask == 0)


class SmallConvNet(nn.Module):
    """Conv, batch norm and linear layers: the weights of a typical CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16 * 8 * 8, 10)  # for 16 px inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.flatten(1))


def _refresh_out_proj(attention: nn.MultiheadAttention, inputs) -> None:
    # The torch.nn.utils.prune reference needs it: nn.MultiheadAttention reads out_proj.weight
    # without calling out_proj, so its pruning hook never runs (pytorch/pytorch#69353).
    for hook in attention.out_proj._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod):
            hook(attention.out_proj, inputs)


def bits(t: torch.Tensor) -> torch.Tensor:
    # Adding +0.0 turns -0.0 into +0.0 and changes no other value, so -0.0 and +0.0 compare
    # equal (a pruned negative weight is -0.0 in both paths) while every other bit must match.
    return (t.detach() + 0.0).view(torch.int32)


def effective_reference(module: nn.Module, name: str) -> torch.Tensor:
    """What torch.nn.utils.prune's hook sets ``module.<name>`` to at the next forward."""
    if hasattr(module, f"{name}_orig"):
        return getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
    return getattr(module, name)


@pytest.mark.parametrize("build", [adam, sgd], ids=["adam", "sgd_momentum_weight_decay"])
@pytest.mark.parametrize("net", [SmallConvNet, AttentionNet])
def test_training_is_bit_identical_to_torch_nn_utils_prune(net, build):
    torch.manual_seed(0)
    ours, reference = net(), net()  # random init: no magnitude ties, topk selects as we do
    reference.load_state_dict(ours.state_dict())
    inputs = torch.randn(5, 8, 3, 16, 16)
    labels = torch.randint(0, 10, (5, 8))
    method = prune("amount=0.6")
    compress(method, ours, inputs[0])
    torch_prune.global_unstructured(
        prunable_weights(reference), torch_prune.L1Unstructured, amount=0.6
    )
    for module in reference.modules():
        if isinstance(module, nn.MultiheadAttention):
            module.register_forward_pre_hook(_refresh_out_proj)
    optimizer = method.optimizer(ours, build)
    assert isinstance(optimizer, MaskedOptimizer)
    reference_optimizer = build(list(reference.parameters()))
    # (module path, attribute) of every parameter, read in the reference as its effective value
    names = [tuple(name.rpartition(".")[::2]) for name, _ in ours.named_parameters()]
    masks = dict(ours.named_buffers())
    ours.train(), reference.train()
    for step in range(len(inputs)):
        for model, opt in ((ours, optimizer), (reference, reference_optimizer)):
            loss = nn.functional.cross_entropy(model(inputs[step]), labels[step])
            opt.zero_grad()
            loss.backward()
            opt.step()
        for path, attr in names:
            mine = getattr(ours.get_submodule(path), attr)
            theirs = effective_reference(reference.get_submodule(path), attr)
            assert torch.equal(bits(mine), bits(theirs)), (step, path, attr)
            # Optimiser state: equal to the reference's where kept, zero where pruned (which
            # fails if gradients are not masked; the effective weights alone, re-zeroed after
            # each elementwise step, could not tell).
            ref_param = getattr(reference.get_submodule(path), f"{attr}_orig", None)
            ref_param = theirs if ref_param is None else ref_param
            prefix = f"{path}." if path else ""
            mask = masks.get(f"{prefix}{attr}_prune_mask", torch.ones_like(mine))
            kept = mask.bool()
            for key, value in optimizer.state[mine].items():
                if key == "step":
                    continue
                ref_value = reference_optimizer.state[ref_param][key]
                assert torch.equal(bits(value[kept]), bits(ref_value[kept])), (step, path, key)
                assert not value[~kept].any(), (step, path, key)
    assert sum(int((w == 0).sum()) for w in masked_weights(ours)) == round(
        0.6 * sum(w.numel() for w in masked_weights(ours))
    )


def test_a_pruned_model_has_no_hooks_and_no_reparametrisation():
    torch.manual_seed(0)
    for model, inputs in ((AttentionNet(), torch.randn(4, 3, 16, 16)),
                          (SmallConvNet(), torch.randn(4, 3, 16, 16))):
        method = prune()
        compress(method, model, inputs)
        train_steps(model, method, inputs, steps=2)
        for module in model.modules():
            assert not module._forward_pre_hooks and not module._forward_hooks
        names = [name for name, _ in model.named_parameters()]
        assert not any(name.endswith("_orig") for name in names)
        assert set(model.state_dict()) == set(type(model)().state_dict())


def test_the_state_dict_is_plain_after_compression_and_training():
    torch.manual_seed(0)
    model, method = build_model("resnet18", 10), prune("amount=0.5")
    inputs = torch.randn(4, 3, 32, 32)
    compress(method, model, inputs)
    total = sum(w.numel() for w in masked_weights(model))
    for steps in (0, 4):
        train_steps(model, method, inputs, steps=steps)
        plain = torchvision.models.resnet18(num_classes=10)
        plain.load_state_dict(model.state_dict(), strict=True)
        weights = [getattr(m, a) for m, a in prunable_weights(plain)]
        assert sum(w.numel() for w in weights) == total
        assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * total)


def test_masks_follow_channels_last_and_sparsity_stays_exact():
    torch.manual_seed(0)
    model, method = SmallConvNet(), prune("amount=0.7")
    inputs = torch.randn(4, 3, 16, 16)
    compress(method, model, inputs)
    zeros, total = zeros_and_total(model)
    assert zeros == round(0.7 * total)
    model = model.to(memory_format=torch.channels_last)
    for conv in (model.conv1, model.conv2):
        assert conv.weight_prune_mask.stride() == conv.weight.stride()
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    optimizer = method.optimizer(model, sgd)
    model.train()
    for _ in range(4):
        loss = nn.functional.cross_entropy(
            model(inputs.to(memory_format=torch.channels_last)), torch.arange(4)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert zeros_and_total(model) == (zeros, total)
    for conv in (model.conv1, model.conv2):
        assert torch.equal(conv.weight == 0, conv.weight_prune_mask == 0)


# Channel pruning: (model, input size). Traced and pruned by Torch-Pruning on real torchvision
# architectures: residual (resnet18), dense concatenation (densenet121) and plain (vgg16); the
# two large ones are slow (tens of seconds each on 2 cores).
STRUCTURED_MODELS = [("resnet18", 32), pytest.param("densenet121", 32, marks=pytest.mark.slow),
                     pytest.param("vgg16", 32, marks=pytest.mark.slow)]


@pytest.mark.parametrize(("name", "size"), STRUCTURED_MODELS)
def test_channel_pruning_runs_and_cuts_flops_by_at_least_30_percent(name, size):
    torch.manual_seed(0)
    model, method = build_model(name, 10), prune("structured=true")
    inputs = torch.randn(2, 3, size, size)
    model, report = compress(method, model, inputs)
    assert report.after.flops_per_sample <= 0.7 * report.before.flops_per_sample
    assert report.after.parameters < 0.7 * report.before.parameters
    assert report.facts["channels_removed_fraction"] == pytest.approx(0.5, abs=0.02)
    assert [s["layer"] for s in report.facts["skipped"]] == [head_name(name)]
    train_steps(model, method, inputs, steps=1)
    assert model(inputs).shape == (2, 10)
    trained = model_stats(model, inputs)  # nothing grew back
    assert (trained.parameters, trained.flops_per_sample) == (
        report.after.parameters, report.after.flops_per_sample
    )


def head_name(model: str) -> str:
    return {"resnet18": "fc", "densenet121": "classifier", "vgg16": "classifier.6"}[model]


@pytest.mark.slow
def test_channel_pruning_keeps_the_auxiliary_head_of_inception_consistent():
    # Torch-Pruning traces in eval mode, where Inception skips AuxLogits; the prune method
    # traces the top-level training branch so AuxLogits' input channels are pruned too.
    torch.manual_seed(0)
    model = build_model("inception_v3", 10)
    inputs = torch.randn(2, 3, 299, 299)  # the aux head's 5×5 conv needs 299 px in training
    facts = prune_channels(model, inputs, 0.5)
    assert sorted(s["layer"] for s in facts["skipped"]) == ["AuxLogits.fc", "fc"]
    block = model.Mixed_6e  # its four branches are concatenated into AuxLogits' input
    branches = (block.branch1x1, block.branch7x7_3, block.branch7x7dbl_5, block.branch_pool)
    aux_inputs = model.AuxLogits.conv0.conv.in_channels
    assert aux_inputs == sum(branch.conv.out_channels for branch in branches) < 768
    model.train()
    logits, aux_logits = model(inputs)
    assert logits.shape == aux_logits.shape == (2, 10)


def test_threshold_selection_masks_exactly_what_l1unstructured_masks():
    torch.manual_seed(2)
    ours, reference = (
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)) for _ in range(2)
    )
    reference.load_state_dict(ours.state_dict())
    compress(prune("amount=0.37"), ours, torch.randn(2, 3, 8, 8))
    torch_prune.global_unstructured(
        prunable_weights(reference), torch_prune.L1Unstructured, amount=0.37
    )
    assert all(torch.equal(a, b) for a, b in zip(ours.buffers(), reference.buffers()))


def test_ties_at_the_threshold_still_mask_exactly_the_amount():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        for layer in model:
            layer.weight.copy_(torch.randn(10, 10).sign())  # 200 weights, all of magnitude 1
    compress(prune("amount=0.3"), model, torch.randn(2, 10))
    assert zeros_and_total(model) == (60, 200)


def test_an_amount_that_rounds_to_no_weight_masks_none():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 20 weights: 0.02 × 20 rounds to 0
    _, report = compress(prune("amount=0.02"), model, torch.randn(2, 3))
    assert (report.facts["zero_weights"], report.facts["pruned_weights"]) == (0, 20)


class Drift(torch.optim.Optimizer):
    """Moves every weight, gradient or not: only re-zeroing after the step keeps the zeros."""

    def __init__(self, params) -> None:
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            torch._foreach_add_(group["params"], 0.01)


def test_pruned_weights_are_zeroed_again_after_every_step():
    torch.manual_seed(0)
    model, method = SmallConvNet(), prune("amount=0.5")
    inputs = torch.randn(4, 3, 16, 16)
    compress(method, model, inputs)
    zeros, total = zeros_and_total(model)
    optimizer = method.optimizer(model, Drift)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), torch.arange(4)).backward()
        optimizer.step()
        assert zeros_and_total(model) == (zeros, total)
