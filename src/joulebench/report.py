"""``joulebench report``: finished runs → side-by-side table, significance vs baseline, plots.

Runs are grouped by dataset, device and training settings and never averaged across groups.
Within a group there is one row per model × method: each metric as mean ± 95 % CI over
repeats (t distribution), and its ratio to the same model's baseline, marked by a Welch t-test.
Energy-to-accuracy is read from each run's per-epoch history: the cumulative training energy
at the first epoch whose validation accuracy reaches the target (by default 99 % of the
baseline's final accuracy).

Outputs: ``summary.csv`` (raw units), ``summary.md``, PNG plots and a self-contained
``report.html``; all are also logged on a ``report`` run so they can be browsed in the UI.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from joulebench import names, tracking
from joulebench.compress import METHODS
from joulebench.errors import ConfigError
from joulebench.tracking import RunRecord

BASELINE = "baseline"
CONFIDENCE = 0.95
# Params that make runs incomparable (they split groups); model, image size and method split rows.
# Runs logged before a param existed lack it: "None" is then its own value, never a KeyError.
GROUP_PARAMS = ("dataset", "weights", "epochs", "batch_size", "lr", "optimizer", "limit_train_batches",
                "deterministic", "tf32")
SIGNIFICANCE_MARKS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


@dataclass(frozen=True)
class Caveat:
    """A run tag ``train`` sets (its value the reason) when the run's energy says nothing about the method.

    A row any of whose runs carries it is marked, and no significance is drawn for it, nor for
    the rows whose baseline it is: a t-test on such energies would only lend them weight.
    """

    tag: str
    marker: str
    withheld: str  # the note in place of the Welch mark: "n/a (short run)"
    meaning: str  # the legend's words


CAVEATS = (
    Caveat(names.SHORT_RUN, "†", "short run", "too short to measure (MLPerf Power's minimums)"),
    Caveat(names.COMPUTE_EMULATED, "‡", "emulated", "the hardware emulates the method's precision"),
)


@dataclass(frozen=True)
class Metric:
    """A column: the MLflow metric, its label and display scale, whether it gets a ratio."""

    key: str
    label: str
    scale: float = 1.0
    ratio: bool = False


ENERGY_TO_ACCURACY = "energy_to_accuracy_j"  # computed here from the epoch histories
METRICS = (
    Metric(names.ACCURACY, "accuracy", ratio=True),
    Metric(names.ENERGY_TRAIN_J, "train kJ", 1e-3, ratio=True),
    Metric(names.ENERGY_TRAIN_NET_J, "train kJ (net)", 1e-3, ratio=True),
    Metric(names.ENERGY_TOTAL_J, "total kJ", 1e-3, ratio=True),
    Metric(names.TRAIN_SECONDS, "train s", ratio=True),
    Metric(names.DURATION_S, "total s"),
    Metric(names.J_PER_TRAIN_SAMPLE, "J/sample"),
    Metric(names.INFERENCE_J_PER_IMAGE, "inference J/image"),
    Metric(names.FLOPS_PER_SAMPLE, "GFLOP/sample", 1e-9, ratio=True),
    Metric(names.PARAMETERS, "parameters (M)", 1e-6),
    Metric(names.WEIGHT_BYTES, "weights (MB)", 1e-6),
    Metric(names.FLOP_PER_J, "GFLOP/J", 1e-9),
    Metric(ENERGY_TO_ACCURACY, "kJ to target accuracy", 1e-3),
)
# The ratios summary.md shows beside the values (summary.csv has every ratio).
TABLE_RATIOS = (names.ENERGY_TRAIN_J, names.TRAIN_SECONDS, names.ACCURACY, names.FLOPS_PER_SAMPLE)


# --------------------------------------------------------------------------- statistics


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
        return cls(value, p_value, significance_mark(p_value))


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


# --------------------------------------------------------------------------- grouping


@dataclass(frozen=True)
class GroupKey:
    """Runs that may be compared: same dataset, device and training settings."""

    dataset: str
    device: str
    settings: tuple[tuple[str, str], ...]

    @property
    def title(self) -> str:
        settings = ", ".join(f"{key}={value}" for key, value in self.settings if key != "dataset")
        return f"{self.dataset} · {self.device} · {settings}"


@dataclass(frozen=True)
class RowKey:
    model: str
    image_size: str
    method: str  # with non-default parameters: "prune (amount=0.7)"


@dataclass
class Row:
    """One model × method of a group: its runs and what the report says about them."""

    key: RowKey
    runs: list[RunRecord]
    estimates: dict[str, Estimate | None] = field(default_factory=dict)
    ratios: dict[str, Ratio] = field(default_factory=dict)
    energy_source: str = ""
    target_accuracy: float | None = None
    energy_to_accuracy_note: str = ""  # why there is no value, or how many repeats reached it
    caveats: dict[str, str] = field(default_factory=dict)  # caveat tag → its runs' reasons
    voided_by: tuple[Caveat, ...] = ()  # the caveats of this row and of its baseline: no significance

    @property
    def is_baseline(self) -> bool:
        return self.key.method == BASELINE

    @property
    def marks(self) -> tuple[Caveat, ...]:
        return tuple(caveat for caveat in CAVEATS if caveat.tag in self.caveats)

    @property
    def label(self) -> str:
        """The method with its caveats' markers: "stego †"."""
        markers = "".join(caveat.marker for caveat in self.marks)
        return f"{self.key.method} {markers}" if markers else self.key.method

    @property
    def withheld(self) -> str:
        """The note in place of a significance mark, "n/a (short run)"; "" where a test may be drawn."""
        return f"n/a ({', '.join(c.withheld for c in self.voided_by)})" if self.voided_by else ""


