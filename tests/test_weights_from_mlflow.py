"""--weights from MLflow: runs:/RUN_ID/weights (the state dict `train --save-model` logs) and
models:/NAME/VERSION or @ALIAS (a registered one), downloaded from the run's store before the run
opens; a pickled module, a missing run and another architecture are one line (exit 2), a store
that does not answer exit 75. Pretrained on digits:0-4, fine-tuned on digits:5-9."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from support import run_cli

QUICK = ["--epochs", "1", "--limit-train-batches", "2", "--idle-seconds", "0", "--inference-batches", "1",
         "--image-size", "32", "--quiet"]


def train(*args: str) -> list[str]:
    return ["train", "--model", "resnet18", *QUICK, *args]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, str]:
    """A store holding resnet18 trained on digits 0-4 with --save-model, and that run's id."""
    folder = tmp_path_factory.mktemp("pretrained")
    result = run_cli(train("--weights", "none", "--dataset", "digits:0-4", "--save-model"), cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_runs(["1"])
    return folder, run.info.run_id


def fine_tuned(folder: Path, weights: str):
    result = run_cli(train("--weights", weights, "--dataset", "digits:5-9"), cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return max(client.search_runs(["1"], f"params.weights = '{weights}'"), key=lambda run: run.info.start_time)


def started_from(folder: Path, run) -> set[str]:
    """The runs whose logged models ``run`` names as its inputs: MLflow's lineage, as the UI shows it."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    inputs = client.get_run(run.info.run_id).inputs.model_inputs  # a search's runs do not carry them
    return {client.get_logged_model(model.model_id).source_run_id for model in inputs}


@pytest.mark.slow
def test_a_run_fine_tunes_from_the_state_dict_another_run_logged(pretrained):
    folder, source = pretrained
    run = fine_tuned(folder, f"runs:/{source}/weights")
    assert run.info.status == "FINISHED"
    assert run.data.params["weights_source"].startswith(f"runs:/{source}/weights (run {source}, sha256 ")
    assert run.data.params["dataset"] == "digits:5-9"
    assert started_from(folder, run) == {source}


@pytest.mark.slow
def test_a_registered_alias_loads_through_the_registry(pretrained):
    folder, source = pretrained
    registry = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    registry.create_registered_model("digits-0-4")
    version = registry.create_model_version("digits-0-4", f"runs:/{source}/weights", run_id=source)
    registry.set_registered_model_alias("digits-0-4", "pretrained", version.version)
    run = fine_tuned(folder, "models:/digits-0-4@pretrained")  # a version by number: README's recipe below
    assert run.info.status == "FINISHED"
    assert f"(run {source}, sha256 " in run.data.params["weights_source"]


@pytest.mark.slow
@pytest.mark.parametrize("weights, model, said", [
    ("runs:/{source}/model", "resnet18", "is a model in MLflow's PyTorch flavour, a pickled module"),
    ("runs:/0123456789abcdef0123456789abcdef/weights", "resnet18", "--weights runs:/0123456789abcdef"),
    ("runs:/{source}/weights", "mobilenet_v3_small", "is not for mobilenet_v3_small"),
    ("models:/no-such-model/1", "resnet18", "--weights models:/no-such-model/1:"),
    ("runs:/{source}", "resnet18", "is not a weights URI of MLflow"),
], ids=["pickled-module", "no-such-run", "another-architecture", "no-such-model", "no-path"])
def test_weights_the_store_cannot_give_are_one_line_exit_2_and_no_run(pretrained, weights, model, said):
    folder, source = pretrained
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    before = len(client.search_runs(["1"]))
    args = ["train", "--model", model, *QUICK, "--weights", weights.format(source=source), "--dataset", "digits:5-9"]
    result = run_cli(args, cwd=folder)
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (2, 1), result.stderr[-2000:]
    assert said in lines[0]
    assert len(client.search_runs(["1"])) == before


def test_weights_in_a_store_that_does_not_answer_exit_75(tmp_path):
    result = run_cli(train("--weights", "runs:/0123456789abcdef0123456789abcdef/weights"), cwd=tmp_path,
                     env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (75, 1), result.stderr[-2000:]


@pytest.mark.parametrize("name", ["", "a/b", "x@y", "n" * 257, "tab\there"])
def test_a_name_the_registry_cannot_carry_back_is_refused_before_the_run(name):
    """In process (the CLI turns a ConfigError into one line and exit 2, tested elsewhere)."""
    from joulebench.config import make_config
    from joulebench.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot name a registered model") as raised:
        make_config(model="tinynet", register_model=name)
    assert "\n" not in str(raised.value)


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_recipe() -> list[str]:
    """The command lines of README's pretrained → compressed → fine-tuned block."""
    block = README.read_text().split("### Pretrained → compressed → fine-tuned, offline")[1]
    return [line for line in block.split("```bash\n")[1].split("```")[0].splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_recipe_pretrains_registers_fine_tunes_every_method_and_measures_capacity_verbatim(workdir):
    lines = readme_recipe()
    assert [line.split()[1] for line in lines] == ["train", "sweep", "capacity"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    outputs = []
    for line in lines:
        result = subprocess.run(["bash", "-euc", line], cwd=workdir, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
        outputs.append(result.stdout)
    assert "model     models:/digits-0-4/1 " in outputs[0]
    assert "4 combinations: 4 finished now" in outputs[1]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    pretraining = client.get_model_version("digits-0-4", "1").run_id
    fine_tuned_runs = client.search_runs(["1"], "params.dataset = 'digits:5-9'")
    assert len(fine_tuned_runs) == 5  # four methods, and capacity's run
    for run in fine_tuned_runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["weights_source"].startswith(f"models:/digits-0-4/1 (run {pretraining}, sha256 ")
        assert started_from(workdir, run) == {pretraining}
