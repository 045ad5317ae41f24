"""``joulebench sweep``: grid and hashes, resume after a kill, GPU pinning, Kubernetes submissions."""

import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import kubernetes.client
import mlflow.projects.kubernetes
import pytest
import yaml
from mlflow.projects import _parse_kubernetes_config
from mlflow.projects.utils import load_project
from mlflow.tracking import MlflowClient

from joulebench.cli import main, train
from joulebench.config import make_config, on_device
from joulebench.errors import ConfigError
from joulebench.sweep import (
    KUBERNETES_ENTRY_POINT,
    KubernetesRunner,
    LocalRunner,
    Progress,
    check_job_template,
    grid_table,
    load_backend_config,
    parse_method_overrides,
    pinned_device_ids,
    sweep_hash,
)

from support import run_cli
from support.grid import grid

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
QUICK = ["--weights", "none", "--epochs", "1", "--limit-train-batches", "2", "--idle-seconds", "0",
         "--inference-batches", "1"]


def config_options(train_arguments: list[str]) -> dict:
    """What `joulebench train ARGUMENTS` hands to make_config: its options less train's own two."""
    options = train.make_context("train", train_arguments).params
    options.pop("quiet")
    assert options.pop("run_json") is None  # a sweep's children never write a run record
    return options


def test_grid_is_repeat_major_baseline_first_with_seeds_and_method_params():
    combinations = grid(["tinynet", "alexnet"], ["prune", "baseline"], 2,
                        parse_method_overrides(["prune.amount=0.7"], ["prune", "baseline"]), "--weights", "none")
    assert [c.label for c in combinations] == [
        "tinynet-baseline-r0", "tinynet-prune-r0", "alexnet-baseline-r0", "alexnet-prune-r0",
        "tinynet-baseline-r1", "tinynet-prune-r1", "alexnet-baseline-r1", "alexnet-prune-r1",
    ]
    assert [c.config.seed for c in combinations] == [0, 0, 0, 0, 1, 1, 1, 1]
    prune = combinations[1].config
    assert prune.method_params == {"amount": 0.7, "structured": False}
    assert combinations[0].config.method_params == {}
    assert [c.config.image_size for c in combinations[:4]] == [32, 32, 63, 63]  # alexnet's minimum
    assert len({c.config_hash for c in combinations}) == 8


def test_grid_hash_is_the_grid_whatever_the_order():
    one = grid(["tinynet"], ["baseline", "prune"], 2)
    other = grid(["tinynet"], ["prune", "baseline"], 2)
    assert sweep_hash(one) == sweep_hash(other)
    assert sweep_hash(one) != sweep_hash(grid(["tinynet"], ["baseline", "prune"], 3))
    assert sweep_hash(one) != sweep_hash(grid(["tinynet"], ["baseline", "prune"], 2, None, "--epochs", "2"))
    assert [row["config_hash"] for row in grid_table(one)] == [c.config_hash for c in one]


def test_child_arguments_rebuild_the_same_config_and_hash():
    """What `train` makes of a child's arguments is the config the sweep hashed, field by field."""
    combinations = grid(["tinynet"], ["baseline", "prune", "stego"], 2,
                        {"prune": ("amount=0.3", "structured=true"), "stego": ("bits=12",)},
                        "--weights", "none", "--lr", "1e-3", "--epochs", "2", "--limit-train-batches", "3",
                        "--country", "fra", "--idle-seconds", "0")
    for combination in combinations:
        child = make_config(**config_options(combination.train_arguments("PARENT")))
        assert child.config_hash() == combination.config_hash
        assert asdict(child) == asdict(combination.config) | {"run_name": combination.label, "parent_run_id": "PARENT"}


def test_method_param_must_name_a_method_of_the_sweep():
    assert parse_method_overrides(["prune.amount=0.7", "prune.structured=true", "stego.bits=8"],
                                  ["prune", "stego"]) == {"prune": ("amount=0.7", "structured=true"),
                                                          "stego": ("bits=8",)}
    with pytest.raises(ConfigError, match="is not in --methods baseline,prune"):
        parse_method_overrides(["stego.bits=8"], ["baseline", "prune"])


