"""The ``joulebench`` command: train · capacity · sweep · report · methods · meters · fetch · resend.

The run options of train, capacity and sweep are derived from RunConfig's declarations
(``config.py``). Bad input ends with one line on stderr and exit code 2, an environment fault
with one line and exit 75; Ctrl-C, SIGTERM or SIGHUP with exit 130 (``signals.py``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from joulebench import names
from joulebench.config import (
    CAPACITY, FILE, FOLDER, PARAMS_FILE, SWEEP, TRAIN, Option, declaration, make_config, option_fields,
    resolve_device,
)
from joulebench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ConfigError, JoulebenchError, disk_full
from joulebench.signals import die_with_sweep, handle_stop_signals


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="joulebench")
def cli() -> None:
    """Measured joules for fine-tuning (compressed) pretrained networks."""


def _click_type(hint: Any) -> Any:
    """The click type of a schema hint (config.py stays free of click)."""
    if isinstance(hint, tuple):
        return click.Choice(list(hint))
    return {bool: click.BOOL, FILE: click.Path(dir_okay=False, path_type=Path),
            FOLDER: click.Path(path_type=Path)}.get(hint, hint)


def _click_option(name: str, spec: Option) -> Callable[[Any], Any]:
    settings = dict(spec.click)
    if not settings.get("is_flag"):  # without a hint click passes the text: the field's parser words a mistake
        settings["type"] = _click_type(settings.get("type", click.STRING))
    return click.option(spec.flag(name), spec.keyword(name), default=spec.default, show_default=True,
                        help=spec.help, **settings)


def run_options(command: str) -> Callable[[Any], Any]:
    """The click options of ``command``, in RunConfig's order, each from its field's declaration."""
    options = []
    for field in option_fields():
        spec = field.metadata["option"]
        if command in spec.commands:
            options.append(_click_option(field.name, spec))
            if field.name == "method_params":  # its other input, offered right after --param
                options.append(_click_option("params_file", PARAMS_FILE))

    def decorate(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function
    return decorate


@cli.command()
@run_options(TRAIN)
def train(**options: Any) -> None:
    """Fine-tune one model with one method, measured, and record it in MLflow."""
    from joulebench.pipeline import train_and_record, write_run_record

    config = make_config(**options)
    summary = train_and_record(config, progress=not config.quiet and sys.stderr.isatty())
    if config.run_json is not None:
        write_run_record(config.run_json, summary)
    click.echo(format_summary(summary))


def format_summary(summary: Any) -> str:
    """The end-of-run lines: accuracy, energy with its source, duration, run id, UI command."""
    metrics = summary.result.metrics()
    energy = metrics.get(names.ENERGY_TOTAL_J)
    energy_text = (
        f"{energy / 1000:.3f} kJ total, {metrics.get(names.ENERGY_TRAIN_J, 0) / 1000:.3f} kJ training "
        f"(source: {summary.energy_sources})"
        if energy is not None else f"not measured (source: {summary.energy_sources})"
    )
    top5 = f", top-5 {metrics[names.TOP5]:.4f}" if names.TOP5 in metrics else ""
    warmup = f", warm-up {100 * metrics[names.WARMUP_SHARE]:.0f} % of it" if names.WARMUP_SHARE in metrics else ""
    flags = [f"flag      {name}: {why}" for name, why in summary.flags.items()]
    return "\n".join([
        f"accuracy  {metrics[names.ACCURACY]:.4f}{top5}",
        f"energy    {energy_text}",
        f"duration  {metrics[names.DURATION_S]:.1f} s ({metrics[names.TRAIN_SECONDS]:.1f} s training{warmup})",
        *flags,
        f"run id    {summary.run_id}",
        *([f"model     {summary.registered}  (fine-tune from it: --weights {summary.registered})"]
          if summary.registered else []),
        f"open      {summary.ui}",
    ])


@cli.command()
@click.option("--bits", "bits_text", default="0-23", show_default=True,
              help="Bits values to overwrite: a range and/or list, e.g. 0-23 or 0,8,16,20.")
@click.option("--fill", default="zero", show_default=True, type=click.Choice(["zero", "random"]),
              help="Overwrite with zeros (compression) or a seeded random payload.")
@click.option("--tolerance", default=0.01, show_default=True, type=float,
              help="Accuracy loss against bits = 0 still counted as harmless.")
@run_options(CAPACITY)
def capacity(bits_text: str, fill: str, tolerance: float, **options: Any) -> None:
    """Steganographic capacity: fine-tune, then accuracy vs low-order bits overwritten (no training)."""
    from joulebench.capacity import parse_bits_values
    from joulebench.pipeline import capacity_and_record

    bits_values = parse_bits_values(bits_text)
    if not 0 <= tolerance < 1:
        raise ConfigError(f"--tolerance must be in [0, 1), got {tolerance}; e.g. 0.01 for one point")
    config = make_config(method="baseline", **options)
    summary = capacity_and_record(config, bits_values, fill, tolerance, not config.quiet and sys.stderr.isatty())
    for bits, accuracy in summary.curve:
        click.echo(f"bits {bits:>2}  accuracy {accuracy:.4f}")
    click.echo(f"capacity  {summary.capacity_bits} bits per weight within {tolerance:g} of bits = 0 "
               f"({summary.freed_mb:.2f} MB freed)")
    click.echo(f"run id    {summary.run_id}")
    click.echo(f"open      {summary.ui}")


@cli.command()
def methods() -> None:
    """The compression methods and their parameters (pass them as --param KEY=VALUE)."""
    from joulebench.compress import METHODS

    for name in sorted(METHODS):
        specs = METHODS[name].params
        click.echo(f"{name}: {(METHODS[name].__doc__ or '').strip().splitlines()[0]}")
        for key, spec in specs.items():
            click.echo(f"    {key}={spec.default}  ({spec.accepted})")


@cli.command()
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
def meters(device: str) -> None:
    """Which energy meters this host has, what each reads, and why the others are not used."""
    import torch

    from joulebench.energy import describe_meters

    country = declaration("country").default  # what a run estimates CO2 with by default
    for name, available, detail in describe_meters(torch.device(resolve_device(device)), country):
        click.echo(f"{name:<12} {'yes' if available else 'no ':<4} {detail}")


EXIT_RUNS_FAILED = 1  # the sweep went through, but some combinations failed (named on stdout)


@cli.command()
@click.option("--models", required=True, metavar="LIST|all",
              help="Comma-separated models, or all (the paper's nine).")
@click.option("--methods", default="all", show_default=True, metavar="LIST|all",
              help="Comma-separated methods, or all (`joulebench methods` lists them).")
@click.option("--repeats", default="1", show_default=True,
              help="Runs of each model × method; repeat r trains with seed --seed + r.")
@click.option("--param", "params", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Method parameter, for that method only (repeatable), e.g. prune.amount=0.7.")
@run_options(SWEEP)
@click.option("--gpus", default=None, metavar="LIST",
              help="GPU indices, e.g. 0,1: one run per GPU at a time, each pinned with CUDA_VISIBLE_DEVICES.")
@click.option("--backend", default="local", show_default=True, type=click.Choice(["local", "kubernetes", "slurm"]),
              help="local child processes, MLflow Projects' Kubernetes backend, or a Slurm job array.")
@click.option("--backend-config", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Kubernetes backend config (JSON) beside its MLproject: see deploy/kubernetes/.")
@click.option("--slurm-partition", default=None, metavar="NAME", help="Slurm: the partition (sbatch --partition).")
@click.option("--slurm-account", default=None, metavar="NAME", help="Slurm: the account charged (sbatch --account).")
@click.option("--slurm-time", default=None, metavar="TIME", help="Slurm: each cell's time limit (sbatch --time).")
@click.option("--slurm-gpus-per-cell", default=None, metavar="N",
              help="Slurm: GPUs per cell (--gres=gpu:N) [default: 1; 0 runs cells on CPUs].")
@click.option("--slurm-share-node", is_flag=True,
              help="Slurm: let cells share a node (each still its own GPUs) instead of --exclusive.")
@click.option("--slurm-option", "slurm_pairs", multiple=True, metavar="KEY=VALUE",
              help="Slurm: any other sbatch option, as --KEY=VALUE (repeatable), e.g. qos=high.")
@click.option("--force", is_flag=True, help="Rerun combinations that already FINISHED.")
@click.option("--quiet", is_flag=True, help="No progress bars (one line per finished combination).")
def sweep(quiet: bool, slurm_partition: str | None, slurm_account: str | None, slurm_time: str | None,
          slurm_gpus_per_cell: str | None, slurm_share_node: bool, slurm_pairs: tuple[str, ...],
          **options: Any) -> None:
    """Run every model × method × repeat as its own MLflow run under one parent; resumable."""
    from joulebench.sweep import make_slurm_options, run_sweep

    slurm = make_slurm_options(slurm_partition, slurm_account, slurm_time, slurm_gpus_per_cell,
                               slurm_share_node, slurm_pairs)
    summary = run_sweep(progress=not quiet, slurm=slurm, **options)
    click.echo("\n".join(summary.lines()))
    if summary.failed:
        sys.exit(EXIT_RUNS_FAILED)


@cli.command()
@click.option("--experiment", default=None, metavar="NAME",
              help="Only this MLflow experiment's runs [default: every experiment's joulebench runs, "
                   "`mlflow run`'s in Default included].")
@click.option("--parent", default=None, metavar="RUN_ID", help="Only this sweep's combinations (its parent run id).")
@click.option("--runs-from", default=None, type=click.Path(path_type=Path), metavar="DIR",
              help="Only the configurations of the run.json files under DIR (`train --run-json`; "
                   "DVC's report stage reads results/, so runs of older params stay out).")
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for summary.csv, summary.md, the PNG plots and report.html.")
@click.option("--target-fraction", default="0.99", show_default=True,
              help="Energy-to-accuracy target as a fraction of the same model's baseline accuracy.")
def report(experiment: str | None, parent: str | None, runs_from: Path | None, out: Path,
           target_fraction: str) -> None:
    """Side-by-side table of finished runs: ratios to baseline with 95 % CIs, detail, plots."""
    from joulebench.report import run_report

    result = run_report(experiment, parent, out, target_fraction, runs_from)
    sources = ", ".join(f"{name} ({count})" for name, count in sorted(result.by_experiment.items()))
    click.echo(f"read      FINISHED runs from {sources}")
    if result.left_out:
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(result.left_out.items()))
        click.echo(f"left out  {statuses} (not FINISHED: no complete measurement)")
    click.echo(f"report    {result.run_count} runs in {len(result.groups)} group(s) (dataset · device · settings)")
    click.echo(f"files     {', '.join(str(path) for path in result.files)}")
    click.echo(f"run id    {result.report_run_id} (the same files, under report/)")


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def resend(folder: Path) -> None:
    """Send what a run could not send to its tracking store (kept in joulebench-unsent/RUN_ID)."""
    from joulebench.tracking import resend as send_kept

    run_id, count = send_kept(folder)
    click.echo(f"resent    {count} calls of run {run_id}; {folder} removed")


@cli.group()
def fetch() -> None:
    """Download datasets and pretrained weights, checksum-verified (DVC's fetch stages run this)."""


def _mirror_option(function):
    return click.option(
        "--mirror", envvar="JOULEBENCH_MIRROR", default=None, metavar="URL",
        help="Base URL serving the same file names (or env JOULEBENCH_MIRROR) [default: the publishers'].",
    )(function)


@fetch.command("dataset")
@click.argument("name")
@click.option("--to", default="data/datasets", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder that receives NAME/.")
@_mirror_option
def fetch_dataset_command(name: str, to: Path, mirror: str | None) -> None:
    """Fetch dataset NAME (cifar10 | imagenette | digits) into TO/NAME/."""
    from joulebench.fetch import fetch_dataset

    fetched = fetch_dataset(name, to, mirror)
    click.echo(f"{fetched.path}  {fetched.outcome}")


@fetch.command("weights")
@click.option("--model", required=True, help="A torchvision model, or `all` for the paper's nine.")
@click.option("--to", default="data/weights", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder that receives <model>-imagenet.pth.")
@_mirror_option
def fetch_weights_command(model: str, to: Path, mirror: str | None) -> None:
    """Fetch torchvision's ImageNet weights of MODEL as TO/<model>-imagenet.pth."""
    from joulebench.fetch import fetch_weights
    from joulebench.models import PAPER_MODELS

    for name in PAPER_MODELS if model == "all" else [model]:
        fetched = fetch_weights(name, to, mirror)
        click.echo(f"{fetched.path}  {fetched.outcome}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: an expected failure is one line and its exit code (bad input 2, environment
    75, a full filesystem included, wherever it is met), interruption exit 130; anything else is a
    bug and keeps its traceback."""
    handle_stop_signals()
    die_with_sweep()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # keep the summary readable
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # --weights runs:/…: no bars
    # (and a full disk's log records are dropped where MLflow makes its handlers: tracking/__init__.py)
    try:
        cli.main(args=argv, prog_name="joulebench", standalone_mode=False)
    except JoulebenchError as error:
        _fail(str(error), error.exit_code)
    except click.UsageError as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        _fail(f"{error.format_message()}{hint}", EXIT_BAD_INPUT)
    except (KeyboardInterrupt, click.Abort):
        click.echo("joulebench: interrupted; the MLflow run (if one started) is marked KILLED", err=True)
        _close_launched_run("KILLED", "interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:
        if (full := disk_full(error)) is not None:  # a full filesystem outside a run (its own line says how it ended)
            from joulebench.tracking.store import full_disk

            fault = full_disk(full)
            _fail(str(fault), fault.exit_code)
        # a bug: its traceback follows, and `mlflow run`'s run is not left open
        _close_launched_run("FAILED", f"{type(error).__name__}: {error}")
        raise


def _fail(message: str, exit_code: int) -> None:
    click.echo(f"joulebench: error: {message}", err=True)
    _close_launched_run("FAILED", message)
    sys.exit(exit_code)


def _close_launched_run(status: str, reason: str) -> None:
    """Under `mlflow run` (MLFLOW_RUN_ID set), end its run as the command ended: the container's
    exit status may not reach MLflow, the run's record always does."""
    if os.environ.get("MLFLOW_RUN_ID"):
        from joulebench.tracking import close_launched_run

        close_launched_run(status, reason)
