"""``joulebench sweep``: the models × methods × repeats grid, one MLflow run per combination.

Every combination runs as its own ``joulebench train`` child process, nested under one parent
run. That makes the rest simple:

- resume: a combination whose config hash has a FINISHED run in the experiment is skipped, so a
  killed sweep started again loses nothing finished (``--force`` reruns everything);
- ``--gpus 0,1``: one child per GPU at a time, pinned with ``CUDA_VISIBLE_DEVICES``, so two
  measured runs never share a device and each child's meters see only its own GPU;
- ``--backend kubernetes``: the same combinations are submitted as MLflow Project runs (the
  project in the backend config's folder, ``deploy/kubernetes/`` as shipped) and waited on;
- ``--backend slurm``: they are submitted as one Slurm job array, a task per combination.

The parts: ``grid`` (the combinations and their hashes), ``placement`` (where children run),
``progress`` (bars and lines), ``lock`` (one sweep per grid), ``local``, ``kubernetes`` and
``slurm`` (the runners).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from joulebench import tracking
from joulebench.data import check_dataset_location
from joulebench.errors import EnvironmentFault
from joulebench.method_params import method_names
from joulebench.models import PAPER_MODELS, check_weights_location
from joulebench.sweep.grid import (
    Combination, expand_grid, grid_table, parse_method_overrides, parse_names, parse_repeats, sweep_hash,
)
from joulebench.sweep.kubernetes import (
    KUBERNETES_ENTRY_POINT, KubernetesRunner, check_job_template, load_backend_config,
)
from joulebench.sweep.local import LocalRunner
from joulebench.sweep.lock import hold_grid
from joulebench.sweep.placement import Placement, pinned_device_ids, place
from joulebench.sweep.progress import Outcome, Progress
from joulebench.sweep.slurm import SLURM_LOG_FOLDER, SlurmOptions, SlurmRunner, make_slurm_options

__all__ = [
    "KUBERNETES_ENTRY_POINT", "Combination", "KubernetesRunner", "LocalRunner", "Outcome", "Placement",
    "Progress", "SweepSummary", "check_job_template", "expand_grid", "grid_table", "load_backend_config",
    "SlurmOptions", "SlurmRunner", "make_slurm_options", "parse_method_overrides", "pinned_device_ids", "run_sweep",
    "sweep_hash",
]


@dataclass
class SweepSummary:
    """What the sweep did, for the closing lines."""

    parent_run_id: str
    resumed: bool
    total: int
    skipped: int
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    def lines(self) -> list[str]:
        ran = len(self.outcomes)
        lines = [
            f"sweep     {self.total} combinations: {ran - len(self.failed)} finished now, "
            f"{self.skipped} already finished (skipped), {len(self.failed)} failed",
            f"parent    {self.parent_run_id}{' (resumed)' if self.resumed else ''}",
        ]
        lines += [f"failed    {o.combination.label}: {o.detail}" for o in self.failed]
        lines.append(f"report    joulebench report --parent {self.parent_run_id}")
        return lines


def run_sweep(
    *,
    models: str,
    methods: str,
    repeats: str,
    params: tuple[str, ...],
    gpus: str | None,
    backend: str,
    backend_config: Path | None,
    force: bool,
    progress: bool,
    slurm: SlurmOptions | None = None,
    **options: Any,
) -> SweepSummary:
    """Validate everything, open (or resume) the parent run, run what is not finished yet."""
    model_list = parse_names(models, "--models", PAPER_MODELS)
    method_list = parse_names(methods, "--methods", method_names())
    overrides = parse_method_overrides(params, method_list)
    placement = place(gpus, backend, backend_config, options["device"], slurm)
    combinations = expand_grid(
        model_list, method_list, parse_repeats(repeats), overrides, options, placement.run_device
    )

    if placement.kubernetes is None:  # cells read their files here, or on Slurm's nodes from a shared folder
        for config in (combination.config for combination in combinations):
            check_dataset_location(config.dataset, config.data_dir)
            check_weights_location(config.model, config.weights)
    experiment = options["experiment"]
    experiment_id, grid = tracking.use_store(experiment), sweep_hash(combinations)
    with hold_grid(tracking.tracking_uri(), experiment_id, grid):
        _refuse_live_cells(experiment_id, combinations)
        parent = tracking.open_sweep_run(
            experiment, grid, grid_table(combinations), force=force,
            params={"models": ",".join(model_list), "methods": ",".join(method_list), "repeats": repeats,
                    "method_params": " ".join(params) or "defaults", "combinations": len(combinations)},
            tags={"sweep.backend": backend, "sweep.gpus": gpus or "none"},
        )
        finished = set() if force else tracking.finished_config_hashes(parent.experiment_id)
        todo = [c for c in combinations if c.config_hash not in finished]
        skipped = len(combinations) - len(todo)
        bars = progress and sys.stderr.isatty()
        with TemporaryDirectory(prefix="joulebench-sweep-") as scratch:
            runner = _runner(placement, parent, Path(scratch))
            local = isinstance(runner, LocalRunner)
            display = Progress(len(combinations), skipped, len(placement.slots) if local else 0, bars)
            status = "FAILED"
            try:
                outcomes = runner.run(todo, display)
                status = "FINISHED" if all(outcome.ok for outcome in outcomes) else "FAILED"
            except KeyboardInterrupt:
                status = "KILLED"
                raise
            finally:
                display.close()
                tracking.end_sweep_run(parent.run_id, status, Path(scratch))
        return SweepSummary(parent.run_id, parent.resumed, len(combinations), skipped, outcomes)


def _runner(
    placement: Placement, parent: tracking.SweepRun, scratch: Path
) -> LocalRunner | KubernetesRunner | SlurmRunner:
    """Who runs the cells: Kubernetes, Slurm (logs where the nodes can write them: the working
    folder, shared with them), or children here (logs in ``scratch``, kept on the parent run)."""
    if placement.kubernetes:
        cluster = placement.kubernetes
        return KubernetesRunner(cluster.config, cluster.project_dir, parent.run_id, parent.experiment_id)
    if placement.slurm:
        return SlurmRunner(placement.slurm, parent.run_id, Path(SLURM_LOG_FOLDER) / parent.run_id)
    return LocalRunner(placement.slots, parent.run_id, scratch)


def _refuse_live_cells(experiment_id: str, combinations: list[Combination]) -> None:
    """Close the orphaned runs of these combinations (their process is gone); EnvironmentFault
    if one still runs: starting it again would measure two runs on one device."""
    live = tracking.reclaim_running(experiment_id, {c.config_hash for c in combinations})
    if live:
        label = next(c.label for c in combinations if c.config_hash == live[0].config_hash)
        raise EnvironmentFault(
            f"{label} is still running (run {live[0].run_id}, {live[0].where}"
            f"{f', and {len(live) - 1} more' if len(live) > 1 else ''}); two runs on one device "
            "corrupt both measurements: wait for it or stop it, then run the sweep again"
        )
