"""Model registry: the nine paper models, new heads, and safe, checked weight loading."""

import argparse
import io
import json
import os
import struct

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from joulebench.cli import main
from joulebench.errors import ConfigError
from joulebench.models import (
    PAPER_MODELS,
    _architecture,
    build_model,
    image_sizes,
    published_hash_prefix,
    sha256_of,
    verify_hash,
)
from support import parameter_count, runs_in

# DESIGN.md's figures, in millions: the registry must agree within 1 %.
DESIGN_MILLIONS = {
    "densenet121": 7.98, "resnet18": 11.69, "densenet201": 20.01, "resnet50": 25.56,
    "inception_v3": 27.16, "resnet101": 44.55, "alexnet": 61.10, "vit_b_16": 86.57, "vgg16": 138.36,
}


# The largest take seconds each to build on 2 cores: in the full suite only.
LARGEST = {"vgg16", "densenet201", "vit_b_16", "resnet101"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in LARGEST else name
                                  for name in PAPER_MODELS])
def test_paper_model_parameter_count_and_new_head(name):
    imagenet = _architecture(name)
    assert parameter_count(imagenet) == pytest.approx(DESIGN_MILLIONS[name] * 1e6, rel=0.01)
    model = build_model(name, num_classes=10)
    linear_or_conv = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert linear_or_conv[-1].weight.shape[0] == 10
    sizes = image_sizes(name)
    side = sizes.fixed or sizes.minimum
    with torch.no_grad():
        logits = model.eval()(torch.zeros(1, 3, side, side))
    assert logits.shape == (1, 10)


def test_inception_aux_head_replaced_too():
    model = build_model("inception_v3", num_classes=7)
    assert model.fc.out_features == 7 and model.AuxLogits.fc.out_features == 7


def test_squeezenet_conv_head_replaced():
    model = build_model("squeezenet1_1", num_classes=4)
    assert model.classifier[1].out_channels == 4


def test_image_size_limits():
    assert image_sizes("inception_v3").minimum == 299  # training minimum (aux head)
    assert image_sizes("vit_b_16").fixed == 224
    assert image_sizes("alexnet").minimum == 63
    with pytest.raises(ConfigError, match="below inception_v3's minimum of 299"):
        image_sizes("inception_v3").check("inception_v3", 298)
    with pytest.raises(ConfigError, match="takes only 224"):
        image_sizes("vit_b_16").check("vit_b_16", 32)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown model 'resnet19'.*densenet121.*vgg16"):
        build_model("resnet19", 10)


@pytest.fixture
def mobilenet_file(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.manual_seed(1)
    state = _architecture("mobilenet_v3_small").state_dict()
    torch.save(state, path)
    return path, state


def test_weights_from_path_are_loaded(mobilenet_file):
    path, state = mobilenet_file
    model = build_model("mobilenet_v3_small", 10, weights=str(path))
    loaded = model.state_dict()
    assert torch.equal(loaded["features.0.0.weight"], state["features.0.0.weight"])
    assert loaded["classifier.3.weight"].shape == (10, 1024)


def test_missing_weights_names_the_fixes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        build_model("resnet18", 10, weights="imagenet")
    message = str(error.value)
    assert "data/weights/resnet18-imagenet.pth not found" in message
    assert "dvc pull" in message and "joulebench fetch weights" in message and "--weights none" in message


def test_truncated_weights_refused(mobilenet_file):
    path, _ = mobilenet_file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        build_model("mobilenet_v3_small", 10, weights=str(path))


def test_wrong_architecture_refused(mobilenet_file):
    path, _ = mobilenet_file
    with pytest.raises(ConfigError, match="is not for resnet18"):
        build_model("resnet18", 10, weights=str(path))


class _RunsCode:
    """Unpickling this calls os.system: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": _RunsCode(marker)}, path)
    # Proof the file is really malicious: an unsafe load runs the command.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ConfigError, match="refused to load"):
        build_model("mobilenet_v3_small", 10, weights=str(path))
    assert not marker.exists()


def test_hash_check_against_published_prefix(tmp_path):
    assert published_hash_prefix("resnet18") == "f37072fd"
    assert published_hash_prefix("inception_v3") == "0cc3c7bd"
    path = tmp_path / "w.pth"
    path.write_bytes(b"some weights")
    digest = sha256_of(path)
    verify_hash(path, digest[:8], "resnet18")  # matching prefix: accepted
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "1" * 8
    with pytest.raises(ConfigError, match="torchvision publishes"):
        verify_hash(path, wrong, "resnet18")


def test_imagenet_file_with_wrong_hash_refused(tmp_path, monkeypatch, mobilenet_file):
    path, _ = mobilenet_file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/weights").mkdir(parents=True)
    (tmp_path / "data/weights/mobilenet_v3_small-imagenet.pth").write_bytes(path.read_bytes())
    with pytest.raises(ConfigError, match="sha256"):
        build_model("mobilenet_v3_small", 10, weights="imagenet")


def _refusal(model: str, path) -> str:
    """The ConfigError message build_model gives for weights file ``path``: one line."""
    with pytest.raises(ConfigError) as error:
        build_model(model, 10, weights=str(path))
    message = str(error.value)
    assert "\n" not in message and "\x1b" not in message, message
    return message


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool, torch.complex64])
def test_weights_cast_to_another_kind_refused(mobilenet_file, dtype):
    # load_state_dict would cast them back to float32 silently and train from garbage.
    path, state = mobilenet_file
    torch.save({k: v.to(dtype) for k, v in state.items()}, path)
    message = _refusal("mobilenet_v3_small", path)
    assert f"features.0.0.weight as {dtype}" in message and "needs floating-point values" in message
    assert "torch.save(model.state_dict(), PATH)" in message


def test_half_weights_accepted_and_integer_buffers_stay_integer(mobilenet_file):
    path, state = mobilenet_file
    half = {k: v.half() if v.is_floating_point() else v.int() for k, v in state.items()}
    assert half["features.0.1.num_batches_tracked"].dtype == torch.int32
    torch.save(half, path)
    loaded = build_model("mobilenet_v3_small", 10, weights=str(path)).state_dict()
    assert torch.equal(loaded["features.0.0.weight"], half["features.0.0.weight"].float())


def test_weights_refused_when_a_float_goes_where_an_integer_belongs(mobilenet_file):
    path, state = mobilenet_file
    torch.save({k: v.float() for k, v in state.items()}, path)
    message = _refusal("mobilenet_v3_small", path)
    assert "features.0.1.num_batches_tracked as torch.float32" in message and "needs integer" in message


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_torchscript_archive_named_and_its_conversion_works(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(_architecture("squeezenet1_1")), path)
    message = _refusal("squeezenet1_1", path)
    assert "is a TorchScript archive (torch.jit.save)" in message and "truncated" not in message
    assert f"torch.save(torch.jit.load({str(path)!r}).state_dict(), 'weights.pth')" in message
    # The advice, followed, gives a file that loads.
    torch.save(torch.jit.load(path).state_dict(), tmp_path / "weights.pth")
    build_model("squeezenet1_1", 10, weights=str(tmp_path / "weights.pth"))


def _safetensors_bytes() -> bytes:
    """A one-tensor safetensors file, as the format specifies (u64 header length, JSON, data)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(4)


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, weight=np.zeros(3))
    return buffer.getvalue()


