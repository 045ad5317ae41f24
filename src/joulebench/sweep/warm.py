"""What a sweep's fork server imports once, so that no forked cell imports it again.

Each is what ``joulebench train`` imports on its way (the CLI and pipeline at the top, the rest
on first use: MLflow's SQL store and system-metrics monitor, through ``tracking.preload``,
CodeCarbon, matplotlib on Agg). Importing starts no thread and opens no store or CUDA context,
so every cell forked from the server still starts clean.
"""

import codecarbon.emissions_tracker  # noqa: F401

import joulebench.cli  # noqa: F401
import joulebench.pipeline  # noqa: F401
import joulebench.tracking.preload  # noqa: F401
from joulebench.plotting import pyplot

pyplot()