def device_label(run: RunRecord) -> str:
    """A GPU by its name (same model, same device); a CPU by its host."""
    if run.params.get("device", "cpu").startswith("cuda"):
        return run.tags.get(names.GPU_NAME, run.params["device"])
    return f"cpu@{run.tags.get(names.HOST, 'unknown host')}"


def method_label(run: RunRecord) -> str:
    """The method, with the parameters that differ from its defaults."""
    method = run.params["method"]
    specs = METHODS[method].params if method in METHODS else {}
    changed = [
        f"{key}={run.params[names.method_param(key)]}" for key, spec in specs.items()
        if run.params.get(names.method_param(key), str(spec.default)) != str(spec.default)
    ]
    return f"{method} ({', '.join(changed)})" if changed else method


def group_runs(runs: list[RunRecord]) -> dict[GroupKey, dict[RowKey, list[RunRecord]]]:
    groups: dict[GroupKey, dict[RowKey, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        group = GroupKey(run.params.get("dataset", "?"), device_label(run),
                         tuple((key, run.params.get(key, "None")) for key in GROUP_PARAMS))
        row = RowKey(run.params["model"], run.params.get("image_size", "?"), method_label(run))
        groups[group][row].append(run)
    return groups


def latest_per_config(runs: list[RunRecord]) -> list[RunRecord]:
    """One run per config hash: a forced rerun replaces, never doubles, a repeat."""
    latest: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        latest[run.tags[names.CONFIG_HASH]] = run
    return list(latest.values())


# --------------------------------------------------------------------------- the rows


History = Callable[[str, str], list[tuple[int, float]]]  # (run id, metric) → [(step, value)]


def summarise_group(
    rows: dict[RowKey, list[RunRecord]], target_fraction: float, history: History
) -> list[Row]:
    """Estimates, energy-to-accuracy and ratios for every row of one group, baselines first."""
    summarised = [Row(key, runs) for key, runs in sorted(rows.items(), key=_row_order)]
    baselines = {(row.key.model, row.key.image_size): row for row in summarised if row.is_baseline}
    for row in summarised:
        row.estimates = {m.key: _estimate(row.runs, m.key) for m in METRICS if m.key != ENERGY_TO_ACCURACY}
        sources = sorted({run.tags.get(names.ENERGY_SOURCE, "none") for run in row.runs})
        row.energy_source = sources[0] if len(sources) == 1 else "mixed: " + " | ".join(sources)
        row.caveats = _caveats(row.runs)
    for row in summarised:
        baseline = baselines.get((row.key.model, row.key.image_size))
        _energy_to_accuracy(row, baseline, target_fraction, history)
    for row in summarised:
        baseline = baselines.get((row.key.model, row.key.image_size))
        row.voided_by = _voided_by(row, baseline)
        row.ratios = {m.key: _ratio(row, baseline, m.key) for m in METRICS if m.ratio}
    return summarised


def _caveats(runs: list[RunRecord]) -> dict[str, str]:
    """Each caveat any run carries, with the runs' distinct reasons (a reason may hold "; ")."""
    reasons = {caveat.tag: sorted({run.tags[caveat.tag] for run in runs if run.tags.get(caveat.tag)})
               for caveat in CAVEATS}
    return {tag: " | ".join(found) for tag, found in reasons.items() if found}


def _voided_by(row: Row, baseline: Row | None) -> tuple[Caveat, ...]:
    """The caveats of the row or its baseline: a ratio to a short baseline is no evidence either."""
    marked = [row.caveats] + ([baseline.caveats] if baseline is not None else [])
    return tuple(caveat for caveat in CAVEATS if any(caveat.tag in caveats for caveats in marked))


def _ratio(row: Row, baseline: Row | None, key: str) -> Ratio:
    if row.is_baseline:
        return Ratio(1.0, None, BASELINE)
    if baseline is None:
        return Ratio(None, None, "no baseline")
    ratio = Ratio.against(row.estimates[key], baseline.estimates[key])
    if row.withheld and ratio.value is not None:  # the ratio is still what was measured
        return Ratio(ratio.value, None, row.withheld)
    return ratio


def _row_order(item: tuple[RowKey, list[RunRecord]]) -> tuple:
    key, _ = item
    return (key.model, key.image_size, key.method != BASELINE, key.method)


def _estimate(runs: list[RunRecord], key: str) -> Estimate | None:
    values = tuple(run.metrics[key] for run in runs if key in run.metrics)
    return Estimate(values) if values else None


def _energy_to_accuracy(row: Row, baseline: Row | None, target_fraction: float, history: History) -> None:
    if baseline is None or baseline.estimates[names.ACCURACY] is None:
        row.estimates[ENERGY_TO_ACCURACY], row.energy_to_accuracy_note = None, "no baseline"
        return
    row.target_accuracy = target_fraction * baseline.estimates[names.ACCURACY].mean
    joules = [history(run.run_id, names.EPOCH_JOULES) for run in row.runs]
    if not all(joules):  # epoch energy is absent where nothing could measure it
        row.estimates[ENERGY_TO_ACCURACY], row.energy_to_accuracy_note = None, "not measured"
        return
    reached = [
        energy_to_accuracy(history(run.run_id, names.VAL_ACCURACY), epoch_joules, row.target_accuracy)
        for run, epoch_joules in zip(row.runs, joules)
    ]
    values = tuple(value for value in reached if value is not None)
    row.estimates[ENERGY_TO_ACCURACY] = Estimate(values) if len(values) == len(reached) else None
    if not values:
        row.energy_to_accuracy_note = "not reached"
    elif len(values) < len(reached):
        row.energy_to_accuracy_note = f"not reached in {len(reached) - len(values)} of {len(reached)} repeats"


# --------------------------------------------------------------------------- formatting


def format_number(value: float) -> str:
    """Three significant digits, no exponent for the magnitudes a report shows."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{digits}f}"


def format_estimate(estimate: Estimate | None, scale: float, missing: str = "not measured") -> str:
    if estimate is None:
        return missing
    mean = format_number(estimate.mean * scale)
    return mean if estimate.ci95 is None else f"{mean} ± {format_number(estimate.ci95 * scale)}"


def format_ratio(ratio: Ratio) -> str:
    if ratio.value is None or ratio.note == BASELINE:
        return ratio.note
    text = f"{ratio.value:.3f}×"
    if ratio.p_value is None:
        return f"{text} {ratio.note}"
    return f"{text} {ratio.note} (p={ratio.p_value:.2g})"


def table_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """The human table (summary.md and report.html): header and cells."""
    header = ["model", "px", "method", "n"] + [m.label for m in METRICS] + ["energy source"]
    header += [f"{_metric(key).label} vs baseline" for key in TABLE_RATIOS]
    cells = []
    for row in rows:
        line = [row.key.model, row.key.image_size, row.label, str(len(row.runs))]
        for metric in METRICS:
            missing = (metric.key == ENERGY_TO_ACCURACY and row.energy_to_accuracy_note) or "not measured"
            line.append(format_estimate(row.estimates.get(metric.key), metric.scale, missing))
        line.append(row.energy_source)
        line += [format_ratio(row.ratios[key]) for key in TABLE_RATIOS]
        cells.append(line)
    return header, cells


def _metric(key: str) -> Metric:
    return next(metric for metric in METRICS if metric.key == key)


def footnotes(rows: list[Row]) -> list[str]:
    """A line per marked row under its table: the caveat, on how many of its runs, and why."""
    lines = []
    for row in rows:
        for caveat in row.marks:
            count = sum(bool(run.tags.get(caveat.tag)) for run in row.runs)
            lines.append(f"{caveat.marker} {caveat.withheld}: {row.key.model} · {row.key.image_size} px · "
                         f"{row.key.method}, {count} of {len(row.runs)} runs: {row.caveats[caveat.tag]}")
    return lines


def csv_rows(group: GroupKey, rows: list[Row]) -> list[dict[str, Any]]:
    """summary.csv: raw units (J, s, FLOP, bytes), one column per number."""
    out = []
    for row in rows:
        record: dict[str, Any] = {
            "dataset": group.dataset, "device": group.device,
            "settings": "; ".join(f"{k}={v}" for k, v in group.settings if k != "dataset"),
            "model": row.key.model, "image_size": row.key.image_size, "method": row.key.method,
            "n": len(row.runs), "energy_source": row.energy_source,
            **{caveat.tag: row.caveats.get(caveat.tag, "") for caveat in CAVEATS},
            "target_accuracy": "" if row.target_accuracy is None else row.target_accuracy,
            "energy_to_accuracy_note": row.energy_to_accuracy_note,
        }
        for metric in METRICS:
            estimate = row.estimates.get(metric.key)
            record[f"{metric.key}_mean"] = "" if estimate is None else estimate.mean
            record[f"{metric.key}_ci95"] = "" if estimate is None or estimate.ci95 is None else estimate.ci95
            if metric.ratio:
                ratio = row.ratios[metric.key]
                record[f"{metric.key}_ratio"] = "" if ratio.value is None else ratio.value
                record[f"{metric.key}_p"] = "" if ratio.p_value is None else ratio.p_value
                record[f"{metric.key}_significance"] = ratio.note
        out.append(record)
    return out


def markdown_table(header: list[str], cells: list[list[str]]) -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731 - a cell may hold "a | b"
    lines = ["| " + " | ".join(escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(c) for c in line) + " |" for line in cells]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


# How plots tell a marked row (a caveat: short run, emulated) from a comparable one.
MARKED_HATCH = "//"


def _present(marks: list[tuple[Caveat, ...]]) -> tuple[Caveat, ...]:
    return tuple(caveat for caveat in CAVEATS if any(caveat in found for found in marks))


def _marked_label(style: str, caveats: tuple[Caveat, ...], whose: str = "") -> str:
    return f"{style}: {', '.join(f'{c.marker} {c.withheld}' for c in caveats)} ({whose}not comparable)"


def _annotate_marks(axes: Any, row: Row, point: tuple[float, float]) -> None:
    axes.annotate("".join(caveat.marker for caveat in row.marks), point, xytext=(0, 3),
                  textcoords="offset points", ha="center", fontsize="small")


def _energy_sources(rows: list[Row]) -> str:
    """Every plot says what measured its energy: an estimate must not pass for a meter."""
    sources = {run.tags.get(names.ENERGY_SOURCE, "none") for row in rows for run in row.runs}
    return "energy source: " + ", ".join(sorted(sources))


def _scatter(axes: Any, point: tuple[float, float], color: Any, marker: str, hollow: bool) -> None:
    face = "none" if hollow else color
    axes.scatter(*point, facecolors=face, edgecolors=color, marker=marker, zorder=3)


def plot_energy_by_model(rows: list[Row], path: Path) -> bool:
    """Mean training energy per model, one bar per method, 95 % CI as error bars."""
    measured = [row for row in rows if row.estimates[names.ENERGY_TRAIN_J]]
    if not measured:
        return False
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    models = list(dict.fromkeys(row.key.model for row in measured))
    methods = list(dict.fromkeys(row.key.method for row in measured))
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(models) * len(methods) ** 0.5), 4.5))
    handles = []  # plain patches: a method's legend entry must not take its first bar's hatch
    for index, method in enumerate(methods):
        by_model = {row.key.model: row for row in measured if row.key.method == method}
        estimates = [by_model[m].estimates[names.ENERGY_TRAIN_J] if m in by_model else None for m in models]
        means = [e.mean / 1e3 if e else np.nan for e in estimates]
        errors = [(e.ci95 or 0) / 1e3 if e else 0 for e in estimates]
        positions = np.arange(len(models)) + (index - (len(methods) - 1) / 2) * width
        bars = axes.bar(positions, means, width, yerr=errors, capsize=3)
        handles.append(Patch(facecolor=bars.patches[0].get_facecolor(), label=method))
        for bar, model, error in zip(bars, models, errors):
            if model in by_model and by_model[model].marks:
                bar.set_hatch(MARKED_HATCH)
                top = (bar.get_x() + bar.get_width() / 2, bar.get_height() + error)  # above the error bar
                _annotate_marks(axes, by_model[model], top)
    axes.set_xticks(np.arange(len(models)), models, rotation=20)
    axes.set_ylabel("training energy (kJ)")
    axes.set_title(f"Training energy per model, by method (mean ± 95 % CI)\n{_energy_sources(measured)}")
    caveats = _present([row.marks for row in measured])
    if caveats:
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch=MARKED_HATCH,
                             label=_marked_label("hatched", caveats)))
    axes.legend(handles=handles, fontsize="small")
    _save(figure, path)
    return True


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both less energy and more accuracy, by energy."""
    front, best = [], -math.inf
    for energy, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((energy, accuracy))
            best = accuracy
    return front


def plot_accuracy_vs_energy(rows: list[Row], path: Path) -> bool:
    """Each row as a point; each model's Pareto front as a step line."""
    measured = [row for row in rows if row.estimates[names.ENERGY_TRAIN_J] and row.estimates[names.ACCURACY]]
    if not measured:
        return False
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    markers = dict(zip(dict.fromkeys(row.key.method for row in measured), "os^Dv<>pPX*h"))
    for model in dict.fromkeys(row.key.model for row in measured):
        points = [(row, (row.estimates[names.ENERGY_TRAIN_J].mean / 1e3, row.estimates[names.ACCURACY].mean))
                  for row in measured if row.key.model == model]
        color = axes.plot([], [])[0].get_color()  # the next colour of the cycle, one per model
        for row, point in points:
            _scatter(axes, point, color, markers[row.key.method], hollow=bool(row.marks))
            if row.marks:
                _annotate_marks(axes, row, point)
        # A marked row's energy says nothing about its method: it may not set the front.
        front = pareto_front([point for row, point in points if not row.marks])
        if front:
            axes.step(*zip(*front), where="post", color=color, alpha=0.6, label=f"{model} (Pareto front)")
    for method, marker in markers.items():
        axes.scatter([], [], color="grey", marker=marker, label=method)
    caveats = _present([row.marks for row in measured])
    if caveats:
        axes.scatter([], [], facecolors="none", edgecolors="grey", label=_marked_label("hollow", caveats))
    axes.set_xlabel("training energy (kJ)")
    axes.set_ylabel("validation accuracy")
    axes.set_title(f"Accuracy vs training energy\n{_energy_sources(measured)}")
    axes.legend(fontsize="small")
    _save(figure, path)
    return True


def plot_energy_vs_flops(rows: list[Row], path: Path) -> bool:
    """Energy ratio vs FLOP ratio to baseline: on the diagonal, the saved energy is saved compute."""
    plotted = [row for row in rows if not row.is_baseline
               and row.ratios[names.FLOPS_PER_SAMPLE].value and row.ratios[names.ENERGY_TRAIN_J].value]
    if not plotted:
        return False
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 6))
    for method in dict.fromkeys(row.key.method for row in plotted):
        color = axes.plot([], [])[0].get_color()  # the next colour of the cycle, one per method
        axes.scatter([], [], color=color, label=method)
        for row in (row for row in plotted if row.key.method == method):
            point = (row.ratios[names.FLOPS_PER_SAMPLE].value, row.ratios[names.ENERGY_TRAIN_J].value)
            # A ratio is void when either side is marked: hollow, the row's or its baseline's marks.
            _scatter(axes, point, color, "o", hollow=bool(row.voided_by))
            marks = "".join(caveat.marker for caveat in row.voided_by)
            axes.annotate(f"{row.key.model} {marks}".strip(), point, fontsize="x-small", xytext=(3, 3),
                          textcoords="offset points")
    caveats = _present([row.voided_by for row in plotted])
    if caveats:
        axes.scatter([], [], facecolors="none", edgecolors="grey",
                     label=_marked_label("hollow", caveats, "row or its baseline: "))
    limit = max([1.2, *axes.get_xlim(), *axes.get_ylim()])
    axes.plot([0, limit], [0, limit], color="grey", linestyle="--", label="energy falls as FLOPs fall")
    axes.set_xlim(0, limit)
    axes.set_ylim(0, limit)
    axes.set_xlabel("FLOPs per sample / baseline")
    axes.set_ylabel("training energy / baseline")
    axes.set_title(f"Mechanism: does energy follow compute?\n{_energy_sources(plotted)}")
    axes.legend(fontsize="small")
    _save(figure, path)
    return True