FOREIGN_FILES = [
    (_safetensors_bytes, "is a safetensors file, not a torch.save state dict; convert it in Python: "
     "torch.save(safetensors.torch.load_file("),
    (lambda: b"\x08\x08\x12\x07pytorch\x1a\x052.4.0", "is an ONNX model"),
    (lambda: b"hello, not weights\n", "is not a file torch.save wrote (it starts with b'hello, n')"),
    (_npz_bytes, "is a zip archive without data.pkl (weight.npy, …)"),
]


@pytest.mark.parametrize(("content", "named"), FOREIGN_FILES, ids=["safetensors", "onnx", "text", "npz"])
def test_file_in_another_format_is_named(tmp_path, content, named):
    path = tmp_path / "weights.bin"
    path.write_bytes(content())
    message = _refusal("squeezenet1_1", path)
    assert named in message and "truncated" not in message


def test_whole_pickled_model_named_without_torchs_unsafe_advice(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(_architecture("squeezenet1_1"), path)
    message = _refusal("squeezenet1_1", path)
    assert "it pickles torchvision.models.squeezenet.SqueezeNet" in message
    assert "torch.save(model.state_dict(), PATH)" in message and "weights_only" not in message


@pytest.mark.parametrize("layout", ["torchvision_reference", "state_dict"])
def test_training_checkpoint_unwrapped(mobilenet_file, layout):
    path, state = mobilenet_file
    checkpoint = (
        # What torchvision's references/classification/train.py saves each epoch.
        {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3,
         "args": argparse.Namespace(lr=0.1, data_path="/data/imagenet")}
        if layout == "torchvision_reference" else {"state_dict": state, "epoch": 3}
    )
    torch.save(checkpoint, path)
    loaded = build_model("mobilenet_v3_small", 10, weights=str(path)).state_dict()
    assert torch.equal(loaded["features.0.0.weight"], state["features.0.0.weight"])


def test_dict_without_a_state_dict_names_its_keys(tmp_path):
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "accuracy": 0.9}, path)
    message = _refusal("squeezenet1_1", path)
    assert "holds no state dict of tensors (found keys epoch, accuracy; looked under model" in message


def test_cli_refuses_int8_weights_one_line_exit_2_no_run(workdir, capsys):
    int8 = {k: v.to(torch.int8) for k, v in _architecture("mobilenet_v3_small").state_dict().items()}
    torch.save(int8, workdir / "int8.pth")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mobilenet_v3_small", "--weights", "int8.pth",
              "--idle-seconds", "0", "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "features.0.0.weight as torch.int8" in lines[0], err
    assert not runs_in(workdir / "mlflow.db")


def test_weights_fine_tuned_on_another_task_load_their_body_and_get_a_new_head(tmp_path):
    """A state dict from a run on digits:0-4 (a 5-class head) starts a 3-class task: every layer
    but the head is the saved one; the head is new, as an ImageNet head would be."""
    from joulebench.models import build_model, replace_head

    source = torchvision.models.resnet18(weights=None)
    replace_head(source, 5)
    torch.save(source.state_dict(), tmp_path / "five.pth")
    model = build_model("resnet18", 3, str(tmp_path / "five.pth"))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, source.layer4[1].bn2.running_mean)
    assert model.fc.weight.shape == (3, 512)


def test_tinynet_loads_trained_weights_of_another_class_count_but_has_no_imagenet_ones(tmp_path):
    """The offline transfer task pretrains tinynet on 5 digits and fine-tunes it on 3 others."""
    torch.manual_seed(0)
    pretrained = build_model("tinynet", 5)
    torch.save(pretrained.state_dict(), tmp_path / "tinynet-0-4.pth")
    model = build_model("tinynet", 3, str(tmp_path / "tinynet-0-4.pth"))
    assert torch.equal(model.features[0].weight, pretrained.features[0].weight)
    assert model.classifier[-1].out_features == 3
    with pytest.raises(ConfigError, match="tinynet has no ImageNet weights"):
        build_model("tinynet", 3, "imagenet")
