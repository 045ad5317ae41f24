"""The measured fine-tuning loop. Every phase runs inside an energy window; nothing here knows MLflow.

Phases, in order, each its own window: ``idle`` (the machine at rest, for net energy),
``compress``, then per epoch ``train/epoch-N`` and ``eval/epoch-N``, and last ``inference``
(a fixed number of batches, for J and ms per image). A ``total`` window encloses them all;
``warmup/epoch-1`` (the first steps of epoch 1: kernel selection, allocator growth) lies inside
``train/epoch-1``, so its share of the training energy is visible.

Every arm computes on its device's :class:`~joulebench.compute.ComputeSettings`, with no host
sync per step; a method adds only passes around the step. ``run`` returns a
:class:`~joulebench.results.RunResult`. The step, evaluation and their helpers are also what
``capacity.fine_tune`` trains with, unmeasured.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import cycle, islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from joulebench import names
from joulebench.compress import Method, OptimizerWithPasses, compress
from joulebench.compress.base import OptimizerFactory
from joulebench.compute import ComputeSettings
from joulebench.config import RunConfig
from joulebench.data import DataSplits, make_loader
from joulebench.energy import EnergyMonitor
from joulebench.errors import ConfigError
from joulebench.results import EpochResult, RunResult

WARMUP_PHASE = "warmup"  # its window is the first WARMUP_STEPS of epoch 1, inside train/epoch-1
WARMUP_STEPS = 3  # first steps of epoch 1: cuDNN's kernel search, allocator growth, Adam's state


def seed_everything(seed: int) -> None:
    """Same seed, same initialisation, split and order: Python, NumPy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a window closes on finished work, not on queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LossTally:
    """An epoch's summed loss and the first step whose loss was not finite, kept on the device:
    read once per epoch, so a step never waits for the host."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.steps = torch.zeros((), dtype=torch.long, device=device)
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, loss: torch.Tensor, samples: int) -> None:
        loss = loss.detach()
        self.steps += 1
        self.total += loss * samples
        first = ~torch.isfinite(loss) & (self.first_nonfinite < 0)
        self.first_nonfinite = torch.where(first, self.steps, self.first_nonfinite)

    def check_finite(self, epoch: int, lr: float) -> None:
        """ConfigError (the run ends FAILED, one line) if a loss of this epoch was not finite."""
        step = int(self.first_nonfinite.item())
        if step >= 0:
            raise ConfigError(
                f"training diverged: the loss was not finite at epoch {epoch}, step {step} "
                f"(lr {lr:g}); lower --lr"
            )


def prepare(
    config: RunConfig, model: nn.Module, method: Method, settings: ComputeSettings
) -> tuple[nn.Module, OptimizerWithPasses, torch.amp.GradScaler]:
    """A compressed model in the training memory format, with the method's optimiser and
    (for float16 autocast only) a gradient scaler."""
    model = model.to(settings.device, memory_format=settings.memory_format)
    optimizer = method.optimizer(model, optimizer_factory(config, settings))
    # float16 gradients underflow without scaling; bfloat16 has float32's range and needs none.
    scaler = torch.amp.GradScaler(settings.device.type, enabled=settings.autocast_dtype == torch.float16)
    return model, optimizer, scaler


def run(
    config: RunConfig,
    data: DataSplits,
    model: nn.Module,
    method: Method,
    monitor: EnergyMonitor,
    settings: ComputeSettings,
    on_epoch: Callable[[EpochResult], None] = lambda epoch: None,
    progress: bool = True,
) -> RunResult:
    """Idle baseline, compress, fine-tune ``config.epochs`` epochs, benchmark inference.

    ``on_epoch`` is called after every epoch, so a run stopped later keeps what it finished.
    """
    seed_everything(config.seed)
    settings.apply_backends()
    device = settings.device
    train_loader = make_loader(data.train, config.batch_size, True, config.seed, device)
    val_loader = make_loader(data.val, config.batch_size, False, config.seed, device)
    example = next(iter(val_loader))[0][:2].to(device)
    model = model.to(device)
    with monitor.window(names.TOTAL_PHASE):
        with monitor.window(names.IDLE_PHASE):
            time.sleep(config.idle_seconds)
        with monitor.window(names.COMPRESS_PHASE):
            model, report = compress(method, model, example)
            model = model.to(device)
            synchronize(device)
        model, optimizer, scaler = prepare(config, model, method, settings)
        result = RunResult(config, report, model=model)
        for epoch in range(1, config.epochs + 1):
            tally = LossTally(device)
            batches = epoch_batches(train_loader, config.limit_train_batches,
                                    f"epoch {epoch}/{config.epochs}", progress)
            with monitor.window("train", epoch) as train_window:
                samples = 0
                if epoch == 1:
                    with monitor.window(WARMUP_PHASE, epoch) as warmup_window:
                        samples += train_steps(model, islice(batches, WARMUP_STEPS), optimizer, scaler,
                                               settings, tally)
                        synchronize(device)
                    result.warmup = warmup_window.measurement
                samples += train_steps(model, batches, optimizer, scaler, settings, tally)
                synchronize(device)
            tally.check_finite(epoch, config.lr)
            with monitor.window("eval", epoch) as eval_window:
                top1, top5 = evaluate(model, val_loader, settings, data.num_classes)
                synchronize(device)
            epoch_result = EpochResult(
                epoch, tally.total.item() / max(samples, 1), top1, top5, samples,
                train_window.measurement, eval_window.measurement,
            )
            result.epochs.append(epoch_result)
            on_epoch(epoch_result)
        with monitor.window(names.INFERENCE_PHASE):
            result.inference_images = benchmark_inference(model, val_loader, settings, config.inference_batches)
            synchronize(device)
    # Per-epoch windows live in the epochs (and result.warmup); the rest are the run's phases.
    result.phases = {m.phase: m for m in monitor.measurements if m.epoch is None}
    return result


def optimizer_factory(config: RunConfig, settings: ComputeSettings) -> OptimizerFactory:
    """Builds ``config``'s optimiser over given parameters, fused where the device has it."""
    implementation = {"fused": True} if settings.fused_optimizer else {"foreach": True}
    if config.optimizer == "sgd":
        return lambda params: torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, weight_decay=1e-4, **implementation
        )
    return lambda params: torch.optim.Adam(params, lr=config.lr, **implementation)


