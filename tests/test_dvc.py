"""The DVC pipeline, run for real on a reduced grid in a temp git copy of the project.

The copy keeps the project's dvc.yaml and DVC config and shrinks params.yaml to the offline
grid: the digits exported by ``fetch_data``, tinynet from scratch (no weights to fetch), two
methods, one short epoch. ``dvc repro`` runs once per module; tests that change the project
work on their own copy of the reproduced one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # about 2½ minutes of CPU: every stage is a real process

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = (
    "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore",
    "data/.gitignore", "data/weights/.gitkeep",
)
EXPERIMENT = "dvc-test"
REDUCED_TRAIN = {
    "dataset": "imagefolder:data/datasets/digits", "weights": "none", "epochs": 1, "image-size": 32,
    "experiment": EXPERIMENT, "device": "cpu", "limit-train-batches": 2, "idle-seconds": 0,
    "inference-batches": 1,
}
STAGES = ("fetch_data", "train@tinynet-baseline-0", "train@tinynet-prune-0", "report")
METRICS = {method: Path(f"results/tinynet-{method}/repeat-0/metrics.json") for method in ("baseline", "prune")}


@dataclass
class Project:
    root: Path
    env: dict[str, str]

    def dvc(self, *args: str) -> str:
        """Run ``dvc ARGS`` here; its output (stdout + stderr), or the test fails showing it."""
        result = subprocess.run(
            [str(Path(sys.executable).with_name("dvc")), *args], cwd=self.root, env=self.env,
            capture_output=True, text=True, timeout=600,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{output}"
        return output

    def metrics(self, method: str) -> dict[str, float]:
        return json.loads((self.root / METRICS[method]).read_text())

    def train_runs(self) -> list:
        """The experiment's training runs (not the report's run), oldest first."""
        client = MlflowClient(f"sqlite:///{self.root / 'mlflow.db'}")
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        return [run for run in runs if "method" in run.data.params]

    def lock_md5(self, out: str) -> str:
        stages = yaml.safe_load((self.root / "dvc.lock").read_text())["stages"]
        return next(o["md5"] for s in stages.values() for o in s.get("outs", []) if o["path"] == out)


def _reduced_params() -> str:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"] = ["tinynet"]
    params["methods"] = {"baseline": {}, "prune": {"amount": 0.5}}
    params["data"] = {"dataset": "digits", "pretrained": []}
    params["train"] |= REDUCED_TRAIN
    return yaml.safe_dump(params, sort_keys=False)


def _environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "JOULEBENCH_MIRROR")}
    identity = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org"}
    return env | identity | {
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org",
        "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(root.parent / "dvc-site-cache"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # joulebench
    }


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> tuple[Project, str]:
    """The reduced project after its first ``dvc repro``, and that command's output."""
    root = tmp_path_factory.mktemp("reproduced") / "project"
    for name in PROJECT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / "params.yaml").write_text(_reduced_params())
    project = Project(root, _environment(root))
    for git in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "reduced grid"]):
        subprocess.run(["git", *git], cwd=root, env=project.env, check=True)
    return project, project.dvc("repro")


@pytest.fixture
def project(reproduced, tmp_path) -> Project:
    """A private copy of the reproduced project, for tests that change it."""
    original, _ = reproduced
    root = tmp_path / "project"
    shutil.copytree(original.root, root, symlinks=True)
    return Project(root, _environment(root))


