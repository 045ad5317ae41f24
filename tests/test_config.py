"""RunConfig validation: every bad value is one ConfigError naming what is accepted."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from joulebench.config import (
    CAPACITY, FILING, IDENTITY, SWEEP, TRAIN, declaration, make_config, option_fields, resolve_device,
)
from joulebench.errors import ConfigError
from joulebench.sweep.grid import OPTIONAL_FIELDS


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


def test_a_sample_rate_in_range_is_taken():
    """(Out-of-range values, as every bad value, are cases in tests/support/bad_input.py.)"""
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


# --------------------------------------------------------------------------- the schema

ROOT = Path(__file__).resolve().parents[1]


def test_config_hash_is_unchanged_by_the_schema():
    """Hashes logged before the one-schema refactoring still identify the same results (a sweep
    resumed across it skips what finished); the values were computed by the code before it."""
    quick = config(method="prune", params=("amount=0.3",), lr="0.01", epochs="2", country="fra",
                   limit_train_batches="3", weights="imagenet")
    assert quick.config_hash() == "fdb2c0815775f800"
    assert make_config(model="resnet18", method="stego").config_hash() == "85a874e218d034c1"


def test_filing_fields_change_neither_hash_nor_params():
    plain = config()
    filed = config(experiment="elsewhere", run_name="r", parent_run_id="p", save_model=True, quiet=True,
                   metrics_json="m.json", run_json="run.json", register_model="pretrained")
    assert filed.config_hash() == plain.config_hash()
    assert filed.params() == plain.params()
    assert {f.name for f in option_fields(FILING)} == {
        "experiment", "run_name", "quiet", "save_model", "register_model", "metrics_json", "run_json",
        "parent_run_id"}


def test_params_are_the_identity_fields_with_method_params_flattened():
    params = config(method="prune", params=("amount=0.7",)).params()
    identity = {f.name for f in option_fields(IDENTITY)} - {"method_params"}
    assert set(params) == identity | {"method.amount", "method.structured"}
    assert (params["method.amount"], params["epochs"]) == (0.7, 3)


def test_a_key_no_field_declares_is_a_bug_not_bad_input():
    with pytest.raises(TypeError, match="no RunConfig field declares: colour"):
        config(colour="red")


def test_every_command_offers_exactly_the_fields_declared_for_it():
    from joulebench.cli import capacity, sweep, train

    for command, name in ((train, TRAIN), (capacity, CAPACITY), (sweep, SWEEP)):
        offered = {param.name for param in command.params}
        declared = {declaration(f.name).keyword(f.name) for f in option_fields()
                    if name in declaration(f.name).commands}
        assert declared <= offered, name
    assert {p.name for p in train.params} == {declaration(f.name).keyword(f.name) for f in option_fields()} | {
        "params_file"}


def test_the_command_line_imports_no_torch():
    """`joulebench --help` and the schema stay fast: torch comes with the validators, when called."""
    code = "import sys, joulebench.cli, joulebench.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _entry_points(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["entry_points"]


def test_kubernetes_mlproject_declares_what_a_sweep_passes():
    """deploy/kubernetes/MLproject's train entry point: one parameter per identity field with a
    value (the optional ones and the method's come as extras), the filing a child needs, each
    passed on as its train flag."""
    (entry,) = _entry_points(ROOT / "deploy" / "kubernetes" / "MLproject").values()
    expected = ({f.name for f in option_fields(IDENTITY)} - {"method_params"} - OPTIONAL_FIELDS
                | {"experiment", "run_name", "parent_run_id"})
    assert set(entry["parameters"]) == expected
    for name in expected:
        assert f"{declaration(name).flag(name)} {{{name}}}" in entry["command"], name


def test_mlproject_parameters_are_options_with_the_schemas_defaults():
    """Every parameter of the MLproject is an option of the command it runs, passed with that
    option's flag, and a run option's default resolves to the schema's own default."""
    from joulebench.cli import cli

    for name, entry in _entry_points(ROOT / "MLproject").items():
        words = entry["command"].split()
        command = cli.commands[words[0]]
        options = {param.name: param for param in command.params}
        for parameter, spec in entry["parameters"].items():
            flag = words[words.index(f"{{{parameter}}}") - 1]
            (param,) = [p for p in options.values() if flag in p.opts]
            if not isinstance(spec, dict) or "default" not in spec:
                continue
            default = spec["default"]
            field = next((f for f in option_fields() if (declaration(f.name).keyword(f.name)) == param.name), None)
            if field is not None:  # a command's own option (report --out) may differ in a container
                text = (str(default),) if param.multiple else str(default)
                assert (getattr(make_config(**{param.name: text}), field.name)
                        == getattr(make_config(), field.name)), (name, parameter)
