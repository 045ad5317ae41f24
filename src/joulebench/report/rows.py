"""From runs to rows: runs grouped into comparable groups, one row per model × method, each
row's estimates, caveats and ratios to its baseline."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field

from joulebench import names
from joulebench.config import IDENTITY, SPLITS_GROUPS, SPLITS_ROWS, option_fields
from joulebench.method_params import PARAMS
from joulebench.report.stats import Estimate, Ratio, energy_to_accuracy
from joulebench.tracking.read import RunRecord

BASELINE = "baseline"


def _declared(compare: str) -> tuple[str, ...]:
    return tuple(f.name for f in option_fields(IDENTITY) if f.metadata["option"].compare == compare)


# What splits groups and rows is each run option's declaration (config.py), never a list kept here.
# The device splits groups by its own label (a GPU's name, a CPU's host), so it is not a setting.
GROUP_PARAMS = tuple(name for name in _declared(SPLITS_GROUPS) if name != "device")
ABSENT_MEANS = {f.name: str(f.metadata["option"].absent_means) for f in option_fields(IDENTITY)
                if f.metadata["option"].absent_means is not MISSING}


def param(run: RunRecord, name: str) -> str:
    """A run's identity param; a run logged before the option existed reads as the value runs had
    then (its declaration's ``absent_means``), or "None" — its own value, never a KeyError."""
    return run.params.get(name, ABSENT_MEANS.get(name, "None"))


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
    specs = PARAMS.get(method, {})
    changed = [
        f"{key}={run.params[names.method_param(key)]}" for key, spec in specs.items()
        if run.params.get(names.method_param(key), str(spec.default)) != str(spec.default)
    ]
    return f"{method} ({', '.join(changed)})" if changed else method


def group_runs(runs: list[RunRecord]) -> dict[GroupKey, dict[RowKey, list[RunRecord]]]:
    groups: dict[GroupKey, dict[RowKey, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        group = GroupKey(run.params.get("dataset", "?"), device_label(run),
                         tuple((key, param(run, key)) for key in GROUP_PARAMS))
        row = RowKey(run.params["model"], run.params.get("image_size", "?"), method_label(run))
        groups[group][row].append(run)
    return groups


def latest_per_config(runs: list[RunRecord]) -> list[RunRecord]:
    """One run per config hash: a forced rerun replaces, never doubles, a repeat."""
    latest: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        latest[run.tags[names.CONFIG_HASH]] = run
    return list(latest.values())


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
    accuracy = [history(run.run_id, names.VAL_ACCURACY) for run in row.runs]
    joules = [history(run.run_id, names.EPOCH_JOULES) for run in row.runs]
    # Epoch energy is absent where nothing could measure it, and for an epoch shorter than a
    # meter's update period: a cumulative sum over the epochs needs every one of them.
    if not all({epoch for epoch, _ in accuracies} <= {epoch for epoch, _ in energies}
               for accuracies, energies in zip(accuracy, joules)):
        note = "not measured in every epoch" if any(joules) else "not measured"
        row.estimates[ENERGY_TO_ACCURACY], row.energy_to_accuracy_note = None, note
        return
    reached = [
        energy_to_accuracy(accuracies, energies, row.target_accuracy)
        for accuracies, energies in zip(accuracy, joules)
    ]
    values = tuple(value for value in reached if value is not None)
    row.estimates[ENERGY_TO_ACCURACY] = Estimate(values) if len(values) == len(reached) else None
    if not values:
        row.energy_to_accuracy_note = "not reached"
    elif len(values) < len(reached):
        row.energy_to_accuracy_note = f"not reached in {len(reached) - len(values)} of {len(reached)} repeats"


def build_report(
    runs: list[RunRecord], target_fraction: float, history: History
) -> list[tuple[GroupKey, list[Row]]]:
    """The groups, each with its rows summarised; a config hash counts once (its latest run)."""
    groups = group_runs(latest_per_config(runs))
    return [(key, summarise_group(rows, target_fraction, history))
            for key, rows in sorted(groups.items(), key=lambda item: item[0].title)]