def _digests(root: Path, *paths: str) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), keyed by relative path."""
    files = [f for p in paths for f in ([root / p] if (root / p).is_file() else (root / p).rglob("*"))]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def test_repro_runs_every_stage_and_records_metrics_and_data_version(reproduced):
    project, output = reproduced
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output
    baseline, prune = project.metrics("baseline"), project.metrics("prune")
    for metrics in (baseline, prune):
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics["train_samples"] == 2 * 64  # two batches of 64: the reduced params arrived
    assert prune["parameters"] == baseline["parameters"]
    assert prune["nonzero_parameters"] < 0.55 * baseline["nonzero_parameters"]  # amount 0.5 of weights

    shown = json.loads(project.dvc("metrics", "show", "--json"))
    files = shown[""]["data"]
    for method, path in METRICS.items():
        assert files[str(path)]["data"]["accuracy"] == project.metrics(method)["accuracy"]

    runs = project.train_runs()
    assert sorted(run.data.params["method"] for run in runs) == ["baseline", "prune"]
    digits_md5 = project.lock_md5("data/datasets/digits")
    assert {run.data.tags["data_version"] for run in runs} == {f"dvc-md5:{digits_md5}"}
    assert next(r for r in runs if r.data.params["method"] == "prune").data.params["method.amount"] == "0.5"


def test_plots_show_renders_the_reports_table_and_figures(reproduced, tmp_path):
    project, _ = reproduced
    project.dvc("plots", "show", "--out", str(tmp_path))
    page = (tmp_path / "index.html").read_text()
    for method in METRICS:  # the scatter's points are summary.csv's rows, one per method
        assert f'"accuracy_mean": "{project.metrics(method)["accuracy"]}"' in page
    for figure in ("energy_by_model", "accuracy_vs_energy", "energy_vs_flops"):
        rendered = tmp_path / "static" / f"workspace_reports_{figure}.png"
        assert rendered.read_bytes() == (project.root / "reports" / f"{figure}.png").read_bytes()


def test_a_second_repro_does_nothing(project):
    output = project.dvc("repro")
    assert "Data and pipelines are up to date." in output
    assert "Running stage" not in output


def test_a_method_parameter_change_reruns_only_that_methods_train_stage_and_the_report(project):
    before = project.metrics("prune")

    output = project.dvc("exp", "run", "-S", "methods.prune.amount=0.25")

    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in output}
    assert ran == {"train@tinynet-prune-0", "report"}
    after = project.metrics("prune")
    assert after["nonzero_parameters"] > before["nonzero_parameters"]  # a quarter pruned, not half
    latest = project.train_runs()[-1]
    assert (latest.data.params["method"], latest.data.params["method.amount"]) == ("prune", "0.25")
    with (project.root / "reports" / "summary.csv").open() as handle:
        # The amount=0.5 run is still in the experiment, but no longer in results/: not a row.
        assert sorted(row["method"] for row in csv.DictReader(handle)) == ["baseline", "prune (amount=0.25)"]


def test_params_naming_a_registered_model_train_from_it_and_a_new_version_reruns_the_train_stages(project):
    """``train.weights: models:/NAME/VERSION`` in params.yaml: the train stages fine-tune from the
    registry's weights (the runs record the version's run as their lineage), and since the version
    is a param of every train stage, naming another one makes them stale."""
    pretrain = subprocess.run(
        ["joulebench", "train", "--model", "tinynet", "--weights", "none", "--dataset", "digits:0-4", "--epochs", "1",
         "--limit-train-batches", "2", "--idle-seconds", "0", "--inference-batches", "1", "--experiment", "pretrain",
         "--register-model", "digits-0-4", "--quiet"], cwd=project.root, env=project.env, capture_output=True, text=True)
    assert "models:/digits-0-4/1" in pretrain.stdout, pretrain.stderr[-2000:]
    project.dvc("exp", "run", "-S", "train.weights=models:/digits-0-4/1")

    client = MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")
    source = client.get_model_version("digits-0-4", "1").run_id
    for run in project.train_runs()[-2:]:
        assert run.data.params["weights_source"].startswith(f"models:/digits-0-4/1 (run {source}, sha256 ")
        (model,) = client.get_run(run.info.run_id).inputs.model_inputs  # a search's runs do not carry them
        assert client.get_logged_model(model.model_id).source_run_id == source
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    params["train"]["weights"] = "models:/digits-0-4/2"
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = project.dvc("status")  # each stage: its params (`train`) and its command changed
    stale = [block.split(":")[0] for block in status.split("train@")[1:] if "changed command" in block]
    assert stale == ["tinynet-baseline-0", "tinynet-prune-0"], status


def test_push_then_pull_restores_every_output_byte_for_byte(project, tmp_path):
    outputs = ("data/datasets/digits", *map(str, METRICS.values()), "reports")
    before = _digests(project.root, *outputs)
    assert len(before) > 1797  # the digits, both metrics files and the report
    project.dvc("remote", "add", "--default", "storage", str(tmp_path / "remote"))
    project.dvc("push")

    shutil.rmtree(project.root / ".dvc" / "cache")
    for path in outputs:
        target = project.root / path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    project.dvc("pull")

    assert _digests(project.root, *outputs) == before
