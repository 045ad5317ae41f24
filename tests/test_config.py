"""RunConfig validation: every bad value is one ConfigError naming what is accepted."""

import pytest

from joulebench.config import make_config, resolve_device
from joulebench.errors import ConfigError


def config(**overrides):
    values = {"model": "tinynet", "method": "baseline", "weights": "none"} | overrides
    return make_config(**values)


def test_defaults_resolved():
    cfg = config(model="resnet18", weights="imagenet", lr=None)
    assert (cfg.image_size, cfg.optimizer, cfg.lr, cfg.device) == (32, "adam", 0.001, "cpu")
    assert config(optimizer="sgd").lr == 0.01
    assert config(model="inception_v3").image_size == 299
    assert config(model="vit_b_16").image_size == 224
    assert config(epochs="4", batch_size="16", lr="0.5").epochs == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "resnet1000"}, "unknown model 'resnet1000'; accepted: densenet121"),
        ({"method": "quantize"}, "unknown method 'quantize'; accepted: baseline"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'; accepted: digits"),
        ({"epochs": "0"}, "--epochs must be > 0, got '0'"),
        ({"epochs": "three"}, "--epochs must be a whole number > 0, got 'three'"),
        ({"epochs": 2.5}, "--epochs must be a whole number > 0"),
        ({"batch_size": "-8"}, "--batch-size must be > 0"),
        ({"lr": "0"}, "--lr must be > 0"),
        ({"lr": "inf"}, "--lr must be a finite number, got 'inf'"),
        ({"lr": "nan"}, "--lr must be > 0, got 'nan'"),
        ({"lr": "fast"}, "--lr must be a number > 0"),
        ({"model": "inception_v3", "image_size": "75"}, "below inception_v3's minimum of 299"),
        ({"model": "vit_b_16", "image_size": "96"}, "takes only 224"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; accepted: sgd, adam"),
        ({"country": "France"}, "alpha-3"),
        ({"params": ("bits=16",)}, "method 'baseline' has no parameter 'bits'; accepted: none"),
        ({"params": ("nonsense",)}, "is not key=value"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        config(**overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_devices():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_cuda_refused_where_no_gpu_is_visible():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="not available here"):
        resolve_device("cuda:0")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"idle_seconds": -1}, "--idle-seconds must be ≥ 0"),
        ({"inference_batches": 0}, "--inference-batches must be > 0"),
        ({"sample_hz": 0}, "power sample rate 0.0 Hz is out of range"),
        ({"sample_hz": 1000}, "at most 100 Hz"),
    ],
)
def test_measurement_options_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(**overrides)
    assert config(sample_hz=20).sample_hz == 20.0


def test_method_params_from_params_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("methods:\n  prune: {amount: 0.25, structured: true}\n  stego: {bits: 8}\n")
    cfg = config(method="prune", params_file=str(params))
    assert cfg.method_params == {"amount": 0.25, "structured": True}
    assert config(method="stego", params_file=str(params), params=("bits=12",)).method_params["bits"] == 12
    assert config(method="baseline", params_file=str(params)).method_params == {}


def test_bad_params_file_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("methods:\n  stego: 16\n")
    with pytest.raises(ConfigError, match="methods.stego in .* must map parameter names to values"):
        config(method="stego", params_file=str(params))
    params.write_text("methods: {stego: {bits: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot be read as YAML"):
        config(method="stego", params_file=str(params))
    params.write_text("methods:\n  stego: {bits: 99}\n")
    with pytest.raises(ConfigError, match="bad value '99' for stego.bits"):
        config(method="stego", params_file=str(params))


def test_param_values_may_carry_several_pairs_as_mlproject_passes_them():
    assert config(method="stego", params=("bits=12,fill=random",)).method_params["fill"] == "random"
    assert config(method="stego", params=("",)).method_params["bits"] == 16
