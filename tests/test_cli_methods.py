"""End to end: every compression method and the capacity curve through the CLI, read back from MLflow."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from joulebench.capacity import largest_safe_bits

from support import run_cli

QUICK = ["--model", "tinynet", "--weights", "none", "--epochs", "1", "--limit-train-batches", "4",
         "--idle-seconds", "0", "--inference-batches", "1", "--quiet"]


def single_run(workdir: Path):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("joulebench").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def report_of(client, run, workdir: Path) -> dict:
    return json.loads(Path(client.download_artifacts(run.info.run_id, "compression_report.json", str(workdir))).read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "params"),
    [("stego", []), ("prune", []), ("prune", ["structured=true"]), ("lowrank", []), ("lowrank", ["conv=true"])],
    ids=["stego", "prune", "prune-structured", "lowrank", "lowrank-conv"],
)
def test_method_runs_and_reports(workdir, method, params):
    args = ["train", *QUICK, "--method", method] + [a for p in params for a in ("--param", p)]
    result = run_cli(args, cwd=workdir)
    assert result.returncode == 0, result.stderr
    client, run = single_run(workdir)
    assert run.info.status == "FINISHED" and run.data.params["method"] == method
    report = report_of(client, run, workdir)
    before, after = report["before"], report["after"]
    metrics = run.data.metrics
    assert metrics["parameters"] == after["parameters"] and metrics["parameters_before"] == before["parameters"]
    assert metrics["flops_per_sample"] == after["flops_per_sample"]
    if method == "stego":
        assert run.data.params["method.bits"] == "16"
        assert metrics["compress.freed_capacity_mb"] == pytest.approx(16 * before["parameters"] / 8e6)
        assert after["parameters"] == before["parameters"]
    elif method == "prune" and not params:
        assert metrics["compress.sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert after["flops_per_sample"] == before["flops_per_sample"]  # masks keep dense compute
        assert after["nonzero_parameters"] < 0.6 * before["nonzero_parameters"]
    elif method == "prune":
        assert after["flops_per_sample"] <= 0.7 * before["flops_per_sample"]
        assert after["parameters"] < before["parameters"]
    else:
        assert after["parameters"] < before["parameters"]


@pytest.mark.slow
def test_capacity_curve_logged(workdir):
    result = run_cli(
        ["capacity", "--model", "tinynet", "--weights", "none", "--epochs", "1", "--bits", "0,16,22,23",
         "--idle-seconds", "0", "--quiet"],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    client, run = single_run(workdir)
    history = client.get_metric_history(run.info.run_id, "capacity_accuracy")
    curve = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]
    assert [bits for bits, _ in curve] == [0, 16, 22, 23]
    assert run.data.metrics["capacity_bits"] == largest_safe_bits(curve, 0.01)
    assert run.data.metrics["accuracy_bits0"] == curve[0][1]
    assert run.data.tags["joulebench.command"] == "capacity" and "config_hash" not in run.data.tags
    assert {"capacity.png", "capacity.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert f"capacity  {int(run.data.metrics['capacity_bits'])} bits" in result.stdout


@pytest.mark.slow
def test_capacity_bad_bits_one_line(workdir):
    result = run_cli(["capacity", "--model", "tinynet", "--weights", "none", "--bits", "0-40"], cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "bits values '0-40' not understood" in result.stderr
