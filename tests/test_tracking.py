"""tracking: the store check, and artefact tables whose rows do not all have the same keys."""

import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from joulebench.errors import EXIT_ENVIRONMENT, ConfigError, EnvironmentFault
from joulebench.tracking import Recorder, environment_tags, use_store
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
