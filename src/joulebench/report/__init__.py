"""``joulebench report``: finished runs → side-by-side table, significance vs baseline, plots.

Runs are grouped by dataset, device and training settings and never averaged across groups.
Within a group there is one row per model × method: each metric as mean ± 95 % CI over
repeats (t distribution), and its ratio to the same model's baseline, marked by a Welch t-test.
Energy-to-accuracy is read from each run's per-epoch history: the cumulative training energy
at the first epoch whose validation accuracy reaches the target (by default 99 % of the
baseline's final accuracy).

Outputs: ``summary.csv`` (raw units), ``summary.md``, PNG plots and a self-contained
``report.html``; all are also logged on a ``report`` run so they can be browsed in the UI.
The parts: ``stats`` (estimates, ratios), ``rows`` (grouping and rows), ``plots``, ``render``
(the files). Nothing here imports torch: reading runs back needs only MLflow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from joulebench import names, tracking
from joulebench.inputs import read_input_file
from joulebench.errors import ConfigError, nearest_existing, why_unwritable
from joulebench.report.plots import PLOTS, pareto_front
from joulebench.report.render import format_number, write_report
from joulebench.report.rows import GroupKey, Row, build_report
from joulebench.report.stats import (
    Estimate,
    Ratio,
    energy_to_accuracy,
    significance_mark,
)

__all__ = [
    "PLOTS", "Estimate", "GroupKey", "Ratio", "Report", "Row", "build_report", "energy_to_accuracy",
    "format_number", "pareto_front", "parse_target_fraction", "recorded_config_hashes", "run_report",
    "significance_mark", "write_report",
]


@dataclass
class Report:
    """The summarised groups, the files written for them, and where the runs came from."""

    groups: list[tuple[GroupKey, list[Row]]]
    files: list[Path]
    run_count: int
    report_run_id: str | None = None
    by_experiment: dict[str, int] = field(default_factory=dict)  # experiment → runs read from it
    left_out: dict[str, int] = field(default_factory=dict)  # status → measured runs not FINISHED


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


def check_output_folder(out: Path) -> None:
    """``--out`` can hold the files (a folder, or one that can be made), checked before reading."""
    existing = nearest_existing(out)
    if not existing.is_dir():
        raise ConfigError(f"--out {out} cannot be a folder: {existing} is a file; pass a folder path")
    reason = why_unwritable(existing)
    if reason:
        raise ConfigError(f"--out {out} cannot be written: {reason}; pass a folder this user may write")


def recorded_config_hashes(directory: Path) -> set[str]:
    """The config hashes of the ``run.json`` files (``train --run-json``) anywhere under ``directory``."""
    records = sorted(directory.rglob("run.json")) if directory.is_dir() else []
    hashes = set()
    for path in records:
        fix = "rerun that train stage (dvc repro) to rewrite it"
        try:
            hashes.add(str(json.loads(read_input_file("run record", path, fix))[names.CONFIG_HASH]))
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} is not a run record of `joulebench train --run-json` ({error!r}); "
                              f"{fix}") from None
    if not hashes:
        raise ConfigError(f"--runs-from {directory}: no run.json there; it is written by "
                          "`joulebench train --run-json PATH` (DVC's train stages do: run `dvc repro`)")
    return hashes


def run_report(
    experiment: str | None, parent: str | None, out: Path, target_fraction: str, runs_from: Path | None = None
) -> Report:
    """Read the runs (of ``experiment``, or of every experiment: None), summarise, write the
    files and log them on a ``report`` run."""
    fraction = parse_target_fraction(target_fraction)
    check_output_folder(out)
    wanted = recorded_config_hashes(runs_from) if runs_from is not None else None
    measured = tracking.finished_measured_runs(experiment)
    runs = measured.records
    if parent is not None:
        grid = tracking.sweep_grid_hashes(experiment, parent)
        runs = [run for run in runs if run.parent_run_id == parent or run.tags[names.CONFIG_HASH] in grid]
    if wanted is not None:
        runs = [run for run in runs if run.tags[names.CONFIG_HASH] in wanted]
    if not runs:
        scope = f"experiment {experiment!r}" if experiment is not None else "any experiment of the store"
        if parent is not None:
            scope += f", sweep {parent}"
        if runs_from is not None:
            scope += f", configurations of {runs_from}/**/run.json"
        raise ConfigError(f"no FINISHED joulebench runs in {scope}; run `joulebench sweep` (or train) first")
    groups = build_report(runs, fraction, tracking.metric_history)
    files = write_report(groups, out)
    counted = sum(len(row.runs) for _, rows in groups for row in rows)
    run_id = tracking.log_report_run(
        files, {"experiment": experiment or "all", "parent": parent or "all", "runs": counted,
                "target_fraction": fraction}
    )
    return Report(groups, files, counted, run_id, measured.by_experiment, measured.left_out)
