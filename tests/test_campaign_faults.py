"""Campaign, faults: signals to ``train`` and to a sweep's parent and children, a tracking server
stopped mid-run, a full disk, concurrent first use of a store, hostile data, short epochs.

Each case is run as a user runs it (the installed ``joulebench`` in a subprocess, in a fresh
directory) and checked by what it leaves: its exit code, its one line, and the statuses of
the runs read back from MLflow. The promise: a fault ends every run in a true state with what
it finished kept; a result is never silently wrong; no two runs of one cell measure at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from joulebench.config import make_config
from joulebench.tracking import recorded_run
from support import MlflowServer, free_port, images, run_cli
from support.grid import grid
from support.campaign import LONG, QUICK, cells, runs, running_cell_with_an_epoch, start, wait_for

# Every test here runs training processes and faults or stops them: minutes in all.
pytestmark = pytest.mark.slow

SWEEP = ["sweep", "--models", "tinynet", "--methods", "baseline,prune", *LONG[2:]]


def pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("joulebench: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- signals


def test_train_on_sighup_is_killed_like_sigterm(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    process = start(["train", *LONG], workdir)
    try:
        run = wait_for(lambda: running_cell_with_an_epoch(uri), 300, "an epoch", process)
        process.send_signal(signal.SIGHUP)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "interrupted; the MLflow run (if one started) is marked KILLED" in one_error_line(err)
    assert MlflowClient(uri).get_run(run.info.run_id).info.status == "KILLED"


def test_sweep_parent_on_sighup_stops_its_child_and_closes_every_run(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    sweep = start(SWEEP, workdir)
    try:
        child = wait_for(lambda: running_cell_with_an_epoch(uri), 300, "the first cell's epoch", sweep)
        sweep.send_signal(signal.SIGHUP)
        _, err = sweep.communicate(timeout=120)
    finally:
        sweep.kill()
    assert sweep.returncode == 130, err
    statuses = Counter(run.info.status for run in runs(uri))
    assert statuses == {"KILLED": 2}  # the parent, and the child it stopped; nothing RUNNING
    assert pid_gone(int(child.data.tags["process.pid"]))


def test_sweep_parent_sigkilled_takes_its_child_along_and_the_rerun_runs_each_cell_once(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    sweep = start(SWEEP, workdir)
    try:
        child = wait_for(lambda: running_cell_with_an_epoch(uri), 300, "the first cell's epoch", sweep)
        sweep.send_signal(signal.SIGKILL)
        sweep.communicate(timeout=60)
        pid = int(child.data.tags["process.pid"])
        wait_for(lambda: pid_gone(pid), 60, "the orphaned child to die with its sweep")
    finally:
        sweep.kill()
    # The child was told by the kernel (PR_SET_PDEATHSIG) and closed its own run.
    assert MlflowClient(uri).get_run(child.info.run_id).info.status == "KILLED"
    rerun = run_cli(SWEEP, cwd=workdir, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    finished = Counter(run.data.tags["config_hash"] for run in cells(uri) if run.info.status == "FINISHED")
    assert sorted(finished.values()) == [1, 1]
    assert not [run for run in runs(uri) if run.info.status == "RUNNING"]


def test_sweep_child_sigkilled_has_its_run_closed_by_the_sweep_and_rerun(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    sweep = start(SWEEP, workdir)
    try:
        child = wait_for(lambda: running_cell_with_an_epoch(uri), 300, "the first cell's epoch", sweep)
        os.kill(int(child.data.tags["process.pid"]), signal.SIGKILL)
        out, err = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    assert sweep.returncode == 1, err  # one cell failed, the other ran
    killed = MlflowClient(uri).get_run(child.info.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["closed_by"] == "sweep: its process ended with signal SIGKILL"
    assert "1 finished now, 0 already finished (skipped), 1 failed" in out
    rerun = run_cli(SWEEP, cwd=workdir, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 combinations: 1 finished now, 1 already finished (skipped), 0 failed" in rerun.stdout
    finished = Counter(run.data.tags["config_hash"] for run in cells(uri) if run.info.status == "FINISHED")
    assert sorted(finished.values()) == [1, 1]


SHORT_SWEEP = [*SWEEP[:5], *QUICK[2:], "--epochs", "1", "--limit-train-batches", "2"]


def _grid_hashes(sweep: list[str]) -> list[str]:
    """The cells' config hashes, as ``joulebench sweep`` computes them for these arguments."""
    return [c.config_hash for c in grid(["tinynet"], ["baseline", "prune"], 1, None, *sweep[5:])]