def _nothing_to_plot(path: Path, name: str) -> None:
    """A figure saying why ``name`` has no points (the HTML page leaves it out)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.axis("off")
    axes.text(0.5, 0.5, f"{name.replace('_', ' ')}: nothing to plot\n(no measured training energy, "
              "or no baseline to compare with;\nsee the runs' energy_flags tags)",
              ha="center", va="center", wrap=True)
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


PLOTS = (
    ("energy_by_model", plot_energy_by_model),
    ("accuracy_vs_energy", plot_accuracy_vs_energy),
    ("energy_vs_flops", plot_energy_vs_flops),
)


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """The summarised groups and the files written for them."""

    groups: list[tuple[GroupKey, list[Row]]]
    files: list[Path]
    run_count: int
    report_run_id: str | None = None


def build_report(
    runs: list[RunRecord], target_fraction: float, history: History
) -> list[tuple[GroupKey, list[Row]]]:
    """The groups, each with its rows summarised; a config hash counts once (its latest run)."""
    groups = group_runs(latest_per_config(runs))
    return [(key, summarise_group(rows, target_fraction, history))
            for key, rows in sorted(groups.items(), key=lambda item: item[0].title)]


def write_report(groups: list[tuple[GroupKey, list[Row]]], out: Path) -> list[Path]:
    """summary.csv, summary.md, each group's plots (those it has data for) and report.html."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, html_path = out / "summary.csv", out / "summary.md", out / "report.html"
    records = [record for group, rows in groups for record in csv_rows(group, rows)]
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    sections, plots = [], []
    for index, (group, rows) in enumerate(groups):
        suffix = "" if len(groups) == 1 else f"_{index + 1}"
        images = []
        for name, plot in PLOTS:
            path = out / f"{name}{suffix}.png"
            if plot(rows, path):
                images.append(path)
            else:  # the file still exists, so pipelines that declare it (dvc.yaml) always find it
                _nothing_to_plot(path, name)
            plots.append(path)
        sections.append((group, table_rows(rows), footnotes(rows), images))
    md_path.write_text(_markdown(sections))
    html_path.write_text(_html(sections))
    return [csv_path, md_path, html_path, *plots]


