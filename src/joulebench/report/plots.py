"""The report's figures: energy per model, accuracy vs energy (with the Pareto front), and
energy vs FLOPs. Each names its energy source in its title; marked rows are drawn hatched or hollow."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from joulebench import names
from joulebench.plotting import pyplot
from joulebench.report.rows import CAVEATS, Caveat, Row

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
    plt = pyplot()
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
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(7, 5))
    draw_accuracy_vs_energy(axes, measured)
    _save(figure, path)
    return True


def draw_accuracy_vs_energy(axes: Any, measured: list[Row]) -> None:
    """A method is one colour and one marker, on every model, drawn in the legend exactly as on
    the plot (hollow where all its rows are marked); each model's front is a grey step line named
    at its end."""
    methods = list(dict.fromkeys(row.key.method for row in measured))
    colors = {method: f"C{index % 10}" for index, method in enumerate(methods)}
    markers = dict(zip(methods, "os^Dv<>pPX*h"))

    def point(row: Row) -> tuple[float, float]:
        return row.estimates[names.ENERGY_TRAIN_J].mean / 1e3, row.estimates[names.ACCURACY].mean

    for row in measured:
        _scatter(axes, point(row), colors[row.key.method], markers[row.key.method], hollow=bool(row.marks))
        if row.marks:
            _annotate_marks(axes, row, point(row))
    for model in dict.fromkeys(row.key.model for row in measured):
        # A marked row's energy says nothing about its method: it may not set the front.
        front = pareto_front([point(row) for row in measured if row.key.model == model and not row.marks])
        if front:
            axes.step(*zip(*front), where="post", color="grey", alpha=0.6, zorder=1)
            axes.annotate(model, front[-1], xytext=(4, -10), textcoords="offset points", fontsize="small",
                          color="dimgrey")
    for method in methods:
        all_marked = all(row.marks for row in measured if row.key.method == method)
        axes.scatter([], [], facecolors="none" if all_marked else colors[method], edgecolors=colors[method],
                     marker=markers[method], label=method)
    axes.plot([], [], color="grey", alpha=0.6, label="Pareto front of a model (named at its end)")
    caveats = _present([row.marks for row in measured])
    if caveats:
        axes.scatter([], [], facecolors="none", edgecolors="grey", label=_marked_label("hollow", caveats))
    axes.set_xlabel("training energy (kJ)")
    axes.set_ylabel("validation accuracy")
    axes.set_title(f"Accuracy vs training energy\n{_energy_sources(measured)}")
    axes.legend(fontsize="small")


def plot_energy_vs_flops(rows: list[Row], path: Path) -> bool:
    """Energy ratio vs FLOP ratio to baseline: on the diagonal, the saved energy is saved compute."""
    plotted = [row for row in rows if not row.is_baseline
               and row.ratios[names.FLOPS_PER_SAMPLE].value and row.ratios[names.ENERGY_TRAIN_J].value]
    if not plotted:
        return False
    plt = pyplot()

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


def nothing_to_plot(path: Path, name: str) -> None:
    """A figure saying why ``name`` has no points (the HTML page leaves it out)."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.axis("off")
    axes.text(0.5, 0.5, f"{name.replace('_', ' ')}: nothing to plot\n(no measured training energy, "
              "or no baseline to compare with;\nsee the runs' energy_flags tags)",
              ha="center", va="center", wrap=True)
    _save(figure, path)


def _save(figure: Any, path: Path) -> None:
    plt = pyplot()

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


PLOTS = (
    ("energy_by_model", plot_energy_by_model),
    ("accuracy_vs_energy", plot_accuracy_vs_energy),
    ("energy_vs_flops", plot_energy_vs_flops),
)
