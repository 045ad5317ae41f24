"""Campaign, bad input beyond the table (the table of cases and its checks:
tests/support/bad_input.py, tests/test_bad_input.py): a store that is not one, file names that
are not UTF-8, a store error that waiting does not mend.
"""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from support import images, run_cli
from support.bad_input import train


@pytest.mark.slow
def test_a_store_that_is_a_directory_is_refused_at_once(tmp_path):
    """`mlflow.db` a directory: bad input, said in one line at once (MLflow would retry for a minute)."""
    (tmp_path / "mlflow.db").mkdir()
    started = time.monotonic()
    result = run_cli(train(), cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (2, 1), result.stderr[-2000:]
    assert "the MLflow store sqlite:///mlflow.db names a directory, where a database file belongs" in lines[0]
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("content, said", [
    (b"junk\n", "is not an MLflow store that can be read"),
    (None, "no MLflow store at sqlite:///"),
])
def test_report_on_a_store_that_is_not_one_is_one_line(tmp_path, content, said):
    store = tmp_path / "runs.db"
    if content is not None:
        store.write_bytes(content)
    result = run_cli(["report", "--out", "out"], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (2, 1) and said in lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out").exists() and store.exists() == (content is not None)


@pytest.mark.slow
def test_image_file_names_that_are_not_utf8_are_escaped_not_fatal(tmp_path):
    """A file name MLflow cannot hold as text (not UTF-8) is listed with \\x escapes; the run
    finishes (it was taken for an outage and left RUNNING)."""
    import os

    images(tmp_path / "data", ["cat", "dog"])
    (tmp_path / "data" / "dog" / os.fsdecode(b"\xfe.png")).write_bytes(b"not an image")
    result = run_cli(train("--dataset", "imagefolder:data"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    assert run.info.status == "FINISHED"
    assert "(first: data/dog/\\xfe.png: not an image PIL can identify;" in run.data.tags["skipped_images"]


def test_a_store_error_no_wait_mends_ends_the_call_in_one_line_not_in_the_outbox(tmp_path, monkeypatch):
    """Only an outage is kept for later: the real error of an artifact folder that is a file is
    permanent, raised at once as one line, and nothing is journaled to resend for ever."""
    from joulebench.errors import ConfigError
    from joulebench.tracking import Recorder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "blocked").write_text("a file where the artifacts go")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "blocked" / "e"))
    recorder = Recorder(client.create_run(experiment).info.run_id, experiment, client)
    with pytest.raises(ConfigError, match="refuses this run's log_text for good") as error:
        recorder.log_text("note.txt", "x")
    assert "\n" not in str(error.value) and not recorder.outbox.pending
    recorder.log_metrics({"accuracy": 0.5})  # the store itself still takes what it can hold
    assert client.get_run(recorder.run_id).data.metrics == {"accuracy": 0.5}
