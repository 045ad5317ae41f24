"""prune: exact global sparsity held through training; channel pruning that really cuts FLOPs."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from joulebench.compress import build_method, compress, model_stats, parse_method_params
from joulebench.compress.prune import masked_weights, prunable_weights, prune_channels
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


def train_steps(model: nn.Module, method, inputs: torch.Tensor, steps: int = 3) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    labels = torch.arange(len(inputs)) % 10
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(model)


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
    masks = {name: mask.clone() for name, mask in model.named_buffers() if name.endswith("_mask")}
    assert len(masks) == 4
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
    # nn.MultiheadAttention reads out_proj.weight without calling out_proj: without the
    # refresh hook the second backward fails (pytorch/pytorch#69353).
    torch.manual_seed(0)
    model, method = AttentionNet(), prune()
    inputs = torch.randn(4, 3, 16, 16)
    _, report = compress(method, model, inputs)
    attention = model.attention
    assert hasattr(attention, "in_proj_weight_mask") and hasattr(attention.out_proj, "weight_mask")
    zeros, total = zeros_and_total(model)
    assert total == 16 * 3 * 16 + 3 * 16 * 16 + 16 * 16 + 10 * 16
    assert zeros == round(0.5 * total)
    train_steps(model, method, inputs, steps=4)
    model(inputs)  # the effective out_proj weight is recomputed at the next attention call
    assert zeros_and_total(model) == (zeros, total)
    assert torch.equal(attention.out_proj.weight == 0, attention.out_proj.weight_mask == 0)


# Channel pruning: (model, input size). Traced and pruned by Torch-Pruning on real torchvision
# architectures: residual (resnet18), dense concatenation (densenet121) and plain (vgg16).
STRUCTURED_MODELS = [("resnet18", 32), ("densenet121", 32), ("vgg16", 32)]


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
