"""MLflow's modules that a run imports on first use (its SQL store, the system-metrics monitor,
GitPython for the source tags), imported here at once: a sweep's fork server imports this module
(``sweep/warm.py``) so that no forked cell pays for them again."""

import git  # noqa: F401
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
import mlflow.system_metrics.system_metrics_monitor  # noqa: F401
