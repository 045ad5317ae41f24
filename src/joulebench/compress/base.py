"""The interface every compression method implements, and the model statistics it reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter: its default, how to parse it from text, and what is accepted."""

    default: Any
    parse: Callable[[str], Any]
    accepted: str
    check: Callable[[Any], bool] = lambda value: True


@dataclass
class ModelStats:
    """Size and cost of a model as it would be stored and run."""

    parameters: int
    nonzero_parameters: int
    weight_bytes: int
    flops_per_sample: int


@dataclass
class CompressionReport:
    """What a method changed; logged as params, metrics and a JSON artefact."""

    method: str
    params: dict[str, Any]
    before: ModelStats
    after: ModelStats
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Method:
    """Base class: the identity compression (``baseline``) unless a subclass overrides."""

    name: ClassVar[str]
    params: ClassVar[dict[str, ParamSpec]] = {}

    def __init__(self, **values: Any) -> None:
        self.values = {key: spec.default for key, spec in self.params.items()} | values

    def apply(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """Compress ``model`` (may return a new module); ``example`` is one input batch."""
        return model

    def autocast_dtype(self, device_type: str) -> torch.dtype | None:
        """The dtype training and evaluation autocast to (stego dtype=float16), or None."""
        return None

    def stored_dtype(self) -> torch.dtype | None:
        """The dtype ``apply`` stores the weights in and the model computes in (inputs are cast
        to it), or None for float32."""
        return None

    def optimizer(self, model: nn.Module, build: OptimizerFactory) -> OptimizerWithPasses:
        """The optimiser training steps with: ``build`` over the trainable parameters, wrapped
        by methods that must act around each step (masks, overwritten bits, truncation).

        Called once the model is on its device in its training memory format."""
        return OptimizerWithPasses(build(trainable(model)))

    def facts(self, model: nn.Module) -> dict[str, Any]:
        """Method-specific facts for the report (sparsity, freed capacity, ranks...)."""
        return {}


OptimizerFactory = Callable[[Sequence[torch.Tensor]], torch.optim.Optimizer]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class OptimizerWithPasses:
    """A torch optimiser with a method's passes before (``before_step``) and after
    (``after_step``) each of its steps; the plain optimiser where a method has none.

    It exposes ``param_groups`` and ``state`` so that ``torch.amp.GradScaler`` can unscale
    and step it. Passes must not read values back to the host: a step stays asynchronous.
    """

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    @property
    def state(self) -> Any:
        return self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.before_step()
        self.inner.step()
        self.after_step()

    def before_step(self) -> None:
        """Runs between backward and the optimiser's update (e.g. masking gradients)."""

    def after_step(self) -> None:
        """Runs after the optimiser's update (e.g. re-imposing a compression)."""


def model_stats(model: nn.Module, example: torch.Tensor) -> ModelStats:
    """Parameter count, non-zeros, stored bytes and FLOPs per sample of ``model``.

    Pruning masks (``weight_orig`` * ``weight_mask``) are counted as the effective weight,
    so a pruned model reports its real non-zeros while its dense FLOPs stay visible.
    """
    tensors = dict(model.named_parameters())
    for module_name, module in model.named_modules():
        for buffer_name, mask in module.named_buffers(recurse=False):
            if buffer_name.endswith("_mask"):
                base = buffer_name[: -len("_mask")]
                prefix = f"{module_name}." if module_name else ""
                tensors[f"{prefix}{base}_orig"] = getattr(module, base).detach()
    parameters = sum(t.numel() for t in tensors.values())
    nonzero = sum(int(torch.count_nonzero(t)) for t in tensors.values())
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return ModelStats(parameters, nonzero, weight_bytes, flops_per_sample(model, example))


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode without gradients for a look at ``model``; its training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def flops_per_sample(model: nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs for one sample, counted by ``FlopCounterMode`` on a one-sample batch."""
    counter = FlopCounterMode(display=False)
    with evaluating(model), counter:
        model(example[:1])
    return int(counter.get_total_flops())


def output_classes(model: nn.Module, example: torch.Tensor) -> int:
    """How many class scores ``model`` produces (the width of its eval-mode logits)."""
    with evaluating(model):
        return int(model(example[:1]).shape[-1])


def classifier_heads(model: nn.Module, num_classes: int) -> dict[str, nn.Module]:
    """The layers that produce class scores, by name: every Linear (or 1×1 Conv2d, SqueezeNet's
    head) with ``num_classes`` outputs, so Inception's auxiliary head is found too.

    Compressions leave them alone: their outputs are the classes, and they are the freshly
    initialised part of a fine-tuned model.
    """
    return {
        name: layer
        for name, layer in model.named_modules()
        if (isinstance(layer, nn.Linear) and layer.out_features == num_classes)
        or (
            isinstance(layer, nn.Conv2d)
            and layer.kernel_size == (1, 1)
            and layer.out_channels == num_classes
        )
    }


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) as a bool; ValueError otherwise."""
    lowered = text.lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ValueError(text)
