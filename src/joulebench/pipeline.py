"""One run end to end: config → data + model → (compress + train under windows) → MLflow.

The glue between the loop (``train``), which knows nothing of tracking, and ``tracking``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from joulebench import energy, names
from joulebench.compress import build_method
from joulebench.config import RunConfig, as_baseline
from joulebench.data import DataSplits, load_dataset
from joulebench.models import build_model, default_weights_path, sha256_of
from joulebench.tracking import (
    Recorder, StoredWeights, config_params, download_weights, environment_tags, finished_run_metrics, is_stored,
    recorded_run, register_weights, ui_command,
)
from joulebench.capacity import accuracy_evaluator, capacity_curve, fine_tune, largest_safe_bits, plot_capacity
from joulebench.compute import ComputeSettings, compute_settings
from joulebench.results import EpochResult, RunResult
from joulebench.train import run


@dataclass
class Summary:
    """What ``train`` prints at the end."""

    run_id: str
    experiment_id: str
    result: RunResult
    energy_sources: str
    ui: str
    flags: dict[str, str]  # short_run / compute_emulated → why; empty for a trustworthy run
    registered: str | None = None  # models:/NAME/VERSION of the weights, with --register-model


@dataclass(frozen=True)
class WeightsOrigin:
    """Where a run's weights came from: its ``weights_source`` param, and the models in MLflow they
    were logged with, which the run records as its inputs (MLflow's lineage between the two runs)."""

    param: str
    model_ids: tuple[str, ...] = ()


def weights_origin(config: RunConfig, stored: StoredWeights | None = None) -> WeightsOrigin:
    """A store's weights are named by their run and hash (read while the downloaded file exists)."""
    if config.weights == "imagenet":
        return WeightsOrigin(f"imagenet:{default_weights_path(config.model)}")
    if stored is not None:
        return WeightsOrigin(f"{config.weights} (run {stored.run_id}, sha256 {sha256_of(stored.path)})",
                             stored.model_ids)
    return WeightsOrigin(config.weights)


def energy_tags(result: RunResult, monitor: energy.EnergyMonitor) -> dict[str, str]:
    """``energy_source`` overall and per device, and why unused meters were not used."""
    total = result.phases[names.TOTAL_PHASE]
    tags = {f"{names.ENERGY_SOURCE}.{device}": source for device, source in sorted(total.sources.items())}
    tags[names.ENERGY_SOURCE] = "+".join(sorted(set(total.sources.values()))) or "none (no meter could be read)"
    for meter, reason in monitor.unavailable.items():
        tags[f"energy_unavailable.{meter}"] = reason[:500]
    flags = sorted({flag for m in monitor.measurements for flag in m.flags})
    if flags:
        tags["energy_flags"] = " | ".join(flags)[:5000]
    return tags


def measurements_table(monitor: energy.EnergyMonitor) -> list[dict[str, object]]:
    """Every window as JSON-able rows, for the measurements artefact."""
    return [
        {
            "name": m.name, "phase": m.phase, "epoch": m.epoch, "start": m.start, "seconds": m.seconds,
            "joules": m.joules, "sources": m.sources, "flags": list(m.flags),
        }
        for m in monitor.measurements
    ]


def load_data_and_model(config: RunConfig) -> tuple[DataSplits, torch.nn.Module, WeightsOrigin]:
    """The dataset splits, the model with its new head, and where its weights came from (bad
    input fails here, before any run; weights in the store are downloaded, loaded and dropped)."""
    data = load_dataset(config.dataset, config.data_dir, config.image_size, config.seed)
    torch.manual_seed(config.seed)  # the new head's initialisation is part of the run's seed
    if not is_stored(config.weights):
        return data, build_model(config.model, data.num_classes, config.weights), weights_origin(config)
    with TemporaryDirectory(prefix="joulebench-weights-") as folder:
        stored = download_weights(config.weights, Path(folder))
        return data, build_model(config.model, data.num_classes, str(stored.path)), weights_origin(config, stored)


def train_and_record(config: RunConfig, progress: bool) -> Summary:
    """Build everything (bad input fails before any run exists), then train inside one run."""
    data, model, origin = load_data_and_model(config)
    method = build_method(config.method, config.method_params)
    # A precision this device cannot run (stego dtype=float16 on CPU) is refused here, not mid-run.
    settings = compute_settings(config, model, method)
    tags = environment_tags(data.version) | {"model": config.model, "method": config.method}
    tags |= emulation_tags(settings)
    params = config_params(config, origin.param) | settings.params()
    with TemporaryDirectory(prefix="joulebench-") as scratch:
        monitor = energy.build_monitor(
            torch.device(config.device), country=config.country,
            output_dir=Path(scratch), sample_hz=config.sample_hz,
        )
        with recorded_run(config, tags, params) as recorder:
            recorder.log_model_inputs(origin.model_ids)
            try:
                result = run(config, data, model, method, monitor, settings, _epoch_logger(recorder), progress)
            finally:
                monitor.close()
                recorder.log_files(monitor.artifacts() + energy.write_trace(monitor, Path(scratch)), "energy")
                recorder.log_json("energy/windows.json", measurements_table(monitor))
            sources = energy_tags(result, monitor)
            _log_result(recorder, result, monitor, sources)
            flags = run_flags(result, settings, data)
            recorder.set_tags(flags)
            recorder.describe(result_note(config, result.metrics(), sources[names.ENERGY_SOURCE],
                                          finished_run_metrics(recorder.experiment_id, baseline_of(config)),
                                          flags))
            if data.skipped:
                recorder.log_text(SKIPPED_LIST, "\n".join(data.skipped) + "\n")
            if config.save_model or config.register_model:
                recorder.log_model(result.model, data.val[0][0][None])
            registered = register_weights(recorder.run_id, config.register_model) if config.register_model else None
    return Summary(
        recorder.run_id, recorder.experiment_id, result, sources[names.ENERGY_SOURCE],
        ui_command(recorder.run_id, recorder.experiment_id), flags, registered,
    )


def baseline_of(config: RunConfig) -> str:
    """The config hash of this run's baseline: the same settings, seed and repeat, uncompressed."""
    return as_baseline(config).config_hash()


def result_note(config: RunConfig, metrics: dict[str, float], source: str,
                baseline: tuple[str, dict[str, float]] | None, flags: dict[str, str]) -> str:
    """The run's description: what it measured, against its baseline's run where one exists, and
    the flags that make it a demonstration rather than a measurement to compare."""
    return _measured_note(config, metrics, source, baseline) + (
        f" Flagged {', '.join(sorted(flags))}: see the tags before comparing." if flags else "")


def _measured_note(config: RunConfig, metrics: dict[str, float], source: str,
                   baseline: tuple[str, dict[str, float]] | None) -> str:
    energy_j, seconds, accuracy = (metrics.get(key) for key in
                                   (names.ENERGY_TRAIN_J, names.TRAIN_SECONDS, names.ACCURACY))
    energy_text = f"{energy_j / 1e3:.3g} kJ ({source})" if energy_j is not None else "energy not measured"
    note = (f"**{config.model} · {config.method}**: training {energy_text}, {seconds:.3g} s, "
            f"accuracy {accuracy:.3f}.")
    if config.method == "baseline":
        return note + " The compressed runs of the same settings compare against this one."
    if baseline is None:
        return note + " No FINISHED baseline run of the same settings in this experiment yet."
    run_id, base = baseline
    ratios = [f"{value / base[key]:.2f}× the {what}" for key, value, what in (
        (names.ENERGY_TRAIN_J, energy_j, "training energy"), (names.TRAIN_SECONDS, seconds, "training time"))
        if value is not None and base.get(key)]
    if names.ACCURACY in base:
        ratios.append(f"accuracy {accuracy - base[names.ACCURACY]:+.3f}")
    return note + f" Against its baseline (run {run_id}): {', '.join(ratios)}."


def emulation_tags(settings: ComputeSettings) -> dict[str, str]:
    """``compute_emulated=<why>`` when the hardware emulates the method's precision."""
    return {names.COMPUTE_EMULATED: settings.emulated} if settings.emulated else {}


SKIPPED_IMAGES = "skipped_images"  # tag and printed flag: image files left out as unreadable
SKIPPED_LIST = "data/skipped_images.txt"


def run_flags(result: RunResult, settings: ComputeSettings, data: DataSplits) -> dict[str, str]:
    """What makes this run's figures untrustworthy, or less than they seem, by tag name
    (tagged, printed, reported)."""
    short = result.short_run()
    flags = ({names.SHORT_RUN: short} if short else {}) | emulation_tags(settings)
    if data.skipped:
        flags[SKIPPED_IMAGES] = (f"{len(data.skipped)} unreadable image files left out "
                                 f"(first: {data.skipped[0]}; all in the run's {SKIPPED_LIST})")
    return flags


def write_run_record(path: Path, summary: Summary) -> None:
    """The finished run's identity as JSON (``train --run-json``), for ``report --runs-from``.

    Written only once the run is FINISHED, so a file here always names a complete run.
    """
    _write_json(path, {
        "run_id": summary.run_id,
        "experiment_id": summary.experiment_id,
        names.CONFIG_HASH: summary.result.config.config_hash(),
    })


def _write_json(path: Path, data: dict[str, object]) -> None:
    """A small JSON file for DVC (metrics, run record), its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _epoch_logger(recorder: Recorder) -> Callable[[EpochResult], None]:
    def log(epoch: EpochResult) -> None:
        recorder.log_epoch(epoch.epoch, epoch.metrics())
    return log


def _log_result(
    recorder: Recorder, result: RunResult, monitor: energy.EnergyMonitor, sources: dict[str, str]
) -> None:
    metrics = result.metrics()
    if monitor.emissions_kg is not None:
        metrics["co2_kg"] = monitor.emissions_kg
    peak = monitor.peak_watts(result.phases[names.TOTAL_PHASE])
    if peak is not None:
        metrics["peak_watts"] = peak
    recorder.log_metrics(metrics)
    if result.config.metrics_json:
        _write_json(result.config.metrics_json, metrics)
    recorder.set_tags(sources)
    facts = result.report.facts
    recorder.log_params({f"compress.{k}": v for k, v in facts.items() if isinstance(v, (str, bool))})
    recorder.log_metrics({f"compress.{k}": float(v) for k, v in facts.items() if _number(v)})
    recorder.log_json("compression_report.json", result.report.to_dict())
    recorder.log_table("epochs.csv", [{"epoch": e.epoch, **e.metrics()} for e in result.epochs])


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class CapacitySummary:
    """What ``capacity`` prints: the curve, the capacity, and where the run is."""

    run_id: str
    curve: list[tuple[int, float]]
    capacity_bits: int
    freed_mb: float
    ui: str


def capacity_and_record(
    config: RunConfig, bits_values: list[int], fill: str, tolerance: float, progress: bool
) -> CapacitySummary:
    """Fine-tune ``config.epochs`` epochs, then overwrite 0…23 low-order bits and evaluate each."""
    data, model, origin = load_data_and_model(config)
    params = config_params(config, origin.param) | {
        "capacity.bits_values": ",".join(map(str, bits_values)),
        "capacity.fill": fill,
        "capacity.tolerance": tolerance,
    }
    # The run fine-tunes with config.method (its param); the bits are overwritten afterwards.
    tags = environment_tags(data.version) | {"model": config.model, "method": config.method}
    with recorded_run(config, tags, params, command="capacity") as recorder:
        recorder.log_model_inputs(origin.model_ids)
        model = fine_tune(config, data, model, progress)
        curve = capacity_curve(model, accuracy_evaluator(config, data, model), bits_values, fill, config.seed)
        safe = largest_safe_bits(curve, tolerance)
        float_weights = sum(p.numel() for p in model.parameters() if p.dtype == torch.float32)
        freed_mb = safe * float_weights / 8 / 1e6
        for bits, accuracy in curve:
            recorder.log_epoch(bits, {"capacity_accuracy": accuracy})
        recorder.log_metrics({
            "capacity_bits": safe, "accuracy_bits0": dict(curve)[0], "freed_capacity_mb": freed_mb,
        })
        recorder.log_table("capacity.csv", [{"bits": b, "accuracy": a} for b, a in curve])
        with TemporaryDirectory(prefix="joulebench-") as scratch:
            title = f"{config.model} on {config.dataset}: accuracy vs bits overwritten ({fill})"
            recorder.log_files([plot_capacity(curve, Path(scratch) / "capacity.png", title, tolerance)])
    return CapacitySummary(
        recorder.run_id, curve, safe, freed_mb, ui_command(recorder.run_id, recorder.experiment_id)
    )
