"""Bad input: the checks generated from the one table of cases (tests/support/bad_input.py).

Each case given as make_config's keywords is checked at that level; each given as a command
line runs through ``main`` in process, and those marked ``installed`` run through the installed
``joulebench`` in a subprocess too. Every check: the case's exit code, exactly one line holding
its fragment, no traceback, the runs it must leave (none: nothing opened).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from joulebench.cli import main
from joulebench.config import make_config
from joulebench.errors import ConfigError

from support import free_port, run_cli
from support.bad_input import CASES, Case

AT_MAKE_CONFIG = [case for case in CASES if case.config is not None]
ON_THE_COMMAND_LINE = [case for case in CASES if case.args is not None]
INSTALLED = [case for case in ON_THE_COMMAND_LINE if case.installed]


def test_the_table_is_one_row_per_case_each_with_one_form():
    assert len({case.id for case in CASES}) == len(CASES) == 107
    assert all((case.args is None) != (case.config is None) for case in CASES)
    assert (len(AT_MAKE_CONFIG), len(ON_THE_COMMAND_LINE), len(INSTALLED)) == (21, 86, 7)


def the_one_line(err: str, case: Case) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("joulebench: error: "), err[-3000:]
    assert case.message in lines[0] and "Traceback" not in err, lines[0]
    return lines[0]


def run_statuses(store: Path) -> list[str]:
    """The status of every run in the store, in every experiment (deleted ones too), sorted."""
    client = MlflowClient(f"sqlite:///{store}")
    return sorted(run.info.status for e in client.search_experiments(view_type=3)
                  for run in client.search_runs([e.experiment_id]))


@pytest.mark.parametrize("case", AT_MAKE_CONFIG, ids=[case.id for case in AT_MAKE_CONFIG])
def test_make_config_refuses_in_one_line(case: Case):
    with pytest.raises(ConfigError) as error:
        make_config(**case.config)
    assert case.message in str(error.value) and "\n" not in str(error.value)
    assert error.value.exit_code == case.exit


@pytest.mark.parametrize("case", ON_THE_COMMAND_LINE, ids=[case.id for case in ON_THE_COMMAND_LINE])
def test_the_command_line_refuses_in_one_line(case: Case, workdir: Path, monkeypatch, capsys):
    store = workdir / "mlflow.db"
    # By absolute path: within one process MLflow reuses the store it opened for a relative URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    port = free_port()  # nothing listens there
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(port=port))
    # What the CLI's MLFLOW_LOGGING_LEVEL=WARNING does in a fresh process (mlflow is imported here).
    mlflow_logger = logging.getLogger("mlflow")
    monkeypatch.setattr(mlflow_logger, "level", logging.WARNING)
    case.setup(workdir)
    before = sorted(path.name for path in workdir.iterdir())
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(d=workdir) for arg in case.args])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert exit_info.value.code == case.exit, err
    the_one_line(err, case)
    assert run_statuses(store) == case.statuses
    if case.exit == 75:
        assert seconds <= 15, f"{seconds:.1f} s to say the server is not there"
    if not case.statuses:  # nothing half-written beside the store
        assert sorted(path.name for path in workdir.iterdir()) == before


# One installed case in the fast tier: each is a fresh interpreter that imports torch (seconds).
@pytest.mark.parametrize("case", [pytest.param(case, marks=() if index == 0 else pytest.mark.slow)
                                  for index, case in enumerate(INSTALLED)], ids=[case.id for case in INSTALLED])
def test_the_installed_command_refuses_in_one_line(case: Case, workdir: Path):
    """As a user runs it: the installed console script in a fresh process."""
    case.setup(workdir)
    port = free_port()  # nothing listens there
    result = run_cli([arg.format(d=workdir) for arg in case.args], cwd=workdir,
                     env={name: value.format(port=port) for name, value in case.env.items()})
    assert result.returncode == case.exit, result.stderr[-2000:]
    assert len(the_one_line(result.stderr, case)) < 1000
    assert run_statuses(workdir / "mlflow.db") == case.statuses
