"""End to end: ``joulebench train`` on digits, read back from the MLflow store it wrote."""

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from joulebench.cli import main
from joulebench.energy import describe_meters
from joulebench.models import build_model

from support import only_run, parameter_count, run_cli, runs_in

SOURCES = {"nvml_counter", "nvml_power", "rapl", "codecarbon_estimate"}


def nothing_measurable_here() -> bool:
    """No GPU and no readable RAPL: CodeCarbon's estimate is all this host can give."""
    available = {name for name, ok, _ in describe_meters(torch.device("cpu"), "USA") if ok}
    return not torch.cuda.is_available() and "rapl" not in available


@pytest.mark.slow
def test_train_records_params_metrics_tags_and_artifacts(workdir):
    result = run_cli(
        ["train", "--model", "tinynet", "--weights", "none", "--epochs", "2", "--idle-seconds", "1",
         "--inference-batches", "3", "--save-model", "--quiet", "--run-name", "e2e",
         "--run-json", "results/e2e/run.json"],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    client, run = only_run(workdir / "mlflow.db")
    assert run.info.status == "FINISHED" and run.info.run_name == "e2e"
    assert json.loads((workdir / "results" / "e2e" / "run.json").read_text()) == {
        "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
        "config_hash": run.data.tags["config_hash"]}
    params = run.data.params
    assert (params["model"], params["method"], params["dataset"]) == ("tinynet", "baseline", "digits")
    assert (params["epochs"], params["batch_size"], params["seed"], params["image_size"]) == ("2", "64", "0", "32")
    assert params["weights_source"] == "none" and params["device"] == "cpu"

    metrics = run.data.metrics
    assert "energy_train_j" in metrics, run.data.tags.get("energy_flags")
    assert 0.5 < metrics["accuracy"] <= 1.0  # chance is 0.1; tinynet reaches ~0.9 in 2 epochs
    assert metrics["top5"] >= metrics["accuracy"]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == metrics["accuracy"]
    assert metrics["train_samples"] == 2 * 1437
    assert metrics["energy_total_j"] > metrics["energy_train_j"] > 0
    assert metrics["energy_total_kwh"] == pytest.approx(metrics["energy_total_j"] / 3.6e6)
    assert metrics["j_per_train_sample"] == pytest.approx(metrics["energy_train_j"] / (2 * 1437))
    epoch_joules = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_joules")]
    assert sum(epoch_joules) == pytest.approx(metrics["energy_train_j"])
    assert metrics["co2_kg"] > 0
    assert metrics["duration_s"] > metrics["train_seconds"] > 0
    assert metrics["parameters"] == parameter_count(build_model("tinynet", 10))
    assert metrics["inference_ms_per_image"] > 0

    tags = run.data.tags
    assert set(tags["energy_source"].split("+")) <= SOURCES
    if nothing_measurable_here():
        assert tags["energy_source"] == "codecarbon_estimate"
        assert tags["energy_source.cpu"] == "codecarbon_estimate"
    assert tags["torch_version"] == torch.__version__ and tags["data_version"].startswith("sha256:")

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "compression_report.json", "epochs.csv", "energy"} <= artifacts
    energy_files = {a.path for a in client.list_artifacts(run.info.run_id, "energy")}
    assert "energy/windows.json" in energy_files
    assert any(path.endswith(".csv") for path in energy_files)
    epochs_csv = Path(client.download_artifacts(run.info.run_id, "epochs.csv", str(workdir)))
    assert epochs_csv.read_text().splitlines()[0].startswith("epoch,train_loss,val_accuracy")

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    assert f"run id    {run.info.run_id}" in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in result.stdout
    assert "codecarbon_estimate" in result.stdout or "source:" in result.stdout


