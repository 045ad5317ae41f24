"""Model registry: build a torchvision classifier, load its weights safely, give it a new head.

The nine models of the paper are listed with their parameter counts; any other torchvision
classification model is accepted by name, and ``tinynet`` is a small CNN for fast tests.
Weights are loaded with ``torch.load(weights_only=True)`` (a pickle cannot run code) and an
ImageNet file is checked against the sha256 prefix torchvision publishes in its file name. A
file in another format (safetensors, TorchScript, ONNX) is named as such, a training checkpoint
is unwrapped, and a state dict whose dtypes are not the model's kind (int8 for float) is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from joulebench.inputs import file_problem
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
    if name == "tinynet" and weights == "imagenet":
        raise ConfigError("tinynet has no ImageNet weights; pass --weights none, or a file of trained tinynet weights")
    if name == "tinynet" and weights == "none":
        return TinyNet(num_classes)  # built for this task's classes: no head to replace
    model = TinyNet() if name == "tinynet" else _architecture(name)
    if weights != "none":
        path = default_weights_path(name) if weights == "imagenet" else Path(weights)
        state = load_state_dict(name, path, check_hash=weights == "imagenet")
        if weights != "imagenet":
            fit_heads_to(model, state)
        check_architecture(name, path, state, model.state_dict())
        model.load_state_dict(state)
    replace_head(model, num_classes)
    return model


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def has_batch_norm(name: str) -> bool:
    """Whether model ``name`` has BatchNorm layers, which train on 2 samples per batch at least.
    Built on the meta device: no memory, no initialisation (50 ms for resnet18)."""
    with torch.device("meta"):
        model = TinyNet() if name == "tinynet" else _architecture(name)
    return any(isinstance(module, BATCH_NORMS) for module in model.modules())


def _architecture(name: str) -> nn.Module:
    """The randomly initialised ImageNet architecture (1000 classes), aux head kept."""
    kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    if name.startswith("googlenet"):
        kwargs = {"aux_logits": False, "init_weights": False}
    return get_model(name, weights=None, **kwargs)


def check_weights_location(name: str, weights: str) -> None:
    """The weights file ``--weights`` names for model ``name`` is there, checked before any run
    opens (a sweep checks every cell's); weights in MLflow are checked where they are downloaded."""
    if weights != "none" and not weights.startswith(("runs:/", "models:/")):
        _check_weights_file(name, default_weights_path(name) if weights == "imagenet" else Path(weights))


def _check_weights_file(name: str, path: Path) -> None:
    problem = file_problem(path)
    if problem == "is a directory":
        raise ConfigError(f"weights file {path} is a directory; pass the .pth file inside it, or --weights none")
    if problem and problem != "does not exist":
        raise ConfigError(f"weights file {path} {problem}; pass a .pth file saved by torch.save, or --weights none")
    if problem:
        raise ConfigError(
            f"weights file {path} not found; run `dvc pull {path}` or "
            f"`joulebench fetch weights --model {name}`, or pass --weights none"
        )


def load_state_dict(name: str, path: Path, check_hash: bool) -> dict[str, torch.Tensor]:
    """Read a weights file safely (no code runs); ConfigError says what is wrong with it."""
    _check_weights_file(name, path)
    if check_hash:
        verify_hash(path, published_hash_prefix(name), name)
    check_format(path)
    try:
        # torchvision's references/classification/train.py saves its argparse.Namespace in the
        # checkpoint; rebuilding one only sets attributes, so it is as safe as a dict.
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))  # a class or function it would not run
        if found:
            raise ConfigError(
                f"refused to load {path}: it pickles {found[1]}, and only tensors are unpickled "
                "(anything else can run code); if it is a whole model saved with torch.save(model), "
                "re-save it where you trust it as torch.save(model.state_dict(), PATH)"
            ) from None
        raise _corrupt(name, path, error) from None
    # A cut or garbled file fails inside torch.load (its legacy pre-zip reader) with any of these.
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError,
            TypeError, AttributeError, AssertionError, struct.error) as error:
        raise _corrupt(name, path, error) from None
    state = _state_dict_in(loaded)
    if state is None:
        found = (f"keys {', '.join(map(str, list(loaded)[:5]))}" if isinstance(loaded, dict)
                 else f"a {type(loaded).__name__}")
        raise ConfigError(
            f"weights file {path} holds no state dict of tensors (found {found}; looked under "
            f"{', '.join(CHECKPOINT_KEYS)}); save one with torch.save(model.state_dict(), PATH), "
            "or pass --weights none"
        )
    return state


def _corrupt(name: str, path: Path, error: BaseException) -> ConfigError:
    return ConfigError(
        f"weights file {path} is truncated or corrupt ({type(error).__name__}); "
        f"fetch it again with `joulebench fetch weights --model {name}` or `dvc pull`"
    )


# Where training scripts put the state dict in a checkpoint: torchvision's references ("model",
# beside "optimizer", "epoch", "args"), Lightning ("state_dict"), PyTorch's tutorials.
CHECKPOINT_KEYS = ("model", "state_dict", "model_state_dict")


