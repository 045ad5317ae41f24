"""tracking: the store check, and artefact tables whose rows do not all have the same keys."""

import os
import signal
import subprocess
import threading
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from joulebench.config import make_config
from joulebench.errors import EXIT_ENVIRONMENT, ConfigError, EnvironmentFault
from joulebench.signals import handle_stop_signals, uninterrupted
from joulebench.tracking import Recorder, environment_tags, recorded_run, use_store
from joulebench.tracking.runs import PACKAGE_DIR


def test_epoch_table_keeps_columns_only_later_rows_have(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = use_store("tables")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        # Epoch 1 was too short to measure (no energy keys); epoch 2 was measured.
        Recorder(run.info.run_id, experiment_id).log_table(
            "epochs.csv", [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25, "epoch_joules": 12.5}]
        )
    path = MlflowClient().download_artifacts(run.info.run_id, "epochs.csv", str(tmp_path))
    assert Path(path).read_text().splitlines() == ["epoch,loss,epoch_joules", "1,0.5,", "2,0.25,12.5"]


def test_store_in_missing_directory_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    with pytest.raises(ConfigError, match="does not exist"):
        use_store("x")


def test_git_commit_is_the_kits_own_head_from_any_directory_and_the_build_arg_outside_a_checkout(
        tmp_path, monkeypatch):
    monkeypatch.setenv("JOULEBENCH_GIT_COMMIT", "0123abc")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent, check=True).stdout.strip()
    other = tmp_path / "other-repository"  # the user's own project, with a commit of its own
    other.mkdir()
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    subprocess.run(["git", "-C", str(other), "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q",
                    "--allow-empty", "-m", "theirs"], check=True)
    for directory in (Path(__file__).parent, tmp_path, other):
        monkeypatch.chdir(directory)
        assert environment_tags("v1")["git_commit"].removesuffix("-dirty") == head, directory
    # The package outside any checkout, as in the image: git finds no repository above src/.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(PACKAGE_DIR.parent))
    assert environment_tags("v1")["git_commit"] == "0123abc"
    monkeypatch.delenv("JOULEBENCH_GIT_COMMIT")
    assert environment_tags("v1")["git_commit"] == "unknown"


def test_only_the_tracking_package_imports_mlflow():
    """The rule of the data flow: the loop, the pipeline and the report reach MLflow through tracking/."""
    import ast

    package = Path(__file__).parents[1] / "src" / "joulebench"
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m == "mlflow" or m.startswith("mlflow.") for m in modules):
                importers.add(path.relative_to(package).parts[0])
    assert importers == {"tracking"}


def test_a_store_that_cannot_be_opened_is_an_environment_fault_exit_75(tmp_path, monkeypatch, capsys):
    from joulebench.cli import main

    (tmp_path / "mlflow.db").write_bytes(b"not a database, " * 64)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(EnvironmentFault, match="cannot use the MLflow store sqlite:///"):
        use_store("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tinynet", "--weights", "none", "--idle-seconds", "0", "--quiet"])
    assert exit_info.value.code == EXIT_ENVIRONMENT
    err = capsys.readouterr().err.strip()
    assert err.startswith("joulebench: error: cannot use the MLflow store") and "\n" not in err


