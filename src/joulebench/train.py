"""The fine-tuning loop. Every phase runs inside an energy window; nothing here knows MLflow.

Phases, in order, each its own window: ``idle`` (the machine at rest, for net energy),
``compress``, then per epoch ``train/epoch-N`` and ``eval/epoch-N``, and last ``inference``
(a fixed number of batches, for J and ms per image). A ``total`` window encloses them all.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from joulebench.compress import Baseline, CompressionReport, Method, compress
from joulebench.config import RunConfig
from joulebench.data import DataSplits, make_loader
from joulebench.energy import EnergyMonitor, Measurement

# Training FLOPs per sample ≈ forward + backward (twice the forward): the usual 3× rule.
TRAIN_FLOPS_PER_FORWARD = 3


@dataclass
class EpochResult:
    """One epoch: its loss, validation accuracy and the energy windows of training and eval."""

    epoch: int
    train_loss: float
    val_accuracy: float
    val_top5: float | None
    samples: int
    train: Measurement
    eval: Measurement

    def metrics(self) -> dict[str, float]:
        values = {
            "train_loss": self.train_loss,
            "val_accuracy": self.val_accuracy,
            "epoch_seconds": self.train.seconds,
            "eval_seconds": self.eval.seconds,
        }
        if self.val_top5 is not None:
            values["val_top5"] = self.val_top5
        if self.train.total_joules is not None:
            values["epoch_joules"] = self.train.total_joules
            values["epoch_mean_watts"] = self.train.mean_watts
        return values


@dataclass
class RunResult:
    """Everything a finished run produced; ``metrics()`` flattens it for the tracker."""

    config: RunConfig
    report: CompressionReport
    epochs: list[EpochResult] = field(default_factory=list)
    phases: dict[str, Measurement] = field(default_factory=dict)
    inference_images: int = 0
    model: nn.Module | None = None

    @property
    def final(self) -> EpochResult:
        return self.epochs[-1]

    def train_joules(self) -> float | None:
        return _sum_or_none(e.train.total_joules for e in self.epochs)

    def train_seconds(self) -> float:
        return sum(e.train.seconds for e in self.epochs)

    def idle_watts(self) -> float | None:
        idle = self.phases.get("idle")
        return idle.mean_watts if idle else None

    def net(self, joules: float | None, seconds: float) -> float | None:
        """Energy above the idle baseline (gross − idle watts × seconds)."""
        idle = self.idle_watts()
        return None if joules is None or idle is None else joules - idle * seconds

    def metrics(self) -> dict[str, float]:
        """Final metrics; keys missing where a value could not be measured (never 0)."""
        total = self.phases["total"]
        train_j, train_s = self.train_joules(), self.train_seconds()
        samples = sum(e.samples for e in self.epochs)
        after = self.report.after
        values: dict[str, float | None] = {
            "accuracy": self.final.val_accuracy,
            "top5": self.final.val_top5,
            "duration_s": total.seconds,
            "train_seconds": train_s,
            "train_samples": samples,
            "energy_total_j": total.total_joules,
            "energy_total_net_j": self.net(total.total_joules, total.seconds),
            "energy_train_j": train_j,
            "energy_train_net_j": self.net(train_j, train_s),
            "idle_watts": self.idle_watts(),
            "train_mean_watts": train_j / train_s if train_j is not None and train_s else None,
            "j_per_train_sample": train_j / samples if train_j is not None and samples else None,
            "parameters": after.parameters,
            "parameters_before": self.report.before.parameters,
            "nonzero_parameters": after.nonzero_parameters,
            "weight_bytes": after.weight_bytes,
            "flops_per_sample": after.flops_per_sample,
            "flops_per_sample_before": self.report.before.flops_per_sample,
        }
        for phase in ("compress", "inference"):
            if phase in self.phases:
                values[f"energy_{phase}_j"] = self.phases[phase].total_joules
        values["energy_eval_j"] = _sum_or_none(e.eval.total_joules for e in self.epochs)
        for key in ("energy_total_j", "energy_train_j"):
            if values[key] is not None:
                values[key.replace("_j", "_kwh")] = values[key] / 3.6e6
        if train_j:
            values["flop_per_j"] = TRAIN_FLOPS_PER_FORWARD * after.flops_per_sample * samples / train_j
        inference = self.phases.get("inference")
        if inference and self.inference_images:
            values["inference_ms_per_image"] = 1000 * inference.seconds / self.inference_images
            if inference.total_joules is not None:
                values["inference_j_per_image"] = inference.total_joules / self.inference_images
        for device, joules in total.joules.items():
            values[f"energy_total_j_{device}"] = joules
        return {key: float(value) for key, value in values.items() if value is not None}


def _sum_or_none(values: Iterator[float | None]) -> float | None:
    listed = list(values)
    return None if not listed or None in listed else sum(listed)


def seed_everything(seed: int) -> None:
    """Same seed, same run: Python, NumPy and torch RNGs, deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so a window closes on finished work, not on queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    config: RunConfig,
    data: DataSplits,
    model: nn.Module,
    method: Method,
    monitor: EnergyMonitor,
    on_epoch: Callable[[EpochResult], None] = lambda epoch: None,
    progress: bool = True,
) -> RunResult:
    """Idle baseline, compress, fine-tune ``config.epochs`` epochs, benchmark inference.

    ``on_epoch`` is called after every epoch, so a run stopped later keeps what it finished.
    """
    seed_everything(config.seed)
    device = torch.device(config.device)
    train_loader = make_loader(data.train, config.batch_size, True, config.seed, device)
    val_loader = make_loader(data.val, config.batch_size, False, config.seed, device)
    example = next(iter(val_loader))[0][:2].to(device)
    model = model.to(device)
    with monitor.window("total"):
        with monitor.window("idle"):
            time.sleep(config.idle_seconds)
        with monitor.window("compress"):
            model, report = compress(method, model, example)
            model = model.to(device)
            synchronize(device)
        result = RunResult(config, report, model=model)
        optimizer = make_optimizer(config, model)
        autocast = autocast_context(method, device)
        scaler = torch.amp.GradScaler(device.type, enabled=_needs_scaler(method, device))
        for epoch in range(1, config.epochs + 1):
            with monitor.window(f"train/epoch-{epoch}") as train_window:
                loss, samples = train_epoch(
                    model, train_loader, optimizer, scaler, method, autocast, device,
                    config.limit_train_batches, f"epoch {epoch}/{config.epochs}", progress,
                )
                synchronize(device)
            with monitor.window(f"eval/epoch-{epoch}") as eval_window:
                top1, top5 = evaluate(model, val_loader, autocast, device, data.num_classes)
                synchronize(device)
            epoch_result = EpochResult(
                epoch, loss, top1, top5, samples, train_window.measurement, eval_window.measurement
            )
            result.epochs.append(epoch_result)
            on_epoch(epoch_result)
        with monitor.window("inference"):
            result.inference_images = benchmark_inference(
                model, val_loader, autocast, device, config.inference_batches
            )
            synchronize(device)
    # Per-epoch windows ("train/epoch-N") live in the epochs; the rest are the run's phases.
    result.phases = {m.name: m for m in monitor.measurements if "/" not in m.name}
    return result


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=1e-4)
    return torch.optim.Adam(params, lr=config.lr)