# A group's title, table (header, cells), footnotes and plots, as summary.md and report.html show them.
Section = tuple[GroupKey, tuple[list[str], list[list[str]]], list[str], list[Path]]


def _markdown(sections: list[Section]) -> str:
    parts = ["# joulebench report", "", _LEGEND, ""]
    for group, (header, cells), notes, images in sections:
        parts += [f"## {group.title}", "", markdown_table(header, cells), ""]
        parts += [f"- {note}" for note in notes] + ([""] if notes else [])
        parts += [f"![{image.stem}]({image.name})" for image in images] + [""]
    return "\n".join(parts)


def _html(sections: list[Section]) -> str:
    """One file, images inlined as data URIs: it opens offline, mailed or archived alone."""
    body = [f"<h1>joulebench report</h1><p>{html.escape(_LEGEND)}</p>"]
    for group, (header, cells), notes, images in sections:
        body.append(f"<h2>{html.escape(group.title)}</h2><table><tr>"
                    + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells]
        body.append("</table>")
        body += [f"<p>{html.escape(note)}</p>" for note in notes]
        for image in images:
            data = base64.b64encode(image.read_bytes()).decode()
            body.append(f'<figure><img alt="{image.stem}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;white-space:nowrap}img{max-width:100%}")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>joulebench report</title>'
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


_LEGEND = (
    "Values are mean ± half-width of the 95 % confidence interval over repeats (t distribution). "
    "Ratios are to the same model's baseline in the same group; marks come from Welch's t-test "
    "over the repeats: *** p<0.001, ** p<0.01, * p<0.05, ns otherwise. Train energy is gross "
    "(net subtracts idle power). Energy sources other than nvml_counter, nvml_power and rapl "
    "are estimates. "
    + " ".join(f"{caveat.marker} {caveat.withheld}: {caveat.meaning}." for caveat in CAVEATS)
    + " No significance is drawn for a marked row, nor against a marked baseline; the reasons are "
    "under each table, and plots draw marked rows hatched or hollow."
)


def parse_target_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise ConfigError(
            f"--target-fraction must be a number in (0, 1], got {text!r}; "
            "e.g. 0.99 (99 % of the baseline's accuracy)"
        )
    return value


def recorded_config_hashes(directory: Path) -> set[str]:
    """The config hashes of the ``run.json`` files (``train --run-json``) anywhere under ``directory``."""
    records = sorted(directory.rglob("run.json")) if directory.is_dir() else []
    hashes = set()
    for path in records:
        try:
            hashes.add(str(json.loads(path.read_text())[names.CONFIG_HASH]))
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} is not a run record of `joulebench train --run-json` ({error!r}); "
                              "rerun that train stage (dvc repro) to rewrite it") from None
    if not hashes:
        raise ConfigError(f"--runs-from {directory}: no run.json there; it is written by "
                          "`joulebench train --run-json PATH` (DVC's train stages do: run `dvc repro`)")
    return hashes


