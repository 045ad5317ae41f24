"""Steganographic capacity: accuracy against the number of low-order weight bits overwritten.

For each ``bits`` value a copy of the model has its low-order bits overwritten (as ``stego``
does, without training) and is evaluated by the caller's function; the model passed in is never
changed. The capacity is the largest ``bits`` up to which accuracy stays within ``tolerance``
(1 point by default) of the untouched model's (``bits = 0``), as in the group's earlier papers.
The model is first fine-tuned by capacity's own loop (``fine_tune``: plain float32, no energy
windows, the measured loop's step) and evaluated by ``accuracy_evaluator``. Nothing here logs:
the caller logs the curve and the PNG wherever it likes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path

from torch import nn

from joulebench.compress import Baseline
from joulebench.compress.stego import overwrite_model_
from joulebench.compute import compute_settings
from joulebench.config import RunConfig
from joulebench.inputs import int_ranges
from joulebench.data import DataSplits, make_loader
from joulebench.errors import ConfigError
from joulebench.method_params import FILLS, MAX_BITS
from joulebench.plotting import pyplot
from joulebench.train import LossTally, epoch_batches, evaluate, prepare, seed_everything, train_steps

Curve = list[tuple[int, float]]
ALL_BITS = range(MAX_BITS + 1)
# Accuracies are fractions of a finite test set; the slack absorbs float error in
# differences such as 0.57 - 0.56 = 0.010000000000000009.
COMPARISON_SLACK = 1e-9


def parse_bits_values(text: str) -> list[int]:
    """``"0-23"``, ``"0,8,16"`` or a mix (``"0-4,16,23"``) as sorted distinct bits values."""
    try:
        values = int_ranges(text, MAX_BITS)
    except ValueError as part:
        raise ConfigError(
            f"bits values {text!r} not understood at {str(part)!r}; accepted: integers "
            f"0–{MAX_BITS} as ranges and/or a list, e.g. 0-{MAX_BITS} or 0,8,16,20"
        ) from None
    if 0 not in values:  # refused before the run opens, not after its training
        raise ConfigError(f"bits values {text!r} lack 0: the capacity curve measures against the untouched "
                          f"model (bits = 0); e.g. 0,{text}")
    return values


def capacity_curve(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    bits_values: Iterable[int] = ALL_BITS,
    fill: str = "zero",
    seed: int = 0,
) -> Curve:
    """``[(bits, evaluate(copy with bits overwritten)), ...]`` in the order of ``bits_values``."""
    bits_values = list(bits_values)
    if not bits_values or not all(isinstance(b, int) and 0 <= b <= MAX_BITS for b in bits_values):
        raise ConfigError(
            f"capacity bits values {bits_values} must be integers 0–{MAX_BITS}; "
            f"pass e.g. 0-{MAX_BITS} or 0,8,16"
        )
    if fill not in FILLS:
        raise ConfigError(f"capacity fill {fill!r} not accepted; use one of: {', '.join(FILLS)}")
    curve: Curve = []
    for bits in bits_values:
        overwritten = copy.deepcopy(model)
        overwrite_model_(overwritten, bits, fill, seed)
        curve.append((bits, float(evaluate(overwritten))))
        del overwritten  # one copy at a time: VGG16 is 0.5 GB
    return curve


def largest_safe_bits(curve: Curve, tolerance: float = 0.01) -> int:
    """The largest bits such that it and every smaller bits measured lose at most ``tolerance``
    accuracy against bits = 0; a single lucky value beyond a failure does not count."""
    accuracy = dict(curve)
    if 0 not in accuracy:
        raise ConfigError(
            "the capacity curve needs bits = 0 (the untouched model is the reference); "
            "include 0 in the bits values"
        )
    safe = 0
    for bits in sorted(accuracy):
        if accuracy[0] - accuracy[bits] > tolerance + COMPARISON_SLACK:
            break
        safe = bits
    return safe


def plot_capacity(curve: Curve, path: Path, title: str, tolerance: float = 0.01) -> Path:
    """Accuracy against bits overwritten, the tolerance band under bits = 0 and the capacity."""
    plt = pyplot()

    safe = largest_safe_bits(curve, tolerance)
    bits, accuracies = zip(*sorted(curve))
    figure, axes = plt.subplots(figsize=(7, 4), layout="constrained")
    axes.plot(bits, accuracies, "o-", label="accuracy")
    axes.axhline(dict(curve)[0] - tolerance, color="grey", ls="--", lw=1,
                 label=f"bits = 0 accuracy − {tolerance:g}")
    axes.axvline(safe, color="C2", lw=1, label=f"capacity: {safe} bits")
    axes.set_xlabel("low-order bits overwritten per float32 weight")
    axes.set_ylabel("accuracy")
    axes.set_title(title)
    axes.legend(loc="lower left")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def fine_tune(config: RunConfig, data: DataSplits, model: nn.Module, progress: bool) -> nn.Module:
    """Plain float32 fine-tuning, no windows: trains the model a capacity curve is taken on."""
    seed_everything(config.seed)
    settings = compute_settings(config, model, Baseline())
    settings.apply_backends()
    model, optimizer, scaler = prepare(config, model, Baseline(), settings)
    loader = make_loader(data.train, config.batch_size, True, config.seed, settings.device)
    for epoch in range(1, config.epochs + 1):
        batches = epoch_batches(loader, config.limit_train_batches, f"fine-tune {epoch}/{config.epochs}", progress)
        tally = LossTally(settings.device)
        train_steps(model, batches, optimizer, scaler, settings, tally)
        tally.check_finite(epoch, config.lr)
    return model


def accuracy_evaluator(config: RunConfig, data: DataSplits, model: nn.Module) -> Callable[[nn.Module], float]:
    """A function giving a float32 model's top-1 validation accuracy (``model``: its architecture)."""
    settings = compute_settings(config, model, Baseline())
    loader = make_loader(data.val, config.batch_size, False, config.seed, settings.device)
    return lambda candidate: evaluate(candidate.to(settings.device), loader, settings, data.num_classes)[0]
