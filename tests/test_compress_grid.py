"""The nine paper models × every method with default parameters: build, compress, train a step.

Each model runs at its smallest training input (Inception at 299 px: its auxiliary head's 5×5
conv needs a 17×17 map) on a batch of 2. The step is float32: on this CPU (AVX2, without
AVX512-BF16) the bfloat16 autocast stego asks for is 10–20× slower than float32, too slow for
ViT-B/16 here; the bfloat16 step is tested on TinyNet in test_compress_stego.py.
"""

import copy
import functools
import math

import pytest
import torch
from torch import nn

from joulebench.compress import build_method, compress, method_names, parse_method_params
from joulebench.models import PAPER_MODELS, build_model, image_sizes
from joulebench.train import classification_loss

TRAINING_SIZES = {"inception_v3": 299}
CASES = [(model, method) for model in PAPER_MODELS for method in method_names()]


@functools.lru_cache(maxsize=1)  # CASES run model by model: each model is built once
def pristine(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, 10)


def low_bits(model: nn.Module, bits: int) -> int:
    low = (1 << bits) - 1
    return sum(int((p.detach().view(torch.int32) & low).count_nonzero()) for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method_name"), CASES)
def test_every_paper_model_compresses_and_trains_one_float32_step(name, method_name):
    size = TRAINING_SIZES.get(name, image_sizes(name).minimum)
    inputs, labels = torch.randn(2, 3, size, size), torch.tensor([3, 7])
    method = build_method(method_name, parse_method_params(method_name, []))
    model, report = compress(method, copy.deepcopy(pristine(name)), inputs)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss = classification_loss(model(inputs), labels)
    loss.backward()
    optimizer.step()
    method.after_optimizer_step(model)
    assert torch.isfinite(loss)
    check_method_invariants(method_name, method, model, report)


def check_method_invariants(method_name, method, model, report) -> None:
    """What each default method promises, still true after the training step."""
    if method_name == "baseline":
        assert report.after == report.before
    elif method_name == "stego":
        assert low_bits(model, 16) == 0
    elif method_name == "prune":
        after_step = method.facts(model)
        assert after_step["zero_weights"] == round(0.5 * after_step["pruned_weights"])
        assert after_step == report.facts
    elif method_name == "lowrank":
        # a rows × cols layer at rank r keeps r · (rows + cols) of its rows · cols weights
        saved = 0
        for layer in report.facts["layers"]:
            rows, cols = layer["shape"][0], math.prod(layer["shape"][1:])
            saved += rows * cols - layer["rank"] * (rows + cols)
        assert report.after.parameters == report.before.parameters - saved
    else:
        pytest.fail(f"no invariant written for method {method_name!r}")
