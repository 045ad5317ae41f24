"""The report's files: summary.csv (raw units), summary.md and a self-contained report.html,
with each group's plots."""

from __future__ import annotations

import base64
import csv
import html
import math
from pathlib import Path
from typing import Any

from joulebench import names
from joulebench.report.plots import PLOTS, nothing_to_plot
from joulebench.report.rows import (
    BASELINE,
    CAVEATS,
    ENERGY_TO_ACCURACY,
    METRICS,
    GroupKey,
    Metric,
    Row,
)
from joulebench.report.stats import Estimate, Ratio

# The ratios summary.md shows beside the values (summary.csv has every ratio).
TABLE_RATIOS = (names.ENERGY_TRAIN_J, names.TRAIN_SECONDS, names.ACCURACY, names.FLOPS_PER_SAMPLE)
# The paper's question, answered first: training energy, time and accuracy over the baseline's.
LEAD_RATIOS = (names.ENERGY_TRAIN_J, names.TRAIN_SECONDS, names.ACCURACY)


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


def format_lead_ratio(ratio: Ratio) -> str:
    """"0.594× (0.51–0.68) **": the ratio, its 95 % interval and Welch's mark, or why there is none."""
    if ratio.value is None:
        return ratio.note
    interval = f" ({format_number(ratio.ci95[0])}–{format_number(ratio.ci95[1])})" if ratio.ci95 else ""
    return f"{ratio.value:.3f}×{interval} {ratio.note}"


def lead_rows(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """The comparison table: each method over its model's baseline; the baseline row holds the
    values the ratios divide by."""
    header = ["model", "px", "method", "n"] + [f"{_metric(key).label} ÷ baseline" for key in LEAD_RATIOS]
    cells = []
    for row in rows:
        line = [row.key.model, row.key.image_size, row.label, str(len(row.runs))]
        for key in LEAD_RATIOS:
            if row.is_baseline:
                estimate = row.estimates.get(key)
                line.append(f"= {format_estimate(estimate, _metric(key).scale)}" if estimate else "not measured")
            else:
                line.append(format_lead_ratio(row.ratios[key]))
        cells.append(line + [row.energy_source])
    return header + ["energy source"], cells


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


def write_report(groups: list[tuple[GroupKey, list[Row]]], out: Path) -> list[Path]:
    """summary.csv, summary.md, each group's plots (those it has data for) and report.html."""
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
                nothing_to_plot(path, name)
            plots.append(path)
        sections.append((group, lead_rows(rows), table_rows(rows), footnotes(rows), images))
    md_path.write_text(_markdown(sections))
    html_path.write_text(_html(sections))
    return [csv_path, md_path, html_path, *plots]


# A group's title, comparison table and detail table (header, cells), footnotes and plots, as
# summary.md and report.html show them.
Table = tuple[list[str], list[list[str]]]
Section = tuple[GroupKey, Table, Table, list[str], list[Path]]
LEAD_CAPTION = ("Each method against its model's baseline: ratio (95 % confidence interval) and "
                "Welch's mark; the baseline row holds its own values (mean ± 95 % CI).")
DETAIL_CAPTION = "Every figure, mean ± 95 % CI over repeats:"


def _markdown(sections: list[Section]) -> str:
    parts = ["# joulebench report", ""]
    for group, lead, detail, notes, images in sections:
        parts += [f"## {group.title}", "", LEAD_CAPTION, "", markdown_table(*lead), ""]
        parts += [DETAIL_CAPTION, "", markdown_table(*detail), ""]
        parts += [f"- {note}" for note in notes] + ([""] if notes else [])
        parts += [f"![{image.stem}]({image.name})" for image in images] + [""]
    return "\n".join([*parts, _LEGEND, ""])


def _html_table(table: Table, css_class: str) -> str:
    header, cells = table
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells]
    return f'<table class="{css_class}">{"".join(rows)}</table>'


def _html(sections: list[Section]) -> str:
    """One file, images inlined as data URIs: it opens offline, mailed or archived alone. The
    comparison leads each group; the detail table wraps its cells, so the page fits 1600 px."""
    body = ["<h1>joulebench report</h1>"]
    for group, lead, detail, notes, images in sections:
        body.append(f"<h2>{html.escape(group.title)}</h2><p>{html.escape(LEAD_CAPTION)}</p>")
        body.append(_html_table(lead, "lead"))
        body.append(f"<p>{html.escape(DETAIL_CAPTION)}</p>{_html_table(detail, 'detail')}")
        body += [f"<p>{html.escape(note)}</p>" for note in notes]
        for image in images:
            data = base64.b64encode(image.read_bytes()).decode()
            body.append(f'<figure><img alt="{image.stem}" src="data:image/png;base64,{data}"></figure>')
    body.append(f"<p>{html.escape(_LEGEND)}</p>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1500px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px}table.lead{font-size:14px}"
             "table.lead td{white-space:nowrap}table.detail{font-size:11px;width:100%}img{max-width:100%}")
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