def _state_dict_in(loaded: object) -> dict[str, torch.Tensor] | None:
    """``loaded`` itself if it is a state dict, else the one a checkpoint holds, else None."""
    candidates = [loaded] + [loaded.get(key) for key in CHECKPOINT_KEYS if isinstance(loaded, dict)]
    return next((c for c in candidates if isinstance(c, dict) and all(
        isinstance(v, torch.Tensor) for v in c.values())), None)


# How to get a state dict out of a file in another format (``{}``: the Python that reads it).
CONVERT = "convert it in Python: torch.save({}, 'weights.pth') and pass --weights weights.pth"


def check_format(path: Path) -> None:
    """ConfigError naming the format of a file torch.save did not write, judged by its content.

    torch.load would call a safetensors or TorchScript file "truncated or corrupt", and fail on
    others with its own advice to load them unsafely (or a bare KeyError).
    """
    with path.open("rb") as handle:
        head = handle.read(16)
    if not head or head.startswith(b"\x80"):  # empty (torch.load says truncated) or a legacy pickle
        return
    if head.startswith(b"PK\x03\x04"):
        return _check_zip(path)
    size = int.from_bytes(head[:8], "little")  # safetensors: u64 header length, then JSON
    if head[8:9] == b"{" and size <= path.stat().st_size - 8:
        raise ConfigError(
            f"weights file {path} is a safetensors file, not a torch.save state dict; "
            + CONVERT.format(f"safetensors.torch.load_file({str(path)!r})")
        )
    if head.startswith(b"\x08"):  # protobuf field 1, a varint: ONNX's ir_version
        raise _not_torch(path, "an ONNX model, which holds no PyTorch state dict")
    raise _not_torch(path, f"not a file torch.save wrote (it starts with {head[:8]!r})")


def _check_zip(path: Path) -> None:
    """torch.save's zip holds ``*/data.pkl``; torch.jit.save's adds ``*/constants.pkl`` and code."""
    names = _zip_names(path)
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise ConfigError(
            f"weights file {path} is a TorchScript archive (torch.jit.save), not a state dict; "
            + CONVERT.format(f"torch.jit.load({str(path)!r}).state_dict()")
            + " (only if you trust the file: loading it runs its code)"
        )
    if names and not any(n.endswith("/data.pkl") for n in names):  # .npz, .keras, a zipped folder
        raise _not_torch(path, f"a zip archive without data.pkl ({names[0]}, …)")
    # Otherwise torch.save's zip; a cut one lists no names and torch.load calls it truncated.


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _not_torch(path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"weights file {path} is {what}; pass a state dict saved from the PyTorch model with "
        "torch.save(model.state_dict(), PATH), or --weights none"
    )


def check_architecture(
    name: str, path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    """ConfigError naming the first key, shape or dtype by which ``state`` is not ``name``'s."""
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
    # load_state_dict casts silently: int8 weights would load as garbage floats and still train.
    wrong_kind = [k for k in expected if _kind(state[k].dtype) != _kind(expected[k].dtype)]
    if wrong_kind:
        key, kind = wrong_kind[0], _kind(expected[wrong_kind[0]].dtype)
        raise ConfigError(
            f"weights file {path} holds {key} as {state[key].dtype}, {name} needs {kind} values "
            f"there (a quantised or cast export?); pass the {kind} state dict saved before "
            "casting, torch.save(model.state_dict(), PATH), or --weights none"
        )


def _kind(dtype: torch.dtype) -> str:
    """A dtype's kind: a float16 → float32 load is exact, an int8 → float32 one is not."""
    if dtype == torch.bool:
        return "boolean"
    if dtype.is_complex:
        return "complex"
    return "floating-point" if dtype.is_floating_point else "integer"


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the final classification layer (and Inception's auxiliary one) for ``num_classes``."""
    for name, layer in _heads(model):
        _set_module(model, name, _new_head(layer, num_classes))


def fit_heads_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Size the heads as ``state``'s: weights fine-tuned on another task (digits:0-4 before
    digits:5-9) carry that task's class count there, and every other layer loads as it is. The
    heads are then replaced for this run's classes, as an ImageNet head is."""
    for name, layer in _heads(model):
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim > 0 and weight.shape[0] != layer.weight.shape[0]:
            _set_module(model, name, _new_head(layer, weight.shape[0]))


def _heads(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The last Linear (or 1×1 Conv2d, SqueezeNet-style), and Inception's auxiliary one."""
    layers = [
        (name, layer)
        for name, layer in model.named_modules()  # depth-first: the head comes last
        if isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1))
    ]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no Linear or 1×1 conv classification head")
    aux_fc = getattr(getattr(model, "AuxLogits", None), "fc", None)
    return [layers[-1]] + [entry for entry in layers if aux_fc is not None and entry[1] is aux_fc]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def _new_head(layer: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    return nn.Conv2d(layer.in_channels, num_classes, 1, bias=layer.bias is not None)
