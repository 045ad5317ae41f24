"""The statistics of the report: mean ± 95 % CI over repeats, ratios with Welch's t-test,
and the energy spent to reach a target accuracy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
SIGNIFICANCE_MARKS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


@dataclass(frozen=True)
class Estimate:
    """Mean ± half-width of the 95 % confidence interval (t distribution) over repeats."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def ci95(self) -> float | None:
        if self.n < 2:
            return None
        sem = float(np.std(self.values, ddof=1)) / math.sqrt(self.n)
        return float(stats.t.ppf((1 + CONFIDENCE) / 2, self.n - 1)) * sem


@dataclass(frozen=True)
class Ratio:
    """A method's mean over its baseline's mean, and Welch's t-test between their repeats."""

    value: float | None
    p_value: float | None
    note: str  # the significance mark, or why there is no ratio or no test
    ci95: tuple[float, float] | None = None  # where the test is drawn and both means are positive

    @classmethod
    def against(cls, method: Estimate | None, baseline: Estimate | None) -> Ratio:
        if method is None or baseline is None:
            return cls(None, None, "not measured")
        value = method.mean / baseline.mean if baseline.mean else None
        if method.n < 2 or baseline.n < 2:
            return cls(value, None, "n/a (1 repeat)")
        if np.ptp(method.values) == 0 and np.ptp(baseline.values) == 0:  # e.g. FLOPs: t is undefined
            return cls(value, None, "n/a (no variance)")
        p_value = float(stats.ttest_ind(method.values, baseline.values, equal_var=False).pvalue)
        return cls(value, p_value, significance_mark(p_value), ratio_interval(method, baseline))


def ratio_interval(method: Estimate, baseline: Estimate) -> tuple[float, float] | None:
    """95 % confidence interval of the ratio of two means: the delta method on its logarithm
    (so the interval stays positive and symmetric in ratio terms), with Welch–Satterthwaite's
    degrees of freedom. None where a mean is not positive (a log ratio is undefined)."""
    if method.mean <= 0 or baseline.mean <= 0:
        return None
    parts = [float(np.var(e.values, ddof=1)) / (e.n * e.mean**2) for e in (method, baseline)]
    variance = sum(parts)
    if variance == 0:
        return None
    freedom = variance**2 / sum(part**2 / (e.n - 1) for part, e in zip(parts, (method, baseline)))
    half_width = float(stats.t.ppf((1 + CONFIDENCE) / 2, freedom)) * math.sqrt(variance)
    value = method.mean / baseline.mean
    return value * math.exp(-half_width), value * math.exp(half_width)


def significance_mark(p_value: float) -> str:
    return next((mark for limit, mark in SIGNIFICANCE_MARKS if p_value < limit), "ns")


def energy_to_accuracy(val_accuracy: list[tuple[int, float]], epoch_joules: list[tuple[int, float]],
                       target: float) -> float | None:
    """Cumulative training joules at the first epoch whose validation accuracy reaches ``target``."""
    joules_by_epoch = dict(epoch_joules)
    spent = 0.0
    for epoch, accuracy in val_accuracy:
        spent += joules_by_epoch[epoch]
        if accuracy >= target:
            return spent
    return None