def classification_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in float32 (logits of a bfloat16 model are bfloat16); Inception's auxiliary
    head adds 0.4 × its loss, as torchvision trains it."""
    if hasattr(output, "aux_logits") and output.aux_logits is not None:
        return (F.cross_entropy(output.logits.float(), target)
                + 0.4 * F.cross_entropy(output.aux_logits.float(), target))
    return F.cross_entropy(output.float(), target)


def epoch_batches(loader: Any, limit: int | None, description: str, progress: bool) -> Iterator[Any]:
    """One epoch's batches (at most ``limit``) behind a progress bar; one iterator, so that the
    warm-up can take its first steps and the rest of the epoch the others."""
    total = min(len(loader), limit or len(loader))
    return iter(tqdm(islice(loader, total), total=total, desc=description, disable=not progress, leave=False))


def train_steps(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: OptimizerWithPasses,
    scaler: torch.amp.GradScaler,
    settings: ComputeSettings,
    tally: LossTally,
) -> int:
    """Train on ``batches``, adding each batch's loss to ``tally``; returns the samples seen."""
    model.train()
    samples = 0
    for images, labels in batches:
        labels = labels.to(settings.device, non_blocking=True)
        with settings.autocast():
            loss = classification_loss(model(settings.inputs(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        tally.add(loss, len(labels))
        samples += len(labels)
    return samples


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, settings: ComputeSettings, num_classes: int
) -> tuple[float, float | None]:
    """Top-1 accuracy, and top-5 where there are more than five classes."""
    model.eval()
    top1 = torch.zeros((), device=settings.device)
    top5 = torch.zeros((), device=settings.device)
    seen = 0
    for images, labels in loader:
        labels = labels.to(settings.device, non_blocking=True)
        with settings.autocast():
            logits = model(settings.inputs(images))
        ranked = logits.topk(min(5, num_classes), dim=1).indices
        hits = ranked == labels[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        seen += len(labels)
    return top1.item() / seen, (top5.item() / seen if num_classes > 5 else None)


@torch.no_grad()
def benchmark_inference(model: nn.Module, loader: Any, settings: ComputeSettings, batches: int) -> int:
    """Run ``batches`` forward passes (cycling the loader); returns the images processed."""
    model.eval()
    images_seen = 0
    for images, _ in islice(cycle(loader), batches):
        with settings.autocast():
            model(settings.inputs(images))
        images_seen += len(images)
    return images_seen

