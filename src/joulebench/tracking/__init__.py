"""Everything joulebench keeps in MLflow; the only package that imports mlflow.

- ``store``: where the store is, whether it can be used, a client bound to it.
- ``runs``: one run per ``train``/``capacity`` and the ``Recorder`` that logs to it.
- ``sweeps``: a sweep's parent run, which a rerun of the same grid reopens.
- ``kubernetes``: cells submitted as MLflow Project runs to a cluster.
- ``read``: finished runs read back for ``report``, and the report's own run.
- ``calls``: every call a run makes to its store, by name, and what a failed one means.
- ``outbox``: what a run could not send to its store, kept on disk and sent later.
- ``process``: which process a run belongs to (a sweep tells live runs from orphans).
"""

from joulebench.tracking.kubernetes import KubernetesProjectRun, check_cluster_reachable_store, submit_kubernetes_run
from joulebench.tracking.read import (
    REPORT_EXPERIMENT, MeasuredRuns, RunRecord, finished_measured_runs, finished_run_metrics, log_report_run,
    metric_history, sweep_grid_hashes,
)
from joulebench.tracking.runs import (
    Recorder, close_launched_run, config_params, environment_tags, recorded_run, resend,
)
from joulebench.tracking.store import DEFAULT_TRACKING_URI, quiet_full_disk_logs, tracking_uri, ui_command, use_store
from joulebench.tracking.weights import StoredWeights, download_weights, is_stored, register_weights
from joulebench.tracking.sweeps import (
    LiveRun, SweepRun, adopt_child, cell_since, child_epochs_done, end_sweep_run, finished_config_hashes,
    open_sweep_run, project_run, reclaim_running, settle_cell, slurm_task,
)

# MLflow's log handlers exist now (made on its import): a full disk's records stay off stderr.
quiet_full_disk_logs()

__all__ = [
    "DEFAULT_TRACKING_URI", "KubernetesProjectRun", "LiveRun", "MeasuredRuns", "REPORT_EXPERIMENT",
    "Recorder", "RunRecord", "StoredWeights", "SweepRun", "adopt_child", "check_cluster_reachable_store",
    "cell_since", "child_epochs_done", "close_launched_run", "project_run", "settle_cell", "slurm_task",
    "config_params", "download_weights", "end_sweep_run", "environment_tags", "finished_config_hashes",
    "finished_measured_runs", "finished_run_metrics", "is_stored", "log_report_run", "metric_history",
    "open_sweep_run", "recorded_run", "reclaim_running", "register_weights", "resend",
    "submit_kubernetes_run", "sweep_grid_hashes", "tracking_uri", "ui_command", "use_store",
]