def test_a_deleted_experiment_is_input_to_change_not_a_store_fault(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(ConfigError, match="experiment 'gone' is deleted .*mlflow experiments restore"):
        use_store("gone")


def test_under_mlflow_run_in_a_container_the_open_line_names_the_hosts_store_not_the_mount(tmp_path, monkeypatch):
    """`mlflow run` mounts the host's sqlite file at /mlflow/tmp/mlruns and the run's artifact
    directory at its host path: the line names the host's store, and the user's own URI first."""
    from joulebench.tracking import ui_command

    mount = tmp_path / "mlflow" / "tmp" / "mlruns"  # the container's view of the store
    mount.parent.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{mount}")
    project = tmp_path / "home" / "me" / "project"  # where `mlflow run` ran, on the host
    experiment = client.create_experiment("Default-ish", artifact_location=str(project / "mlruns" / "0"))
    run_id = client.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mount}")
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    line = ui_command(run_id, experiment)
    assert line.startswith(f'mlflow ui --backend-store-uri "${{MLFLOW_TRACKING_URI:-sqlite:///{project}/mlflow.db}}"')
    assert "/mlflow/tmp" not in line.replace(str(tmp_path), "")
    monkeypatch.delenv("MLFLOW_RUN_ID")  # a run of its own in such a store: named as it is
    assert line != ui_command(run_id, experiment) and str(mount) in ui_command(run_id, experiment)


@pytest.fixture
def stop_signals():
    """This process's stop-signal handlers as the CLI installs them in a terminal, restored
    afterwards (a test run in the background, `pytest &`, starts with SIGINT ignored)."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    handle_stop_signals()
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _signalling_during(monkeypatch, method: str, signums: list[signal.Signals]) -> list[str]:
    """MlflowClient.``method`` gets ``signums`` (real signals, to this process) while it runs;
    returns where each call got to, so a test can see whether the store call was finished."""
    real = getattr(MlflowClient, method)
    reached: list[str] = []

    def interrupted_midway(self, *args, **kwargs):
        for signum in signums:
            os.kill(os.getpid(), signum)
        reached.append("signalled")
        result = real(self, *args, **kwargs)
        reached.append("stored")
        return result

    monkeypatch.setattr(MlflowClient, method, interrupted_midway)
    return reached


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_a_stop_signal_during_a_store_call_ends_the_run_killed_after_the_call(
        tmp_path, monkeypatch, stop_signals, signum):
    """The kit's Ctrl-C once landed inside an SQLite write: the store's connection kept its
    lock, the run's end failed as "database is locked" and the run stayed RUNNING."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with recorded_run(make_config(model="tinynet", device="cpu"), {}, {}) as recorder:
            reached = _signalling_during(monkeypatch, "log_batch", [signum])  # the epoch's write only
            recorder.log_epoch(1, {"val_accuracy": 0.5})
            pytest.fail("the signal was not acted on when the store call returned")
    assert reached == ["signalled", "stored"]
    (run,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("joulebench").experiment_id])
    assert run.info.status == "KILLED" and run.data.metrics["val_accuracy"] == 0.5
    assert not (tmp_path / "joulebench-unsent").exists()


def test_a_second_stop_signal_does_not_wait_for_the_store_call(tmp_path, monkeypatch, stop_signals):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = use_store("twice")
    run_id = MlflowClient().create_run(experiment_id).info.run_id
    reached = _signalling_during(monkeypatch, "log_batch", [signal.SIGINT, signal.SIGTERM])
    with pytest.raises(KeyboardInterrupt):
        Recorder(run_id, experiment_id).log_metrics({"loss": 1.0})
    assert reached == []  # stopped inside the call, before its write
    assert MlflowClient().get_run(run_id).data.metrics == {}


def test_outside_the_main_thread_a_store_call_holds_nothing_back(stop_signals):
    """Signals reach only the main thread: another thread's calls neither defer nor raise one."""
    outcome: list[str] = []

    def call_in_a_thread():
        with uninterrupted():
            outcome.append("inside")
        outcome.append("after")

    thread = threading.Thread(target=call_in_a_thread)
    thread.start()
    thread.join()
    assert outcome == ["inside", "after"]
    with pytest.raises(KeyboardInterrupt), uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)
        outcome.append("finished the main thread's call")
    assert outcome[-1] == "finished the main thread's call"


def test_an_ignored_ctrl_c_stays_ignored(stop_signals):
    """A background job (`joulebench train … &`, nohup) has SIGINT ignored: the CLI leaves it so."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handle_stop_signals()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
