"""What a run produced and the metrics it reports: per-epoch and final results, net energy,
FLOP/J, the warm-up's share, and the short-run policy (when a run is too short to mean anything).

Plain data over the loop's energy windows; nothing here trains, and nothing knows MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from joulebench import names
from joulebench.compress import CompressionReport
from joulebench.config import RunConfig
from joulebench.energy import Measurement

# Training FLOPs per sample ≈ forward + backward (twice the forward): the usual 3× rule.
TRAIN_FLOPS_PER_FORWARD = 3
# A run is flagged short_run when training is shorter than MLPerf Power's minimum measurement
# time, or when its warm-up is more than this share of the training energy.
MIN_TRAIN_SECONDS = 60.0
MAX_WARMUP_SHARE = 0.10


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
        idle = self.phases.get(names.IDLE_PHASE)
        return idle.mean_watts if idle else None

    def net(self, joules: float | None, seconds: float) -> float | None:
        """Energy above the idle baseline (gross − idle watts × seconds)."""
        idle = self.idle_watts()
        return None if joules is None or idle is None else joules - idle * seconds

    def metrics(self) -> dict[str, float]:
        """Final metrics; keys missing where a value could not be measured (never 0)."""
        total = self.phases[names.TOTAL_PHASE]
        train_j, train_s = self.train_joules(), self.train_seconds()
        samples = sum(e.samples for e in self.epochs)
        after = self.report.after
        values: dict[str, float | None] = {
            names.ACCURACY: self.final.val_accuracy,
            names.TOP5: self.final.val_top5,
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
        for phase in (names.COMPRESS_PHASE, names.INFERENCE_PHASE):
            if phase in self.phases:
                values[f"energy_{phase}_j"] = self.phases[phase].total_joules
        values["energy_eval_j"] = _sum_or_none(e.eval.total_joules for e in self.epochs)
        for key in (names.ENERGY_TOTAL_J, names.ENERGY_TRAIN_J):
            if values[key] is not None:
                values[key.replace("_j", "_kwh")] = values[key] / 3.6e6
        if train_j:
            values[names.FLOP_PER_J] = TRAIN_FLOPS_PER_FORWARD * after.flops_per_sample * samples / train_j
        inference = self.phases.get(names.INFERENCE_PHASE)
        if inference and self.inference_images:
            values["inference_ms_per_image"] = 1000 * inference.seconds / self.inference_images
            if inference.total_joules is not None:
                values[names.INFERENCE_J_PER_IMAGE] = inference.total_joules / self.inference_images
        for device, joules in total.joules.items():
            values[f"{names.ENERGY_TOTAL_J}_{device}"] = joules
        if self.warmup is not None:
            values["warmup_seconds"] = self.warmup.seconds
            values["energy_warmup_j"] = self.warmup.total_joules
            values[names.WARMUP_SHARE] = self.warmup_share()
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
