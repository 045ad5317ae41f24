"""Model registry: the nine paper models, new heads, and safe, checked weight loading."""

import os

import pytest
import torch
from torch import nn

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
from support import parameter_count

# DESIGN.md's figures, in millions: the registry must agree within 1 %.
DESIGN_MILLIONS = {
    "densenet121": 7.98, "resnet18": 11.69, "densenet201": 20.01, "resnet50": 25.56,
    "inception_v3": 27.16, "resnet101": 44.55, "alexnet": 61.10, "vit_b_16": 86.57, "vgg16": 138.36,
}


@pytest.mark.parametrize("name", list(PAPER_MODELS))
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