def autocast_context(method: Method, device: torch.device) -> Callable[[], Any]:
    """A factory of the autocast context the method asks for (float32 when it asks none)."""
    dtype = method.autocast_dtype(device.type)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _needs_scaler(method: Method, device: torch.device) -> bool:
    # float16 gradients underflow without scaling; bfloat16 has float32's range and needs none.
    return device.type == "cuda" and method.autocast_dtype(device.type) == torch.float16


def classification_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; Inception's auxiliary head adds 0.4 × its loss, as torchvision trains it."""
    if hasattr(output, "aux_logits") and output.aux_logits is not None:
        return F.cross_entropy(output.logits, target) + 0.4 * F.cross_entropy(output.aux_logits, target)
    return F.cross_entropy(output, target)


def train_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    method: Method,
    autocast: Callable[[], Any],
    device: torch.device,
    limit_batches: int | None,
    description: str,
    progress: bool,
) -> tuple[float, int]:
    """One pass over ``loader``; returns the mean loss and the number of samples seen."""
    model.train()
    # The loss is summed on the device and read once per epoch: no per-step host sync.
    loss_sum = torch.zeros((), device=device)
    samples = 0
    batches = islice(loader, limit_batches)
    total = min(len(loader), limit_batches or len(loader))
    for images, labels in tqdm(batches, total=total, desc=description, disable=not progress, leave=False):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast():
            loss = classification_loss(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        method.after_optimizer_step(model)
        loss_sum += loss.detach().float() * len(labels)
        samples += len(labels)
    return loss_sum.item() / max(samples, 1), samples


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, autocast: Callable[[], Any], device: torch.device, num_classes: int
) -> tuple[float, float | None]:
    """Top-1 accuracy, and top-5 where there are more than five classes."""
    model.eval()
    top1 = torch.zeros((), device=device)
    top5 = torch.zeros((), device=device)
    seen = 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        ranked = logits.topk(min(5, num_classes), dim=1).indices
        hits = ranked == labels[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        seen += len(labels)
    return top1.item() / seen, (top5.item() / seen if num_classes > 5 else None)


@torch.no_grad()
def benchmark_inference(
    model: nn.Module, loader: Any, autocast: Callable[[], Any], device: torch.device, batches: int
) -> int:
    """Run ``batches`` forward passes (cycling the loader); returns the images processed."""
    model.eval()
    images_seen = 0
    for images, _ in islice(cycle(loader), batches):
        with autocast():
            model(images.to(device, non_blocking=True))
        images_seen += len(images)
    return images_seen


def fine_tune(config: RunConfig, data: DataSplits, model: nn.Module, progress: bool) -> nn.Module:
    """Plain float32 fine-tuning, no windows: trains the model a capacity curve is taken on."""
    seed_everything(config.seed)
    device = torch.device(config.device)
    model = model.to(device)
    loader = make_loader(data.train, config.batch_size, True, config.seed, device)
    optimizer = make_optimizer(config, model)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    for epoch in range(1, config.epochs + 1):
        train_epoch(
            model, loader, optimizer, scaler, Baseline(), nullcontext, device,
            config.limit_train_batches, f"fine-tune {epoch}/{config.epochs}", progress,
        )
    return model


def accuracy_evaluator(config: RunConfig, data: DataSplits) -> Callable[[nn.Module], float]:
    """A function giving a model's float32 top-1 validation accuracy."""
    device = torch.device(config.device)
    loader = make_loader(data.val, config.batch_size, False, config.seed, device)
    return lambda model: evaluate(model.to(device), loader, nullcontext, device, data.num_classes)[0]
