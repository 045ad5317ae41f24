"""Model registry: build a torchvision classifier, load its weights safely, give it a new head.

The nine models of the paper are listed with their parameter counts; any other torchvision
classification model is accepted by name, and ``tinynet`` is a small CNN for fast tests.
Weights are loaded with ``torch.load(weights_only=True)`` (a pickle cannot run code) and an
ImageNet file is checked against the sha256 prefix torchvision publishes in its file name.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from joulebench.errors import ConfigError

# The paper's nine models, smallest to largest (parameters with the 1000-class ImageNet head).
PAPER_MODELS: dict[str, int] = {
    "densenet121": 7_978_856,
    "resnet18": 11_689_512,
    "densenet201": 20_013_928,
    "resnet50": 25_557_032,
    "inception_v3": 27_161_264,
    "resnet101": 44_549_160,
    "alexnet": 61_100_840,
    "vit_b_16": 86_567_656,
    "vgg16": 138_357_544,
}
TINY_MODELS = ("tinynet",)
# torchvision's min_size is for inference; training also runs Inception's auxiliary head, whose
# 5×5 conv needs the 17×17 Mixed_6e map that only a 299 px input gives (75 px works in eval only).
TRAINING_MINIMUM = {"inception_v3": 299}


@dataclass(frozen=True)
class ImageSizes:
    """The input sizes a model accepts: ``minimum`` and, for ViTs, the only ``fixed`` one."""

    minimum: int
    fixed: int | None = None

    def default(self, dataset_default: int) -> int:
        return self.fixed or max(self.minimum, dataset_default)

    def check(self, model: str, size: int) -> None:
        if self.fixed is not None and size != self.fixed:
            raise ConfigError(
                f"--image-size {size} not accepted by {model}: it takes only {self.fixed}; "
                f"pass --image-size {self.fixed} or leave it out"
            )
        if size < self.minimum:
            raise ConfigError(
                f"--image-size {size} is below {model}'s minimum of {self.minimum}; "
                f"pass --image-size {self.minimum} or more"
            )


class TinyNet(nn.Module):
    """Two conv blocks and two linear layers (21,930 parameters): fast tests of every method."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 16, 32), nn.ReLU(), nn.Linear(32, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def model_names() -> list[str]:
    """Every accepted model name: tiny test models and torchvision's classifiers."""
    return sorted(TINY_MODELS) + sorted(list_models(module=torchvision.models))


def check_model_name(name: str) -> None:
    if name not in model_names():
        paper = ", ".join(PAPER_MODELS)
        raise ConfigError(
            f"unknown model {name!r}; accepted: {paper}, tinynet, or any torchvision "
            "classification model (see torchvision.models.list_models())"
        )


def image_sizes(name: str) -> ImageSizes:
    """Input size limits from torchvision's weight metadata (ViTs are fixed at their size)."""
    if name in TINY_MODELS:
        return ImageSizes(minimum=8)
    published = get_model_weights(name).DEFAULT.meta["min_size"][0]
    fixed = published if name.startswith(("vit_", "swin_v2")) or published >= 224 else None
    minimum = max(published, TRAINING_MINIMUM.get(name, 0))
    return ImageSizes(minimum=max(minimum, 1), fixed=fixed)


def published_weights_url(name: str) -> str:
    return get_model_weights(name).DEFAULT.url


def published_hash_prefix(name: str) -> str:
    """The sha256 prefix torchvision puts in the weights file name (``resnet18-f37072fd.pth``)."""
    match = re.search(r"-([a-f0-9]{6,})\.", published_weights_url(name).rsplit("/", 1)[-1])
    if not match:
        raise ConfigError(f"torchvision publishes no hash for {name}'s weights; use --weights PATH")
    return match.group(1)


def default_weights_path(name: str, weights_dir: Path = Path("data/weights")) -> Path:
    return weights_dir / f"{name}-imagenet.pth"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_hash(path: Path, expected_prefix: str, name: str) -> None:
    """ConfigError unless the file's sha256 starts with the published ``expected_prefix``."""
    actual = sha256_of(path)
    if not actual.startswith(expected_prefix):
        raise ConfigError(
            f"weights file {path} has sha256 {actual[:12]}…, torchvision publishes "
            f"{expected_prefix}…; the file is corrupt or not {name}'s: delete it and "
            f"`joulebench fetch weights --model {name}` (or `dvc pull`)"
        )


def build_model(name: str, num_classes: int, weights: str = "none") -> nn.Module:
    """The model with ``weights`` (``none`` | ``imagenet`` | a path) and a ``num_classes`` head."""
    check_model_name(name)
    if name == "tinynet":
        if weights != "none":
            raise ConfigError("tinynet has no pretrained weights; pass --weights none")
        return TinyNet(num_classes)
    model = _architecture(name)
    if weights != "none":
        path = default_weights_path(name) if weights == "imagenet" else Path(weights)
        state = load_state_dict(name, path, check_hash=weights == "imagenet")
        check_architecture(name, path, state, model.state_dict())
        model.load_state_dict(state)
    replace_head(model, num_classes)
    return model


def _architecture(name: str) -> nn.Module:
    """The randomly initialised ImageNet architecture (1000 classes), aux head kept."""
    kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    if name.startswith("googlenet"):
        kwargs = {"aux_logits": False, "init_weights": False}
    return get_model(name, weights=None, **kwargs)


def load_state_dict(name: str, path: Path, check_hash: bool) -> dict[str, torch.Tensor]:
    """Read a weights file safely (no code runs); ConfigError says what is wrong with it."""
    if path.is_dir():
        raise ConfigError(f"weights file {path} is a directory; pass the .pth file inside it, or --weights none")
    if not path.is_file():
        raise ConfigError(
            f"weights file {path} not found; run `dvc pull {path}` or "
            f"`joulebench fetch weights --model {name}`, or pass --weights none"
        )
    if check_hash:
        verify_hash(path, published_hash_prefix(name), name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"refused to load {path}: it is not a plain tensor file ({first_line}); only "
            "state dicts saved with torch.save(model.state_dict()) are loaded"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ConfigError(
            f"weights file {path} is truncated or corrupt ({type(error).__name__}); "
            f"fetch it again with `joulebench fetch weights --model {name}` or `dvc pull`"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict of tensors")
    return state


def check_architecture(
    name: str, path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """ConfigError naming the first key or shape by which ``state`` is not ``name``'s."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problem = (
        f"missing {missing[0]}" if missing
        else f"unexpected {unexpected[0]}" if unexpected
        else f"{wrong_shape[0]} has shape {tuple(state[wrong_shape[0]].shape)}, "
        f"{name} needs {tuple(expected[wrong_shape[0]].shape)}" if wrong_shape
        else None
    )
    if problem:
        raise ConfigError(
            f"weights file {path} is not for {name} ({problem}); pass the file saved from "
            f"torchvision's {name}, or --weights none"
        )


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the final classification layer (and Inception's auxiliary one) for ``num_classes``.

    The head is the last Linear, or the last 1×1 Conv2d for SqueezeNet-style models.
    """
    layers = [
        (name, layer)
        for name, layer in model.named_modules()  # depth-first: the head comes last
        if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1))
    ]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or 1×1 conv classification head")
    aux_fc = getattr(getattr(model, "AuxLogits", None), "fc", None)
    heads = [layers[-1]] + [entry for entry in layers if aux_fc is not None and entry[1] is aux_fc]
    for name, layer in heads:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, _new_head(layer, num_classes))


def _new_head(layer: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    return nn.Conv2d(layer.in_channels, num_classes, 1, bias=layer.bias is not None)
