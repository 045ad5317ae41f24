"""The one training path: compute settings, warm-up window, short_run and compute_emulated flags,
and what a run of each method records and saves (read back from MLflow)."""

import json
import re
from pathlib import Path

import mlflow
import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient
from torch import nn

from joulebench import compute, results, train
from joulebench.compress import CompressionReport, ModelStats, build_method, parse_method_params
from joulebench.config import make_config
from joulebench.energy import Measurement
from joulebench.errors import ConfigError
from joulebench.models import build_model
from joulebench.pipeline import train_and_record

from support import only_run, run_cli

CPU = torch.device("cpu")


def method(name: str, *pairs: str):
    return build_method(name, parse_method_params(name, pairs))


def window(phase: str, seconds: float, joules: float | None, epoch: int = 1) -> Measurement:
    return Measurement(phase, 0.0, seconds, {} if joules is None else {"cpu": joules},
                       {} if joules is None else {"cpu": "rapl"}, epoch=epoch)


def result_with(train_seconds: float, train_joules: float | None, warmup: Measurement) -> results.RunResult:
    epoch = results.EpochResult(1, 0.5, 0.9, None, 100, window("train", train_seconds, train_joules),
                              window("eval", 1.0, train_joules and 1.0))
    stats = ModelStats(parameters=10, nonzero_parameters=10, weight_bytes=40, flops_per_sample=100)
    return results.RunResult(make_config(), CompressionReport("baseline", {}, stats, stats), epochs=[epoch],
                           warmup=warmup)


@pytest.mark.parametrize(
    ("seconds", "joules", "warmup", "expected"),
    [
        (120.0, 1200.0, window("warmup", 2.0, 60.0), None),  # 5 % of the energy, 2 minutes
        (120.0, 1200.0, window("warmup", 2.0, 240.0),
         "warm-up 20 % of training energy > 10 %"),
        (30.0, 300.0, window("warmup", 1.0, 10.0), "training 30.0 s < 60 s (MLPerf Power's minimum)"),
        (30.0, None, window("warmup", 6.0, None),  # no meter read: the time share decides
         "training 30.0 s < 60 s (MLPerf Power's minimum); warm-up 20 % of training time > 10 %"),
    ],
)
def test_short_run_names_each_reason(seconds, joules, warmup, expected):
    assert result_with(seconds, joules, warmup).short_run() == expected


def test_warmup_metrics_give_its_seconds_joules_and_share():
    result = result_with(120.0, 1200.0, window("warmup", 2.0, 60.0))
    result.phases = {"total": window("total", 130.0, 1300.0)}
    metrics = result.metrics()
    assert (metrics["warmup_seconds"], metrics["energy_warmup_j"], metrics["warmup_share"]) == (2.0, 60.0, 0.05)


