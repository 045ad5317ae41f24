"""The waits in joulebench.timings: a default, an environment variable read each time the wait is
used (so tests shorten what they would sit out), a one-line ConfigError for a bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from joulebench import timings
from joulebench.errors import ConfigError
from support import free_port, run_cli

WAITS = [value for value in vars(timings).values() if isinstance(value, timings.Wait)]


def test_every_wait_has_its_own_variable_a_positive_default_and_a_reason():
    assert len(WAITS) == 9
    assert len({wait.env for wait in WAITS}) == len(WAITS)
    for wait in WAITS:
        assert wait.env.startswith("JOULEBENCH_") and wait.env.endswith("_SECONDS")
        assert wait.default > 0 and wait.why and "\n" not in wait.why


def test_a_wait_is_read_from_the_environment_each_time_it_is_used(monkeypatch):
    monkeypatch.delenv(timings.OUTAGE_GRACE.env, raising=False)
    assert timings.OUTAGE_GRACE.seconds() == 30.0
    monkeypatch.setenv(timings.OUTAGE_GRACE.env, " 0.25 ")
    assert timings.OUTAGE_GRACE.seconds() == 0.25
    monkeypatch.setenv(timings.OUTAGE_GRACE.env, "")
    assert timings.OUTAGE_GRACE.seconds() == 30.0


@pytest.mark.parametrize("given", ["soon", "0", "-1", "nan", "inf"])
def test_a_bad_value_is_one_line_naming_the_variable_what_it_accepts_and_the_fix(monkeypatch, given):
    monkeypatch.setenv(timings.SLURM_POLL.env, given)
    with pytest.raises(ConfigError) as error:
        timings.SLURM_POLL.seconds()
    line = str(error.value)
    assert "\n" not in line and line.startswith(f"JOULEBENCH_SLURM_POLL_SECONDS={given!r} is not a number of seconds")
    assert "accepts a positive number (default 3," in line and "set it to one such as 3, or unset it" in line


def test_timings_imports_no_torch():
    code = "import sys, joulebench.timings; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_the_cli_reads_a_wait_from_its_environment(tmp_path):
    """A server that does not answer is asked again after HEALTH_PAUSE: a bad value there is the
    CLI's one line and exit 2, so the subprocess did read the variable."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli(["report", "--out", "out"], cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": uri, timings.HEALTH_PAUSE.env: "two"})
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (2, 1), result.stderr[-2000:]
    assert "JOULEBENCH_HEALTH_PAUSE_SECONDS='two' is not a number of seconds" in lines[0]