BAD_INPUTS = [
    (["--models", ","], "--models is empty"),
    (["--models", "resnet19"], "unknown model 'resnet19'"),
    (["--models", "tinynet", "--methods", "quantise"], "unknown method 'quantise'"),
    (["--models", "tinynet", "--repeats", "0"], "--repeats must be a whole number from 1 to 1000"),
    (["--models", "tinynet", "--repeats", "²"], "--repeats must be a whole number from 1 to 1000"),
    (["--models", "tinynet", "--repeats", "10000000000"], "--repeats must be a whole number from 1 to 1000"),
    (["--models", "tinynet", "--param", "amount=0.7"], "must be METHOD.KEY=VALUE"),
    (["--models", "tinynet", "--methods", "baseline,prune", "--param", "stego.bits=16"], "is not in --methods"),
    (["--models", "tinynet", "--param", "prune.bits=3"], "has no parameter 'bits'"),
    (["--models", "tinynet", "--epochs", "0"], "--epochs must be > 0"),
    # Rules between options, and the files cells read: checked for every cell before the first starts.
    (["--models", "tinynet", "--methods", "baseline,stego", "--param", "stego.dtype=float16", "--device", "cpu"],
     "stego dtype=float16 runs on CUDA only"),
    (["--models", "tinynet", "--methods", "baseline,stego", "--param", "stego.dtype=float16", "--param",
      "stego.bits=8"], "stego dtype=float16 needs bits ≥ 16"),
    (["--models", "tinynet", "--batch-size", "1"], "its BatchNorm layers need at least 2 samples per batch"),
    (["--models", "tinynet", "--weights", "missing.pth"], "weights file missing.pth not found"),
    (["--models", "tinynet", "--gpus", "99"], "names GPU 99 but"),
    (["--models", "tinynet", "--gpus", "0,0"], "distinct GPU indices"),
    (["--models", "tinynet", "--backend", "kubernetes"], "needs --backend-config FILE"),
    (["--models", "tinynet", "--backend-config", "x.json"], "only read with --backend kubernetes"),
    (["--models", "tinynet", "--backend", "kubernetes", "--gpus", "0", "--backend-config", "x.json"],
     "--gpus is for local runs"),
    (["--models", "tinynet", "--backend", "kubernetes", "--backend-config", str(DEPLOY / "backend-config.json")],
     "pods cannot reach the MLflow store sqlite:///"),
    (["--models", "tinynet", "--backend", "gke"], "'gke' is not one of 'local', 'kubernetes'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_one_line_exit_2_no_run(workdir, monkeypatch, capsys, args, message):
    # By absolute path: within one process MLflow reuses the store it opened for a relative URI.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--weights", "none", "--quiet", *args])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


# --------------------------------------------------------------------------- resume after a kill


def children(client: MlflowClient, parent_run_id: str):
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def finished_children(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("joulebench")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED' and tags.config_hash != ''")


@pytest.mark.slow
def test_cells_that_diverge_fail_and_the_sweep_goes_past_them(workdir):
    """A cell failing for its own reasons (a loss gone to inf: exit 2, its run FAILED) used to stop
    the grid as if its input failed every cell; each cell now runs, and each failure is reported."""
    done = run_cli(["sweep", "--models", "tinynet", "--methods", "baseline,prune", *QUICK, "--lr", "1e300",
                    "--quiet"], cwd=workdir)
    assert done.returncode == 1, done.stderr
    failed = sorted(line.split(":")[0] for line in done.stdout.splitlines() if line.startswith("failed"))
    assert failed == ["failed    tinynet-baseline-r0", "failed    tinynet-prune-r0"], done.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("joulebench").experiment_id], "tags.run_kind = 'sweep'")
    assert parent.info.status == "FAILED"
    assert sorted(run.info.status for run in children(client, parent.info.run_id)) == ["FAILED", "FAILED"]


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_combinations(workdir):
    args = ["sweep", "--models", "tinynet", "--methods", "baseline,prune", "--repeats", "2", *QUICK, "--quiet"]
    executable = Path(sys.executable).with_name("joulebench")
    first = subprocess.Popen([str(executable), *args], cwd=workdir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 400
        while len(finished_children(workdir / "mlflow.db")) < 2:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first two combinations did not finish in time"
            time.sleep(0.5)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, err
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("joulebench").experiment_id],
                                   "tags.run_kind = 'sweep'")
    assert parent.info.status == "KILLED"
    before = {run.info.run_id: run.data.tags["config_hash"] for run in children(client, parent.info.run_id)
              if run.info.status == "FINISHED"}
    assert len(before) == 2
    # The sweep stopped its running child, which marked its run KILLED (if it had started one).
    assert {run.info.status for run in children(client, parent.info.run_id)} <= {"FINISHED", "KILLED"}

    second = run_cli(args, cwd=workdir)
    assert second.returncode == 0, second.stderr
    assert "4 combinations: 2 finished now, 2 already finished (skipped), 0 failed" in second.stdout
    assert f"parent    {parent.info.run_id} (resumed)" in second.stdout
    runs = children(client, parent.info.run_id)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert len(finished) == 4
    assert len({run.data.tags["config_hash"] for run in finished}) == 4
    assert len({run.data.tags["process.pid"] for run in finished}) == 4  # a process per cell, forked or not
    assert {run.info.run_id for run in finished} >= set(before)  # the first two were kept, not rerun
    for config_hash in before.values():
        assert [run.info.status for run in runs if run.data.tags["config_hash"] == config_hash] == ["FINISHED"]
    assert sorted(run.info.run_name for run in finished) == [
        "tinynet-baseline-r0", "tinynet-baseline-r1", "tinynet-prune-r0", "tinynet-prune-r1"]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    logs = {a.path for a in client.list_artifacts(parent.info.run_id, "logs")}
    assert len(logs) >= 2 and all(path.endswith(".log") for path in logs)