def test_python_m_joulebench_is_the_cli():
    """`python -m joulebench` (how a Slurm task runs it) is the same command line."""
    result = subprocess.run([sys.executable, "-m", "joulebench", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: joulebench train [OPTIONS]") and "--epochs" in result.stdout


def test_unwritable_tracking_store_is_one_line(workdir, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/missing-dir/mlflow.db")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tinynet", "--weights", "none", "--idle-seconds", "0", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is not writable" in err and "MLFLOW_TRACKING_URI" in err and "\n" not in err


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_is_killed_and_keeps_finished_epochs(workdir, signum):
    executable = Path(sys.executable).with_name("joulebench")
    process = subprocess.Popen(
        [str(executable), "train", "--model", "tinynet", "--weights", "none", "--epochs", "500",
         "--limit-train-batches", "3", "--idle-seconds", "0", "--quiet"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # As a terminal's Ctrl-C finds it: a test run in the background (`pytest &`) has SIGINT ignored,
        # and a child inherits that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        client, run_id = _wait_for_first_epoch(workdir / "mlflow.db", process)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run_id, "val_accuracy")]
    assert steps[0] == 1 and steps == list(range(1, len(steps) + 1))
    assert "Traceback" not in err


def _wait_for_first_epoch(store: Path, process: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            runs = runs_in(store)
        except Exception:  # the CLI may still be creating the store's tables
            runs = []
        if runs and "val_accuracy" in runs[0].data.metrics:
            return MlflowClient(f"sqlite:///{store}"), runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError("no epoch was logged in time")


def readme_main_job() -> list[list[str]]:
    """The `joulebench train` commands of README's main job block, as arguments."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("The main job, on the embedded default")[1].split("```bash\n")[1].split("```")[0]
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("joulebench train")]


@pytest.mark.slow
def test_readme_main_job_verbatim_reaches_080_and_prints_the_comparison_url(workdir):
    """The README's main job, exactly: resnet18 from scratch on digits, 3 epochs, baseline then stego."""
    commands = readme_main_job()
    assert [command[command.index("--method") + 1] for command in commands] == ["baseline", "stego"]
    for command in commands:
        result = run_cli(command, cwd=workdir)
        assert result.returncode == 0, result.stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("joulebench").experiment_id
    runs = {run.info.run_name: run for run in client.search_runs([experiment])}
    assert set(runs) == {"resnet18-baseline", "resnet18-stego"}
    assert all(run.data.metrics["accuracy"] >= 0.8 for run in runs.values())
    assert "Against its baseline (run " in runs["resnet18-stego"].data.tags["mlflow.note.content"]
    last = result.stdout.rstrip().splitlines()[-1]
    assert last == (f"open      mlflow ui --backend-store-uri sqlite:///mlflow.db  # then open http://127.0.0.1:5000"
                    f"/#/experiments/{experiment}/runs?workflowType=machine_learning&viewStateShareKey=joulebench-comparison")


@pytest.mark.parametrize("args, said", [
    (["--model", "no_such_net"], "no_such_net"),  # refused before any run opens
    pytest.param(["--model", "tinynet", "--batch-size", "1e23"], "--batch-size", marks=pytest.mark.slow),
])
def test_a_refused_command_under_mlflow_run_ends_its_run_failed_whatever_the_engine_reports(
        workdir, args, said):
    """`mlflow run` makes the run and hands its id over (MLFLOW_RUN_ID); a container engine may
    answer the failed container with exit 0 (podman < 4.6), and MLflow then closes a still-open run
    FINISHED. joulebench closes it FAILED itself, with the reason, so the record is true either way."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")  # MLflow caches a store per URI
    launched = client.create_run(client.create_experiment("launched")).info.run_id
    result = run_cli(["train", "--weights", "none", "--quiet", *args], cwd=workdir,
                     env={"MLFLOW_RUN_ID": launched, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"})
    assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr
    run = client.get_run(launched)
    assert run.info.status == "FAILED"
    assert said in run.data.tags["joulebench.error"]
    assert run.data.metrics == {}


@pytest.mark.slow
def test_a_run_mlflow_run_already_ended_is_left_as_it_ended(workdir):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")  # MLflow caches a store per URI
    launched = client.create_run(client.create_experiment("launched")).info.run_id
    client.set_terminated(launched, "KILLED")
    result = run_cli(["train", "--model", "no_such_net", "--quiet"], cwd=workdir,
                     env={"MLFLOW_RUN_ID": launched, "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"})
    assert result.returncode == 2
    assert client.get_run(launched).info.status == "KILLED"


@pytest.mark.slow
def test_runs_are_named_described_against_their_baseline_and_shown_in_the_comparison_view(workdir):
    """What the UI shows without a click: runs named `model-method`, a description that states the
    result against the baseline of the same settings, and the experiment's comparison view."""
    common = ["train", "--model", "tinynet", "--weights", "none", "--epochs", "1", "--limit-train-batches", "3",
              "--idle-seconds", "0", "--inference-batches", "1", "--quiet"]
    for method in ("baseline", "stego"):
        result = run_cli([*common, "--method", method], cwd=workdir)
        assert result.returncode == 0, result.stderr
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("joulebench")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"tinynet-baseline", "tinynet-stego"}
    baseline, stego = runs["tinynet-baseline"], runs["tinynet-stego"]
    note = stego.data.tags["mlflow.note.content"]
    assert note.startswith("**tinynet · stego**: training ")
    assert f"Against its baseline (run {baseline.info.run_id}): " in note
    seconds = stego.data.metrics["train_seconds"] / baseline.data.metrics["train_seconds"]
    assert f"{seconds:.2f}× the training time" in note
    accuracy = stego.data.metrics["accuracy"] - baseline.data.metrics["accuracy"]
    assert f"accuracy {accuracy:+.3f}." in note
    assert "compare against this one" in baseline.data.tags["mlflow.note.content"]

    view = json.loads(experiment.tags["mlflow.sharedViewState.joulebench-comparison"])
    columns = json.loads(view["state"])["selectedColumns"]
    assert columns[:2] == ["params.`model`", "params.`method`"]
    assert {"metrics.`energy_train_j`", "tags.`energy_source`", "metrics.`train_seconds`",
            "metrics.`accuracy`", "attributes.`Description`"} <= set(columns)
    url = (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
           "?workflowType=machine_learning&viewStateShareKey=joulebench-comparison")
    assert result.stdout.rstrip().endswith(f"# then open {url}")
