"""``joulebench sweep --backend slurm`` against a real single-node Slurm (munged, slurmctld and slurmd
started here, tests/support/slurm.py) and a real ``mlflow server`` on 127.0.0.1: a 2 × 2 grid as a
job array, the Slurm tags on every run, a cell cancelled mid-run closed KILLED with Slurm's state,
and a rerun that submits that cell alone. No GPU here: cells ask Slurm for 0 GPUs (the CPU)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from support import MlflowServer, free_port, run_cli
from support.slurm import slurm_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("slurmctld") is None,
                       reason="Slurm is not installed (install.sh installs slurm-wlm and munge as root)"),
]

QUICK = ["--weights", "none", "--epochs", "1", "--limit-train-batches", "2", "--idle-seconds", "0",
         "--inference-batches", "1"]


@pytest.fixture
def cluster(tmp_path):
    with slurm_cluster(tmp_path / "slurm") as running:
        yield running


@pytest.fixture
def server(tmp_path):
    running = MlflowServer(tmp_path / "server", free_port()).start()
    yield running
    running.stop()


def sweep_args(partition: str) -> list[str]:
    # 30 short epochs: a cell trains long enough (seconds) to be cancelled mid-run.
    return ["sweep", "--models", "tinynet", "--methods", "baseline,prune", "--repeats", "2", *QUICK,
            "--epochs", "30", "--quiet",
            "--backend", "slurm", "--slurm-partition", partition, "--slurm-gpus-per-cell", "0",
            "--slurm-time", "10"]


def cell_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("joulebench")
    return [] if experiment is None else client.search_runs([experiment.experiment_id], "tags.config_hash != ''")


def start_sweep(cluster, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """The test grid's `joulebench sweep --backend slurm`, started as a user starts it."""
    return subprocess.Popen([str(Path(sys.executable).with_name("joulebench")), *sweep_args(cluster.partition)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_a_cell(sweep: subprocess.Popen, cluster, client: MlflowClient, wanted) -> None:
    """Until a cell's run is ``wanted`` (at most 300 s), while the sweep still runs."""
    deadline = time.monotonic() + 300
    while not any(wanted(run) for run in cell_runs(client)):
        assert sweep.poll() is None, sweep.communicate()
        assert time.monotonic() < deadline, cluster.tails()
        time.sleep(0.5)


def test_a_grid_runs_as_a_slurm_job_array_and_a_cancelled_cell_reruns_alone(tmp_path, cluster, server):
    work = tmp_path / "work"
    work.mkdir()
    env = cluster.env | {"MLFLOW_TRACKING_URI": server.uri}
    client = MlflowClient(server.uri)
    first = start_sweep(cluster, env, work)
    try:
        wait_for_a_cell(first, cluster, client, lambda r: r.data.tags.get("slurm.job_id", "").endswith("_1"))
        cancelled = next(r for r in cell_runs(client) if r.data.tags["slurm.job_id"].endswith("_1"))
        cluster.run("scancel", cancelled.data.tags["slurm.job_id"])  # one task, mid-run
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 1, err  # the sweep went through; one cell failed
    assert "4 combinations: 3 finished now, 0 already finished (skipped), 1 failed" in out, out
    assert f"failed    {cancelled.info.run_name}: Slurm job {cancelled.data.tags['slurm.job_id']} CANCELLED" in out

    runs = {run.info.run_id: run for run in cell_runs(client)}
    killed = runs[cancelled.info.run_id]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["slurm.state"] == "CANCELLED"
    finished = [run for run in runs.values() if run.info.status == "FINISHED"]
    assert len(finished) == 3
    array = cancelled.data.tags["slurm.job_id"].split("_")[0]
    for run in runs.values():
        assert run.data.tags["slurm.job_id"].startswith(f"{array}_")
        assert (run.data.tags["slurm.node"], run.data.tags["slurm.gpus"]) == (cluster.node, "none")

    second = run_cli(sweep_args(cluster.partition), cwd=work, env=env)
    assert second.returncode == 0, second.stderr
    assert "4 combinations: 1 finished now, 3 already finished (skipped), 0 failed" in second.stdout
    rerun = [run for run in cell_runs(client) if run.info.run_id not in runs]
    assert len(rerun) == 1 and rerun[0].info.status == "FINISHED"
    assert rerun[0].data.tags["config_hash"] == cancelled.data.tags["config_hash"]
    assert not rerun[0].data.tags["slurm.job_id"].startswith(f"{array}_")  # a new job, of one task


def test_stopping_the_sweep_cancels_its_slurm_job_and_closes_the_runs_killed(tmp_path, cluster, server):
    env = cluster.env | {"MLFLOW_TRACKING_URI": server.uri}
    client = MlflowClient(server.uri)
    sweep = start_sweep(cluster, env, tmp_path)
    try:
        wait_for_a_cell(sweep, cluster, client, lambda r: r.info.status == "RUNNING")
        sweep.send_signal(signal.SIGTERM)  # as Ctrl-C, or a closed terminal
        _, err = sweep.communicate(timeout=180)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, err
    assert cluster.run("squeue", "-h").stdout == ""  # every task cancelled, none left queued
    runs = cell_runs(client)
    assert runs and {run.info.status for run in runs} == {"KILLED"}
    (parent,) = client.search_runs([runs[0].info.experiment_id], "tags.run_kind = 'sweep'")
    assert parent.info.status == "KILLED"


def test_slurm_refuses_a_store_the_nodes_cannot_share_and_options_slurm_would_not_take(tmp_path, cluster):
    """Checked before the parent run opens: exit 2, one line, nothing submitted."""
    sqlite = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = run_cli(sweep_args(cluster.partition), cwd=tmp_path, env=cluster.env | sqlite)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Slurm's nodes cannot reach the MLflow store sqlite:///" in result.stderr
    server_uri = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # never contacted: refused first
    args = sweep_args("no-such-partition")
    result = run_cli(args, cwd=tmp_path, env=cluster.env | server_uri)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Slurm would not run a cell with these options:" in result.stderr
    assert "partition" in result.stderr.lower()
    assert cluster.run("squeue", "-h").stdout == ""


@pytest.mark.parametrize("options, said", [
    ({"gpus_per_cell": "²"}, "--slurm-gpus-per-cell must be a whole number from 0 to 16, got '²'"),
    ({"gpus_per_cell": "17"}, "--slurm-gpus-per-cell must be a whole number from 0 to 16"),
    ({"gpus_per_cell": "-1"}, "--slurm-gpus-per-cell must be a whole number from 0 to 16"),
    ({"partition": "gpu a100"}, "--slurm-partition 'gpu a100' is not a Slurm name or time"),
    ({"time_limit": ""}, "--slurm-time '' is not a Slurm name or time"),
    ({"pairs": ("array=0-3",)}, "--slurm-option 'array=0-3': give an sbatch long option"),
    ({"pairs": ("--wrap=rm -rf /",)}, "(not array, chdir, error, job-name, output, parsable, wrap: the sweep sets those)"),
    ({"pairs": ("Qos=high",)}, "--slurm-option 'Qos=high'"),
])
def test_slurm_options_are_checked_before_anything_runs_no_cluster_needed(options, said):
    from joulebench.errors import ConfigError
    from joulebench.sweep import make_slurm_options

    given = {"partition": None, "account": None, "time_limit": None, "gpus_per_cell": None, "share_node": False,
             "pairs": ()} | options
    with pytest.raises(ConfigError) as raised:
        make_slurm_options(*given.values())
    assert said in str(raised.value) and "\n" not in str(raised.value)


def test_slurm_options_become_sbatch_arguments_exclusive_with_a_gpu_by_default():
    from joulebench.sweep import make_slurm_options

    options = make_slurm_options("gpu", "lab", "2:00:00", None, False, ("qos=high", "--constraint=a100", "requeue"))
    assert options.sbatch_arguments() == ["--exclusive", "--gres=gpu:1", "--partition=gpu", "--account=lab",
                                          "--time=2:00:00", "--qos=high", "--constraint=a100", "--requeue"]
    assert make_slurm_options(None, None, None, "0", True, ()).sbatch_arguments() == []
    assert make_slurm_options(None, None, None, None, False, ()) is None  # no --slurm-* option given


DOC = Path(__file__).resolve().parents[1] / "docs" / "sweep-and-report.md"


def documented(step: str) -> str:
    """The one bash block of the Slurm recipe marked ``tested as: slurm (STEP)``."""
    (block,) = re.findall(rf"<!-- tested as: slurm \({step}\) -->\n```bash\n(.*?)```", DOC.read_text(), re.DOTALL)
    return block


def test_the_documented_cluster_recipe_runs_verbatim(tmp_path, cluster):
    shared, project = tmp_path / "shared", tmp_path / "project"
    shared.mkdir(), project.mkdir()
    port = free_port()
    env = {k: v for k, v in cluster.env.items() if k != "MLFLOW_TRACKING_URI"} | {
        "SHARED": str(shared), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "PARTITION": cluster.partition,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # its job workers serve no purpose here
    }
    # A session of its own: the server the block leaves running is stopped with its workers, by group.
    subprocess.run(["bash", "-euc", documented("server")], cwd=project, env=env, timeout=60, check=True,
                   start_new_session=True)
    server = int((shared / "mlflow-server.pid").read_text())
    try:
        deadline = time.monotonic() + 120
        while not _healthy(f"http://127.0.0.1:{port}/health"):
            assert time.monotonic() < deadline, (shared / "mlflow-server.log").read_text()[-3000:]
            time.sleep(0.5)
        result = subprocess.run(["bash", "-euc", documented("sweep")], cwd=project, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "2 combinations: 2 finished now, 0 already finished (skipped), 0 failed" in result.stdout
        assert (project / "reports" / "report.html").is_file()
        runs = cell_runs(MlflowClient(f"http://127.0.0.1:{port}"))
        assert sorted(run.info.run_name for run in runs) == ["tinynet-baseline-r0", "tinynet-prune-r0"]
        assert {(run.info.status, run.data.tags["slurm.node"]) for run in runs} == {("FINISHED", cluster.node)}
        assert (shared / "mlflow.db").is_file() and any((shared / "mlartifacts").iterdir())
    finally:
        os.killpg(os.getpgid(server), signal.SIGTERM)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
