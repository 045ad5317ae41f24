"""How long joulebench waits: each wait declared once, with its default, the environment variable
that changes it and why it is that long.

A wait is read from the environment each time it is used (``seconds()``), so a process started
with ``JOULEBENCH_OUTAGE_GRACE_SECONDS=1`` waits one second: tests run the CLI in subprocesses and
shorten the waits they would otherwise sit out this way (tests/conftest.py). No torch here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from joulebench.errors import ConfigError


@dataclass(frozen=True)
class Wait:
    env: str
    default: float
    why: str

    def seconds(self) -> float:
        """The environment's value of ``env`` when set, else ``default``; ConfigError if it is
        not a positive number of seconds."""
        given = os.environ.get(self.env, "").strip()
        if not given:
            return self.default
        try:
            value = float(given)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(
                f"{self.env}={given!r} is not a number of seconds: it accepts a positive number "
                f"(default {self.default:g}, {self.why}); set it to one such as {self.default:g}, or unset it"
            )
        return value


OUTAGE_GRACE = Wait("JOULEBENCH_OUTAGE_GRACE_SECONDS", 30.0,
                    "at a run's end, how long to wait for a store that went away before keeping the rest for resend")
OUTAGE_POLL = Wait("JOULEBENCH_OUTAGE_POLL_SECONDS", 5.0,
                   "while waiting for a store that went away, how often to ask whether it is back")
HEALTH_TIMEOUT = Wait("JOULEBENCH_HEALTH_TIMEOUT_SECONDS", 3.0,
                      "how long a tracking server's /health may take to answer before it is asked again")
HEALTH_PAUSE = Wait("JOULEBENCH_HEALTH_PAUSE_SECONDS", 2.0,
                    "the pause between two /health questions to a tracking server that did not answer")
PROGRESS_POLL = Wait("JOULEBENCH_PROGRESS_POLL_SECONDS", 2.0,
                     "how often a local sweep reads its running cells' epochs for the progress bars")
TERMINATE_GRACE = Wait("JOULEBENCH_TERMINATE_GRACE_SECONDS", 60.0,
                       "after SIGTERM, how long a local cell has to mark its run KILLED before it is killed")
SLURM_POLL = Wait("JOULEBENCH_SLURM_POLL_SECONDS", 3.0, "how often a Slurm sweep asks scontrol for its tasks' states")
CANCEL_GRACE = Wait("JOULEBENCH_CANCEL_GRACE_SECONDS", 90.0,
                    "after scancel, how long Slurm tasks have to close their runs KILLED before the sweep does")
KUBERNETES_POLL = Wait("JOULEBENCH_KUBERNETES_POLL_SECONDS", 10.0,
                       "how often a Kubernetes sweep asks each submitted run's Job whether it ended")
