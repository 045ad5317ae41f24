"""The fine-tuning loop. Every phase runs inside an energy window; nothing here knows MLflow.

Phases, in order, each its own window: ``idle`` (the machine at rest, for net energy),
``compress``, then per epoch ``train/epoch-N`` and ``eval/epoch-N``, and last ``inference``
(a fixed number of batches, for J and ms per image). A ``total`` window encloses them all;
``warmup/epoch-1`` (the first steps of epoch 1: kernel selection, allocator growth) lies inside
``train/epoch-1``, so its share of the training energy is visible.

Every arm, the baseline included, runs the same best-practice path for its device
(:class:`ComputeSettings`): channels_last for models with 2-D convolutions, cuDNN autotuning
unless ``--deterministic``, an explicit float32 precision policy (TF32 on CUDA unless
``--tf32 false``), fused optimisers, no host sync per step. A method changes only what its
arithmetic changes: the stored dtype of the weights, an autocast, passes around the step.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from itertools import cycle, islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from joulebench import names
from joulebench.compress import Baseline, CompressionReport, Method, OptimizerWithPasses, compress
from joulebench.compress.base import OptimizerFactory
from joulebench.config import RunConfig
from joulebench.data import DataSplits, make_loader
from joulebench.energy import EnergyMonitor, Measurement
from joulebench.errors import ConfigError

# Training FLOPs per sample ≈ forward + backward (twice the forward): the usual 3× rule.
TRAIN_FLOPS_PER_FORWARD = 3
WARMUP_PHASE = "warmup"  # its window is the first WARMUP_STEPS of epoch 1, inside train/epoch-1
WARMUP_STEPS = 3  # first steps of epoch 1: cuDNN's kernel search, allocator growth, Adam's state
# A run is flagged short_run when training is shorter than MLPerf Power's minimum measurement
# time, or when its warm-up is more than this share of the training energy.
MIN_TRAIN_SECONDS = 60.0
MAX_WARMUP_SHARE = 0.10
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")  # torch.optim's fused Adam and SGD run on these
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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
            names.VAL_ACCURACY: self.val_accuracy,
            "epoch_seconds": self.train.seconds,
            "eval_seconds": self.eval.seconds,
        }
        if self.val_top5 is not None:
            values["val_top5"] = self.val_top5
        if self.train.total_joules is not None:
            values[names.EPOCH_JOULES] = self.train.total_joules
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
    warmup: Measurement | None = None

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
            names.ACCURACY: self.final.val_accuracy,
            "top5": self.final.val_top5,
            names.DURATION_S: total.seconds,
            names.TRAIN_SECONDS: train_s,
            "train_samples": samples,
            names.ENERGY_TOTAL_J: total.total_joules,
            names.ENERGY_TOTAL_NET_J: self.net(total.total_joules, total.seconds),
            names.ENERGY_TRAIN_J: train_j,
            names.ENERGY_TRAIN_NET_J: self.net(train_j, train_s),
            "idle_watts": self.idle_watts(),
            "train_mean_watts": train_j / train_s if train_j is not None and train_s else None,
            names.J_PER_TRAIN_SAMPLE: train_j / samples if train_j is not None and samples else None,
            names.PARAMETERS: after.parameters,
            "parameters_before": self.report.before.parameters,
            "nonzero_parameters": after.nonzero_parameters,
            names.WEIGHT_BYTES: after.weight_bytes,
            names.FLOPS_PER_SAMPLE: after.flops_per_sample,
            "flops_per_sample_before": self.report.before.flops_per_sample,
        }
        for phase in ("compress", "inference"):
            if phase in self.phases:
                values[f"energy_{phase}_j"] = self.phases[phase].total_joules
        values["energy_eval_j"] = _sum_or_none(e.eval.total_joules for e in self.epochs)
        for key in (names.ENERGY_TOTAL_J, names.ENERGY_TRAIN_J):
            if values[key] is not None:
                values[key.replace("_j", "_kwh")] = values[key] / 3.6e6
        if train_j:
            values[names.FLOP_PER_J] = TRAIN_FLOPS_PER_FORWARD * after.flops_per_sample * samples / train_j
        inference = self.phases.get("inference")
        if inference and self.inference_images:
            values["inference_ms_per_image"] = 1000 * inference.seconds / self.inference_images
            if inference.total_joules is not None:
                values[names.INFERENCE_J_PER_IMAGE] = inference.total_joules / self.inference_images
        for device, joules in total.joules.items():
            values[f"{names.ENERGY_TOTAL_J}_{device}"] = joules
        if self.warmup is not None:
            values["warmup_seconds"] = self.warmup.seconds
            values["energy_warmup_j"] = self.warmup.total_joules
            values["warmup_share"] = self.warmup_share()
        return {key: float(value) for key, value in values.items() if value is not None}

    def warmup_share(self) -> float | None:
        """The warm-up's share of the training energy — of the training time where no meter
        read both."""
        return self._warmup_share_of()[0]

    def _warmup_share_of(self) -> tuple[float | None, str]:
        """(the warm-up's share, what it is a share of: "energy" or "time")."""
        if self.warmup is None:
            return None, "time"
        train_j = self.train_joules()
        if self.warmup.total_joules is not None and train_j:
            return self.warmup.total_joules / train_j, "energy"
        seconds = self.train_seconds()
        return (self.warmup.seconds / seconds if seconds else None), "time"

    def short_run(self) -> str | None:
        """Why this run is too short to mean anything, or None: training under MLPerf Power's
        60 s minimum, or a warm-up over 10 % of the training energy."""
        reasons = []
        seconds = self.train_seconds()
        if seconds < MIN_TRAIN_SECONDS:
            reasons.append(f"training {seconds:.1f} s < {MIN_TRAIN_SECONDS:.0f} s (MLPerf Power's minimum)")
        share, of = self._warmup_share_of()
        if share is not None and share > MAX_WARMUP_SHARE:
            reasons.append(f"warm-up {100 * share:.0f} % of training {of} > {100 * MAX_WARMUP_SHARE:.0f} %")
        return "; ".join(reasons) or None


def _sum_or_none(values: Iterator[float | None]) -> float | None:
    listed = list(values)
    return None if not listed or None in listed else sum(listed)


@dataclass(frozen=True)
class ComputeSettings:
    """The training path a run computes on — the same for every arm on a device, except what
    the method's arithmetic changes (stored dtype, autocast). Recorded as ``compute.*``."""

    device: torch.device
    channels_last: bool  # the model has 2-D convolutions
    deterministic: bool
    tf32: bool  # float32 matmuls and convolutions in TF32 (CUDA; CPUs compute float32 as IEEE)
    fused_optimizer: bool
    stored_dtype: torch.dtype | None  # the method stores the weights in it (stego: bfloat16)
    autocast_dtype: torch.dtype | None  # the method autocasts to it (stego dtype=float16)
    emulated: str | None  # why the hardware emulates the method's precision, if it does

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.stored_dtype or self.autocast_dtype or torch.float32

    def params(self) -> dict[str, str]:
        """What the run records about its training path."""
        cuda = self.device.type == "cuda"
        return {
            "compute.memory_format": "channels_last" if self.channels_last else "contiguous",
            "compute.cudnn": ("deterministic" if self.deterministic else "benchmark") if cuda else "n/a (cpu)",
            "compute.float32_precision": "tf32" if cuda and self.tf32 else "ieee",
            "compute.optimizer": "fused" if self.fused_optimizer else "foreach",
            "compute.weights_dtype": _dtype_name(self.stored_dtype or torch.float32),
            "compute.autocast": _dtype_name(self.autocast_dtype) if self.autocast_dtype else "none",
            "compute.dtype": _dtype_name(self.compute_dtype),
        }

    def apply_backends(self) -> None:
        """Set PyTorch's global kernel choices to these settings (before any work)."""
        torch.backends.cudnn.benchmark = not self.deterministic
        torch.backends.cudnn.deterministic = self.deterministic
        torch.use_deterministic_algorithms(self.deterministic, warn_only=True)
        precision = "tf32" if self.tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images as the model takes it: on the device, in the stored dtype and the
        memory format of the weights."""
        images = images.to(self.device, dtype=self.stored_dtype or images.dtype, non_blocking=True)
        return images.contiguous(memory_format=self.memory_format) if images.dim() == 4 else images

    def autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def compute_settings(config: RunConfig, model: nn.Module, method: Method) -> ComputeSettings:
    """The training path for ``config``'s device and this model and method (``autocast_dtype``
    raises ConfigError for a precision the device cannot run)."""
    device = torch.device(config.device)
    if config.batch_size < 2 and any(isinstance(m, BATCH_NORMS) for m in model.modules()):
        raise ConfigError(f"--batch-size {config.batch_size} cannot train {config.model}: its BatchNorm "
                          "layers need at least 2 samples per batch; pass --batch-size 2 or more")
    stored, autocast = method.stored_dtype(), method.autocast_dtype(device.type)
    return ComputeSettings(
        device=device,
        channels_last=any(isinstance(m, nn.Conv2d) for m in model.modules()),
        deterministic=config.deterministic,
        tf32=config.tf32,
        fused_optimizer=device.type in FUSED_OPTIMIZER_DEVICES,
        stored_dtype=stored,
        autocast_dtype=autocast,
        emulated=emulated_precision(stored or autocast, device),
    )


def native_bfloat16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); PyTorch's probes."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def emulated_precision(dtype: torch.dtype | None, device: torch.device) -> str | None:
    """Why ``device`` would emulate ``dtype`` (no native units: PyTorch falls back to reference
    kernels and the energy says nothing about the method), or None where it is native."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    name = _dtype_name(dtype)
    if device.type == "cpu":
        if dtype == torch.bfloat16 and not native_bfloat16_cpu():
            return ("cpu: no native bfloat16 (AVX512-BF16/AMX); PyTorch runs reference kernels "
                    "(about 26× slower on an AVX2 host)")
        return None
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        needed = (8, 0) if dtype == torch.bfloat16 else (7, 0)
        if (major, minor) < needed:
            return (f"cuda: compute capability {major}.{minor} has no {name} tensor cores "
                    f"(needs {needed[0]}.{needed[1]})")
    return None


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
    with monitor.window("total"):
        with monitor.window("idle"):
            time.sleep(config.idle_seconds)
        with monitor.window("compress"):
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
        with monitor.window("inference"):
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