def fake_cpu_probe(monkeypatch, native: bool) -> None:
    """FAKE capability probe: this machine's CPU is what it is; the answer PyTorch gives is faked."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_bfloat16_on_a_cpu_without_native_bfloat16_is_emulated_probe_faked(monkeypatch):
    fake_cpu_probe(monkeypatch, native=False)
    reason = compute.emulated_precision(torch.bfloat16, CPU)
    assert reason.startswith("cpu: no native bfloat16 (AVX512-BF16/AMX)")
    assert compute.emulated_precision(None, CPU) is None  # float32 is native everywhere
    fake_cpu_probe(monkeypatch, native=True)
    assert compute.emulated_precision(torch.bfloat16, CPU) is None


@pytest.mark.parametrize(("avx512_bf16", "amx", "recorded"),
                         [(False, False, "none"), (True, False, "AVX512-BF16"), (True, True, "AVX512-BF16, AMX")])
def test_a_run_records_its_cpus_bfloat16_units_probe_faked(monkeypatch, avx512_bf16, amx, recorded):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    config = make_config(model="tinynet", method="baseline", device="cpu")
    settings = compute.compute_settings(config, build_model("tinynet", 10), method("baseline"))
    assert settings.params()["compute.bfloat16_units"] == recorded


@pytest.mark.parametrize(
    ("capability", "dtype", "emulated"),
    [((7, 5), torch.bfloat16, True), ((7, 5), torch.float16, False), ((6, 1), torch.float16, True),
     ((8, 0), torch.bfloat16, False), ((9, 0), torch.bfloat16, False)],
)
def test_gpu_tensor_cores_decide_emulation_probe_faked(monkeypatch, capability, dtype, emulated):
    # FAKE GPU: no GPU exists here; only the capability PyTorch would report is faked.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    reason = compute.emulated_precision(dtype, torch.device("cuda:0"))
    assert (reason is not None) == emulated
    if emulated:
        assert f"compute capability {capability[0]}.{capability[1]}" in reason


def test_settings_choose_channels_last_for_conv_nets_and_record_the_path(monkeypatch):
    fake_cpu_probe(monkeypatch, native=True)
    config = make_config(model="tinynet", method="stego", device="cpu")
    settings = compute.compute_settings(config, build_model("tinynet", 10), method("stego"))
    assert settings.params() == {
        "compute.memory_format": "channels_last", "compute.cudnn": "n/a (cpu)",
        "compute.float32_precision": "ieee", "compute.optimizer": "fused",
        "compute.weights_dtype": "bfloat16", "compute.autocast": "none", "compute.dtype": "bfloat16",
        "compute.bfloat16_units": "AVX512-BF16",
    }
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    assert not compute.compute_settings(config, mlp, method("baseline")).channels_last


def test_inputs_take_the_device_dtype_and_layout_of_the_weights():
    config = make_config(model="tinynet", method="stego", device="cpu")
    settings = compute.compute_settings(config, build_model("tinynet", 10), method("stego"))
    images = settings.inputs(torch.randn(2, 3, 8, 8))
    assert images.dtype == torch.bfloat16 and images.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_switches_cudnn_autotuning_off(deterministic):
    config = make_config(model="tinynet", method="baseline", device="cpu", deterministic=deterministic)
    settings = compute.compute_settings(config, build_model("tinynet", 10), method("baseline"))
    try:
        settings.apply_backends()
        assert torch.backends.cudnn.benchmark is not deterministic
        assert torch.backends.cudnn.deterministic is deterministic
        assert torch.are_deterministic_algorithms_enabled() is deterministic
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(("pairs", "optimizer_class"), [
    ((), "OptimizerWithPasses"), (("bits=8",), "BitOverwritingOptimizer"),
    ((), "TruncatingBfloat16Optimizer"),
])
def test_each_method_trains_through_its_own_optimiser(pairs, optimizer_class):
    name = "baseline" if optimizer_class == "OptimizerWithPasses" else "stego"
    config = make_config(model="tinynet", method=name, device="cpu")
    model, chosen = build_model("tinynet", 10), method(name, *pairs)
    settings = compute.compute_settings(config, model, chosen)
    chosen.apply(model, torch.randn(2, 3, 32, 32))
    _, optimizer, _ = train.prepare(config, model, chosen, settings)
    assert type(optimizer).__name__ == optimizer_class
    assert all(group.get("fused") for group in optimizer.param_groups)


def artifact_json(client: MlflowClient, run, name: str, workdir: Path):
    return json.loads(Path(client.download_artifacts(run.info.run_id, name, str(workdir))).read_text())


@pytest.mark.slow
def test_a_three_batch_stego_run_is_flagged_short_and_saves_its_bfloat16_weights(workdir):
    result = run_cli(
        ["train", "--model", "tinynet", "--method", "stego", "--epochs", "1", "--limit-train-batches", "3",
         "--idle-seconds", "0", "--inference-batches", "1", "--save-model", "--quiet"],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    client, run = only_run(workdir / "mlflow.db")
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    # energy share where the meter read the warm-up window, time share where it was too short
    assert re.fullmatch(r"training \S+ s < 60 s \(MLPerf Power's minimum\); "
                        r"warm-up \d+ % of training (energy|time) > 10 %", tags["short_run"])
    assert f"flag      short_run: {tags['short_run']}" in result.stdout
    assert (params["compute.weights_dtype"], params["compute.memory_format"]) == ("bfloat16", "channels_last")
    assert params["compute.bfloat16_units"] == (", ".join(compute.cpu_bfloat16_units()) or "none")
    assert (params["deterministic"], params["tf32"]) == ("False", "True")
    assert metrics["warmup_share"] > 0.9  # all three batches are the warm-up (the epoch adds its edges)
    windows = artifact_json(client, run, "energy/windows.json", workdir)
    by_name = {w["name"]: w for w in windows}
    warmup, epoch = by_name["warmup/epoch-1"], by_name["train/epoch-1"]
    assert epoch["start"] <= warmup["start"] and warmup["seconds"] <= epoch["seconds"]

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    stored = [p for p in model.parameters() if p.dtype == torch.bfloat16]
    assert stored and all(p.dtype == torch.float32 for m in model.modules()
                          if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    report = artifact_json(client, run, "compression_report.json", workdir)
    expected_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert report["after"]["weight_bytes"] == metrics["weight_bytes"] == expected_bytes
    assert report["after"]["weight_bytes"] < report["before"]["weight_bytes"]


@pytest.mark.slow
def test_a_saved_pruned_model_loads_strictly_into_a_fresh_torchvision_model(workdir):
    result = run_cli(
        ["train", "--model", "resnet18", "--weights", "none", "--method", "prune", "--epochs", "1",
         "--limit-train-batches", "2", "--idle-seconds", "0", "--inference-batches", "1",
         "--save-model", "--quiet"],
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    _, run = only_run(workdir / "mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    saved = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    fresh = torchvision.models.resnet18(num_classes=10)
    fresh.load_state_dict(saved.state_dict(), strict=True)
    weights = [m.weight for m in fresh.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * total)


def test_an_emulated_precision_is_tagged_and_flagged_probe_faked(workdir, monkeypatch):
    # FAKE probe: this CPU's answer is replaced by "no native bfloat16"; the run itself is real.
    fake_cpu_probe(monkeypatch, native=False)
    config = make_config(model="tinynet", method="stego", device="cpu", epochs=1, limit_train_batches=2,
                         idle_seconds=0, inference_batches=1)
    summary = train_and_record(config, progress=False)
    _, run = only_run(workdir / "mlflow.db")
    assert run.data.tags["compute_emulated"] == summary.flags["compute_emulated"]
    assert summary.flags["compute_emulated"].startswith("cpu: no native bfloat16")
    assert "short_run" in run.data.tags  # and two batches are a short run, too


@pytest.mark.slow
def test_a_loss_that_turns_non_finite_fails_the_run_in_one_line_naming_epoch_step_and_lr(workdir):
    # lr 1e30 is finite (it passes validation) and makes Adam's first update overflow.
    result = run_cli(
        ["train", "--model", "tinynet", "--epochs", "2", "--lr", "1e30", "--limit-train-batches", "4",
         "--idle-seconds", "0", "--inference-batches", "1", "--quiet"],
        cwd=workdir,
    )
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()
    assert message[-1].startswith("joulebench: error: training diverged: the loss was not finite at epoch 1, step ")
    assert "(lr 1e+30); lower --lr" in message[-1] and "Traceback" not in result.stderr
    _, run = only_run(workdir / "mlflow.db")
    assert run.info.status == "FAILED"


def test_the_tally_names_the_first_non_finite_step():
    tally = train.LossTally(CPU)
    for loss in (1.0, 2.0, float("nan"), float("inf")):
        tally.add(torch.tensor(loss), 4)
    with pytest.raises(ConfigError, match="at epoch 3, step 3 \\(lr 0.5\\)"):
        tally.check_finite(3, 0.5)
    finite = train.LossTally(CPU)
    finite.add(torch.tensor(1.5), 2)
    finite.check_finite(1, 0.5)
    assert finite.total.item() == 3.0