def run_report(
    experiment: str, parent: str | None, out: Path, target_fraction: str, runs_from: Path | None = None
) -> Report:
    """Read the runs, summarise, write the files and log them on a ``report`` run."""
    fraction = parse_target_fraction(target_fraction)
    wanted = recorded_config_hashes(runs_from) if runs_from is not None else None
    runs = tracking.finished_measured_runs(experiment)
    if parent is not None:
        grid = tracking.sweep_grid_hashes(experiment, parent)
        runs = [run for run in runs if run.parent_run_id == parent or run.tags[names.CONFIG_HASH] in grid]
    if wanted is not None:
        runs = [run for run in runs if run.tags[names.CONFIG_HASH] in wanted]
    if not runs:
        scope = f"experiment {experiment!r}"
        if parent is not None:
            scope += f", sweep {parent}"
        if runs_from is not None:
            scope += f", configurations of {runs_from}/**/run.json"
        raise ConfigError(f"no FINISHED joulebench runs in {scope}; run `joulebench sweep` (or train) first")
    groups = build_report(runs, fraction, tracking.metric_history)
    files = write_report(groups, out)
    counted = sum(len(row.runs) for _, rows in groups for row in rows)
    run_id = tracking.log_report_run(
        experiment, files, {"parent": parent or "all", "runs": counted, "target_fraction": fraction}
    )
    return Report(groups, files, counted, run_id)