def _fake_running_run(uri: str, config_hash: str, pid: int, host: str | None = None,
                      minutes_ago: float = 0) -> str:
    """A RUNNING cell run as process ``pid`` of this host (or of ``host``) leaves it, started
    ``minutes_ago`` and silent since (its tags as train sets them)."""
    from joulebench.tracking.process import process_tags

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("joulebench")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("joulebench")
    stat = Path(f"/proc/{pid}/stat")
    start_time = stat.read_text().rpartition(")")[2].split()[19] if stat.exists() else "1"
    tags = process_tags() | {"process.pid": str(pid), "process.start": start_time, "config_hash": config_hash}
    if host:
        tags["process.host"] = host
    started = int((time.time() - 60 * minutes_ago) * 1000)
    return client.create_run(experiment_id, start_time=started, tags=tags).info.run_id


def test_resumed_sweep_closes_runs_whose_process_is_gone_here_or_silent_elsewhere(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    gone = subprocess.Popen(["true"])
    gone.wait()
    baseline, prune = _grid_hashes(SHORT_SWEEP)
    orphan = _fake_running_run(uri, baseline, gone.pid)
    remote = _fake_running_run(uri, prune, 7, host="node-17", minutes_ago=20)
    result = run_cli(SHORT_SWEEP, cwd=workdir)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(uri)
    closed = client.get_run(orphan)
    assert closed.info.status == "KILLED" and closed.data.tags["closed_by"] == "sweep resume: its process was gone"
    silent = client.get_run(remote)
    assert silent.info.status == "KILLED"
    assert silent.data.tags["closed_by"] == "sweep resume: silent for 20 min on another host"
    finished = Counter(run.data.tags["config_hash"] for run in cells(uri) if run.info.status == "FINISHED")
    assert finished == {baseline: 1, prune: 1}


def test_resumed_sweep_refuses_a_cell_still_heard_from_on_another_host(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    live = _fake_running_run(uri, _grid_hashes(SHORT_SWEEP)[0], 7, host="node-17", minutes_ago=2)
    result = run_cli(SHORT_SWEEP, cwd=workdir, timeout=120)
    assert result.returncode == 75
    assert f"tinynet-baseline-r0 is still running (run {live}, pid 7 on node-17)" in one_error_line(result.stderr)
    assert [run.info.run_id for run in runs(uri)] == [live]


def test_resumed_sweep_refuses_to_start_a_cell_that_still_runs(workdir):
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    alive = subprocess.Popen(["sleep", "120"])
    try:
        live = _fake_running_run(uri, _grid_hashes(SHORT_SWEEP)[1], alive.pid)
        result = run_cli(SHORT_SWEEP, cwd=workdir, timeout=120)
    finally:
        alive.kill()
        alive.wait()
    assert result.returncode == 75
    line = one_error_line(result.stderr)
    assert f"tinynet-prune-r0 is still running (run {live}, pid {alive.pid} on " in line
    assert [run.info.run_id for run in runs(uri)] == [live]  # no parent opened, no cell started


# --------------------------------------------------------------------------- the tracking server


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path / "server", free_port()).start()
    yield server
    server.stop()


def test_tracking_server_restarted_mid_run_loses_nothing(tmp_path, server):
    # The default grace at the run's end (conftest shortens it): the server's restart may outlast 2 s.
    process = start(["train", *LONG], tmp_path,
                    {"MLFLOW_TRACKING_URI": server.uri, "JOULEBENCH_OUTAGE_GRACE_SECONDS": "30"})
    try:
        run = wait_for(lambda: running_cell_with_an_epoch(server.uri), 300, "an epoch", process)
        server.stop()
        time.sleep(3)  # epochs go on meanwhile: their calls are kept in the outbox
        server.start()
        out, err = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 0, err
    finished = MlflowClient(server.uri).get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(server.uri).get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == list(range(1, 61))
    assert "accuracy" in finished.data.metrics and not (tmp_path / "joulebench-unsent").exists()


def test_tracking_server_gone_for_good_keeps_every_result_for_resend(tmp_path, server):
    process = start(["train", *LONG], tmp_path, {"MLFLOW_TRACKING_URI": server.uri})
    try:
        run = wait_for(lambda: running_cell_with_an_epoch(server.uri), 300, "an epoch", process)
        server.stop()
        _, err = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == 75
    folder = tmp_path / "joulebench-unsent" / run.info.run_id
    line = one_error_line(err)
    assert "the run ended FINISHED and everything unsent (its end too)" in line and f"joulebench resend {Path('joulebench-unsent') / run.info.run_id}" in line
    assert (folder / "journal.jsonl").is_file()
    server.start()
    assert MlflowClient(server.uri).get_run(run.info.run_id).info.status == "RUNNING"
    sent = run_cli(["resend", str(folder)], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": server.uri})
    assert sent.returncode == 0, sent.stderr
    assert f"of run {run.info.run_id}" in sent.stdout and not folder.exists()
    client = MlflowClient(server.uri)
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and "accuracy" in finished.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == list(range(1, 61))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.json", "epochs.csv", "energy"}


def test_stopped_while_the_tracking_server_is_gone_says_the_end_is_kept_not_recorded(tmp_path, server):
    """SIGTERM (as Ctrl-C, scancel) with the store away: the run's KILLED end waits in the outbox
    and the line says so, where it once said "marked KILLED" and left the run RUNNING unsaid."""
    process = start(["train", *LONG], tmp_path, {"MLFLOW_TRACKING_URI": server.uri})
    try:
        run = wait_for(lambda: running_cell_with_an_epoch(server.uri), 300, "an epoch", process)
        server.stop()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 75, err
    folder = Path("joulebench-unsent") / run.info.run_id
    line = one_error_line(err)
    assert "the run ended KILLED and everything unsent (its end too)" in line and f"joulebench resend {folder}" in line
    assert "marked KILLED" not in err and "Traceback" not in err
    server.start()
    assert MlflowClient(server.uri).get_run(run.info.run_id).info.status == "RUNNING"
    sent = run_cli(["resend", str(folder)], cwd=tmp_path, env={"MLFLOW_TRACKING_URI": server.uri})
    assert sent.returncode == 0, sent.stderr
    assert MlflowClient(server.uri).get_run(run.info.run_id).info.status == "KILLED"


def test_a_bug_with_the_tracking_server_gone_keeps_its_traceback_and_says_where_the_end_waits(
        tmp_path, server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZeroDivisionError) as raised:
        with recorded_run(make_config(model="tinynet", device="cpu"), {}, {}) as recorder:
            server.stop()
            1 / 0
    (note,) = raised.value.__notes__
    assert "the run ended FAILED and everything unsent (its end too)" in note
    assert f"joulebench resend {Path('joulebench-unsent') / recorder.run_id}" in note


# --------------------------------------------------------------------------- the store itself


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs: too small for a new store (about 950 KB). Needs root to mount."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (not root?): {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_while_creating_the_store_leaves_nothing_half_made(tmp_path, tiny_disk):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tiny_disk / 'mlflow.db'}"}
    result = run_cli(["train", *QUICK, "--epochs", "1", "--limit-train-batches", "1"], cwd=tmp_path, env=env)
    assert result.returncode == 75, result.stderr
    assert f"cannot create the MLflow store {tiny_disk / 'mlflow.db'}" in one_error_line(result.stderr)
    assert list(tiny_disk.iterdir()) == []  # no half-migrated mlflow.db to fail for ever after


def test_four_trains_started_at_once_on_a_fresh_store_all_finish(tmp_path):
    processes = [start(["train", *QUICK, "--epochs", "1", "--limit-train-batches", "2", "--seed", str(seed)],
                       tmp_path) for seed in range(4)]
    results = [(process.wait(600), process.communicate()[1]) for process in processes]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    assert Counter(run.info.status for run in runs(f"sqlite:///{tmp_path / 'mlflow.db'}")) == {"FINISHED": 4}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlflow.db", "mlruns"]


# --------------------------------------------------------------------------- data and results


def test_a_last_training_batch_of_one_sample_is_dropped_not_fatal(workdir):
    result = run_cli(["train", *QUICK, "--epochs", "1", "--batch-size", "4"], cwd=workdir)  # 1437 % 4 == 1
    assert result.returncode == 0, result.stderr
    (run,) = runs(f"sqlite:///{workdir / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.data.metrics["train_samples"] == 1436


def test_unreadable_images_are_left_out_counted_and_listed(workdir):
    images(workdir / "data", ["cat", "dog"], per_class=8)
    (workdir / "data" / "cat" / "noise.jpg").write_bytes(np.random.default_rng(2).bytes(2000))
    (workdir / "data" / "dog" / "empty.png").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(workdir / "data" / "dog" / "fine.png")
    result = run_cli(["train", *QUICK, "--epochs", "1", "--dataset", "imagefolder:data"], cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "flag      skipped_images: 2 unreadable image files left out" in result.stdout
    (run,) = runs(f"sqlite:///{workdir / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert run.data.tags["skipped_images"].startswith(
        "2 unreadable image files left out (first: data/cat/noise.jpg: not an image PIL can identify;")
    listed = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").download_artifacts(
        run.info.run_id, "data/skipped_images.txt", str(workdir))
    assert Path(listed).read_text().splitlines() == [
        "data/cat/noise.jpg: not an image PIL can identify", "data/dog/empty.png: not an image PIL can identify"]
    assert run.data.metrics["train_samples"] == 13  # 17 readable; 4 of them (20 %) validate


def test_report_of_runs_whose_epochs_are_partly_measured(workdir):
    """An epoch shorter than a meter's update has no epoch_joules: the report says so, no KeyError.

    Whether a real epoch is that short depends on the host's load, so the run is a copy of a real
    one (same params, tags and metrics) whose epoch_joules is epoch 2's only."""
    result = run_cli(["train", *QUICK, "--epochs", "2", "--limit-train-batches", "2"], cwd=workdir)
    assert result.returncode == 0, result.stderr
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    (run,) = runs(uri)
    client = MlflowClient(uri)
    copy = client.create_run(run.info.experiment_id, tags=run.data.tags).info.run_id
    history = [m for key in run.data.metrics if key != "epoch_joules"
               for m in client.get_metric_history(run.info.run_id, key)]
    history.append(Metric("epoch_joules", 5.0, 0, 2))  # epoch 1 unmeasured
    client.log_batch(copy, metrics=history, params=[Param(k, v) for k, v in run.data.params.items()])
    client.set_terminated(copy, "FINISHED")
    client.delete_run(run.info.run_id)
    report = run_cli(["report", "--out", "out"], cwd=workdir)
    assert report.returncode == 0, report.stderr
    summary = (workdir / "out" / "summary.csv").read_text()
    assert "not measured in every epoch" in summary