# --------------------------------------------------------------------------- cheap cells

@pytest.mark.slow
def test_the_fork_server_preloads_without_a_thread_or_cuda_fake_cuda_init_no_gpu_here():
    """What the server imports must leave each forked cell a clean start: no thread to lose in
    the fork, no CUDA context to share (its initialisation is replaced by a failing fake)."""
    check = ("import threading, torch.cuda\n"
             "def initialised(*args): raise AssertionError('the fork server asked CUDA')\n"
             # a device count asked before the fork is cached, and the driver it starts is not fork-safe
             "torch.cuda._lazy_init = torch.cuda.device_count = torch.cuda.is_available = initialised\n"
             "import joulebench.sweep.warm\n"
             "assert threading.active_count() == 1, threading.enumerate()\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# --------------------------------------------------------------------------- one sweep per grid

@pytest.mark.slow
def test_two_identical_sweeps_started_together_run_each_cell_once(workdir):
    """Was: both found every cell unfinished and ran each twice at once on one device."""
    args = ["sweep", "--models", "tinynet", "--methods", "baseline", *QUICK, "--quiet"]
    executable = str(Path(sys.executable).with_name("joulebench"))
    both = [subprocess.Popen([executable, *args], cwd=workdir, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted(((p.wait(timeout=300), *p.communicate()) for p in both), key=lambda r: r[0])
    (done, _, _), (refused, _, said) = results
    assert (done, refused) == (0, 75), results
    assert len(said.strip().splitlines()) == 1 and "the same sweep (grid " in said, said
    assert "is already running on this host (process " in said
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("joulebench").experiment_id
    assert [r.info.status for r in client.search_runs([experiment], "tags.run_kind = 'sweep'")] == ["FINISHED"]
    assert len(finished_children(workdir / "mlflow.db")) == 1
    assert len(client.search_runs([experiment])) == 2  # the parent and its one cell: nothing twice


def test_a_grids_lock_dies_with_its_holder_and_is_its_grids_alone(tmp_path):
    from joulebench.errors import EnvironmentFault
    from joulebench.sweep.lock import hold_grid

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from joulebench.sweep.lock import hold_grid\n"
        f"with hold_grid('sqlite:///{tmp_path}/x.db', '1', 'abc'):\n"
        "    print('held', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(EnvironmentFault, match=f"already running on this host \\(process {holder.pid}\\)"):
            with hold_grid(f"sqlite:///{tmp_path}/x.db", "1", "abc"):
                pass
        with hold_grid(f"sqlite:///{tmp_path}/x.db", "1", "another grid"):
            pass
        with hold_grid(f"sqlite:///{tmp_path}/y.db", "1", "abc"):  # the same grid in another store
            pass
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs
        holder.wait()
    with hold_grid(f"sqlite:///{tmp_path}/x.db", "1", "abc"):
        pass


# --------------------------------------------------------------------------- one child per GPU

# A stand-in for a cell's `train` (argv ends URI EXPERIMENT PARENT CONFIG_HASH STATUS): it opens the
# cell's run under the parent and closes it STATUS, or dies with it open (RUNNING).
STAND_IN_RUN = """
import os, sys
from mlflow.tracking import MlflowClient
uri, experiment, parent, config_hash, status = sys.argv[-5:]
store = MlflowClient(uri)
run = store.create_run(experiment, tags={"config_hash": config_hash, "mlflow.parentRunId": parent})
if status == "RUNNING":
    os.kill(os.getpid(), 9)
store.set_terminated(run.info.run_id, status)
"""


@dataclass
class SweepStore:
    """A real store holding a sweep's parent run, for runners whose children are stand-ins."""

    uri: str
    experiment_id: str
    parent: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def cell(self, combination, status: str) -> list[str]:
        """The stand-in's arguments for ``combination``'s run, to be left ``status``."""
        return [self.uri, self.experiment_id, self.parent, combination.config_hash, status]


@pytest.fixture
def sweep_store(tmp_path, monkeypatch) -> SweepStore:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("joulebench", artifact_location=str(tmp_path / "artifacts"))
    return SweepStore(uri, experiment_id, client.create_run(experiment_id).info.run_id)


RECORD_CHILD = """
import json, os, sys, time
start = time.monotonic()
time.sleep(0.4)
with open(sys.argv[1], "a") as handle:
    handle.write(json.dumps([os.environ["CUDA_VISIBLE_DEVICES"], sys.argv[2], start, time.monotonic()]) + "\\n")
""" + STAND_IN_RUN


@pytest.mark.slow
def test_gpus_run_one_child_per_gpu_at_a_time_fake_gpus_no_gpu_here(tmp_path, sweep_store):
    """Two "GPUs" (physical ids 3 and 5): each child sees one; never two children on one id.

    No GPU here, so each child is a stand-in process that records its CUDA_VISIBLE_DEVICES and
    when it ran, and closes a run FINISHED as `train` would, instead of a measured `joulebench train`.
    """
    record = tmp_path / "children.jsonl"
    combinations = grid(["tinynet"], ["baseline"], 6, None, "--weights", "none")
    runner = LocalRunner(
        ["3", "5"], sweep_store.parent, tmp_path,
        command=lambda c, parent: [sys.executable, "-c", RECORD_CHILD, str(record), c.label,
                                   *sweep_store.cell(c, "FINISHED")],
    )
    outcomes = runner.run(combinations, Progress(6, 0, 2, bars=False))
    assert sorted(o.combination.label for o in outcomes) == sorted(c.label for c in combinations)
    assert all(o.ok for o in outcomes)
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(label for _, label, _, _ in rows) == sorted(c.label for c in combinations)
    assert {gpu for gpu, *_ in rows} == {"3", "5"}
    for gpu in ("3", "5"):
        spans = sorted((start, end) for g, _, start, end in rows if g == gpu)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
    spans = {gpu: [(s, e) for g, _, s, e in rows if g == gpu] for gpu in ("3", "5")}
    assert any(s3 < e5 and s5 < e3 for s3, e3 in spans["3"] for s5, e5 in spans["5"]), "GPUs never ran together"


def test_gpu_indices_map_through_an_outer_cuda_visible_devices():
    assert pinned_device_ids([0, 1], None) == ["0", "1"]
    assert pinned_device_ids([0, 2], "4,6,7") == ["4", "7"]
    assert pinned_device_ids([1], "GPU-aaaa,GPU-bbbb") == ["GPU-bbbb"]


def test_a_cell_that_fails_is_reported_and_the_sweep_goes_past_it(tmp_path, sweep_store):
    """Outcomes come from the runs' records, never from exit codes: the cell that exits 2 before
    opening a run, the one whose process is killed with its run open (closed KILLED here) and the one
    that closed its run FAILED itself are failures; the one whose run FINISHED is not, exit 3 or not."""
    rejecting = "import sys; print('joulebench: error: weights missing'); sys.exit(2)"
    stand_ins = {0: (rejecting, "-"), 1: (STAND_IN_RUN, "RUNNING"), 2: (STAND_IN_RUN, "FAILED"),
                 3: (STAND_IN_RUN + "sys.exit(3)\n", "FINISHED")}  # repeat → (child, the status it leaves)
    combinations = grid(["tinynet"], ["baseline"], 4)
    runner = LocalRunner([None], sweep_store.parent, tmp_path, command=lambda c, p: [
        sys.executable, "-c", stand_ins[c.config.repeat][0], *sweep_store.cell(c, stand_ins[c.config.repeat][1])])
    outcomes = {o.combination.config.repeat: o for o in runner.run(combinations, Progress(4, 0, 1, bars=False))}
    assert {repeat: o.status for repeat, o in outcomes.items()} == {0: None, 1: "KILLED", 2: "FAILED", 3: "FINISHED"}
    assert outcomes[0].detail == "exit 2: joulebench: error: weights missing"
    assert outcomes[1].detail.startswith("signal SIGKILL")
    assert [o.ok for _, o in sorted(outcomes.items())] == [False, False, False, True]
    killed_run, = [run for run in children(sweep_store.client, sweep_store.parent) if run.info.status == "KILLED"]
    assert killed_run.data.tags["closed_by"] == "sweep: its process ended with signal SIGKILL"


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_submissions_rebuild_the_sweeps_config_in_the_pod():
    """MLflow turns each submission into the pod's command; `train` parses it to the same hash.

    No GPU here: the pod resolves --device cuda:0 to itself, so the config is rebuilt on cpu
    and given the pod's device, as the sweep does.
    """
    combinations = grid(["tinynet"], ["baseline", "prune"], 2, {"prune": ("amount=0.7", "structured=true")},
                        "--weights", "none", "--limit-train-batches", "3", run_device="cuda:0")
    entry_point = load_project(str(DEPLOY)).get_entry_point(KUBERNETES_ENTRY_POINT)
    prune = combinations[1].kubernetes_parameters("PARENT")
    assert prune == {
        "parent_run_id": "PARENT", "run_name": "tinynet-prune-r0", "model": "tinynet", "method": "prune",
        "dataset": "digits", "data_dir": "data/datasets", "weights": "none", "epochs": "3", "batch_size": "64",
        "lr": "0.001", "optimizer": "adam", "seed": "0", "image_size": "32", "device": "cuda:0",
        "deterministic": "False", "tf32": "True", "limit-train-batches": "3", "experiment": "joulebench", "country": "USA", "idle_seconds": "5.0",
        "inference_batches": "10", "sample_hz": "10.0", "repeat": "0", "param": "amount=0.7,structured=true",
    }
    for combination in combinations:
        command = shlex.split(entry_point.compute_command(combination.kubernetes_parameters("PARENT"), None))
        assert command[:2] == ["joulebench", "train"]
        options = config_options(command[2:])
        pod_device = options.pop("device")
        child = make_config(**options, device="cpu")
        assert child.method_params == combination.config.method_params
        assert on_device(child, pod_device).config_hash() == combination.config_hash


def test_job_template_makes_a_valid_one_gpu_job_through_mlflow():
    backend_config, project_dir = load_backend_config(DEPLOY / "backend-config.json")
    assert project_dir == DEPLOY
    parsed = _parse_kubernetes_config(backend_config)  # MLflow's own check of the backend config
    job = mlflow.projects.kubernetes._get_kubernetes_job_definition(
        "joulebench", "registry.example.com/ml/joulebench:abc1234", "sha256:0123", ["joulebench", "train"],
        {"MLFLOW_RUN_ID": "r1", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}, parsed["kube-job-template"],
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["joulebench", "train"]
    assert container["image"] == "registry.example.com/ml/joulebench:abc1234@sha256:0123"
    assert {"name": "MLFLOW_RUN_ID", "value": "r1"} in container["env"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["volumeMounts"][0]["mountPath"] == "/mlflow/projects/code/data"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # The Kubernetes client's V1Job model keeps only the fields it knows: a misspelt key is lost.
    api = kubernetes.client.ApiClient()
    model = api._ApiClient__deserialize(job, "V1Job")
    assert api.sanitize_for_serialization(model) == job


def test_backend_config_and_template_problems_are_one_line(tmp_path):
    (tmp_path / "MLproject").write_text((DEPLOY / "MLproject").read_text())
    config = tmp_path / "backend-config.json"
    config.write_text(json.dumps({"kube-job-template-path": "job.yaml"}))
    with pytest.raises(ConfigError, match="lacks repository-uri"):
        load_backend_config(config)
    template = yaml.safe_load((DEPLOY / "job-template.yaml").read_text())
    del template["metadata"]["namespace"]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(template))
    config.write_text(json.dumps({"kube-job-template-path": "job.yaml", "repository-uri": "r/j"}))
    with pytest.raises(ConfigError, match="lacks metadata.namespace"):
        load_backend_config(config)
    (tmp_path / "job.yaml").write_text("kind: Job\n  bad: [indent")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        check_job_template(tmp_path / "job.yaml")


class FakeProjectRun:
    """A submitted run whose pod reaches ``final`` after ``polls`` looks (no cluster here)."""

    def __init__(self, run_id: str, final: str, polls: int) -> None:
        self.run_id, self._final, self._polls = run_id, final, polls

    def state(self) -> str:
        self._polls -= 1
        return self._final if self._polls <= 0 else "RUNNING"

    def cancel(self) -> None:
        raise AssertionError("nothing was interrupted")


def test_kubernetes_runner_nests_and_waits_for_every_run_fake_cluster_no_cluster_here(workdir, monkeypatch):
    """Submissions go to a stand-in for the cluster; nesting is written to the real store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment_id = client.create_experiment("joulebench")
    parent = client.create_run(experiment_id).info.run_id
    combinations = grid(["tinynet"], ["baseline", "prune"], 1, run_device="cuda:0")
    submitted = []

    def submit(project_dir, entry_point, parameters, backend_config, experiment, run_name):
        run_id = client.create_run(experiment, run_name=run_name).info.run_id
        submitted.append((project_dir, entry_point, parameters, experiment, run_name))
        if "baseline" in run_name:  # its pod's train closes the run it finished
            client.set_terminated(run_id, "FINISHED")
        return FakeProjectRun(run_id, "FINISHED" if "baseline" in run_name else "FAILED", polls=2)

    runner = KubernetesRunner({"repository-uri": "r/j"}, DEPLOY, parent, experiment_id, submit, poll_seconds=0.01)
    outcomes = runner.run(combinations, Progress(2, 0, 0, bars=False))
    assert [(s[1], s[2]["run_name"], s[3]) for s in submitted] == [
        ("train", "tinynet-baseline-r0", experiment_id), ("train", "tinynet-prune-r0", experiment_id)]
    assert {o.combination.label: o.ok for o in outcomes} == {"tinynet-baseline-r0": True, "tinynet-prune-r0": False}
    statuses = {run.info.run_name: run.info.status for run in children(client, parent)}
    # The failed Job's run is closed FAILED for it (a later sweep reruns it); a finished Job's
    # run was its pod's to close.
    assert statuses == {"tinynet-baseline-r0": "FINISHED", "tinynet-prune-r0": "FAILED"}
