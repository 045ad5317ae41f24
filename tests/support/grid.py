"""A sweep's grid as ``joulebench sweep`` builds it from its command line (test_sweep,
test_campaign_faults)."""

from __future__ import annotations

from joulebench.cli import sweep
from joulebench.sweep import expand_grid


def sweep_options(*args: str) -> dict:
    """The options ``joulebench sweep`` hands to the sweep, parsed by the real command line."""
    return sweep.make_context("sweep", ["--models", "tinynet", *args]).params


def grid(models, methods, repeats, overrides=None, *args, run_device=None):
    options = sweep_options(*args)
    training = {k: v for k, v in options.items()
                if k not in ("models", "methods", "repeats", "params", "gpus", "backend", "backend_config",
                             "force", "quiet") and not k.startswith("slurm_")}
    return expand_grid(models, methods, repeats, overrides or {}, training, run_device)
