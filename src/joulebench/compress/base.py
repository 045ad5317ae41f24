"""The interface every compression method implements, and the model statistics it reports."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from joulebench.method_params import ParamSpec


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


def flat_views(
    tensors: Sequence[torch.Tensor], dtype: torch.dtype, flat: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One flat buffer (``flat``, or a new uninitialised one) of ``dtype`` on the tensors'
    device, and a view of it per tensor with that tensor's shape and memory layout
    (contiguous or channels_last), so that one operation on the buffer acts on all of them."""
    total = sum(t.numel() for t in tensors)
    if flat is None:
        flat = torch.empty(total, dtype=dtype, device=tensors[0].device if tensors else "cpu")
    views, offset = [], 0
    for tensor in tensors:
        dense = tensor.is_contiguous() or (
            tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
        )
        stride = tensor.stride() if dense else torch.empty(tensor.shape, device="meta").stride()
        views.append(flat.as_strided(tensor.shape, stride, offset))
        offset += tensor.numel()
    return flat, views


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

    Parameters are counted as they are: a masked-pruned model holds its pruned weights as
    real zeros, so it reports its real non-zeros while its dense FLOPs stay visible.
    """
    tensors = [t.detach() for t in model.parameters()]
    parameters = sum(t.numel() for t in tensors)
    nonzero = sum(int(torch.count_nonzero(t)) for t in tensors)
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
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


def as_model_input(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images`` in the dtype of the model's first weight (its stem): a model stored in
    bfloat16 takes bfloat16 images."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    return images if first is None else images.to(first.dtype)


def flops_per_sample(model: nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs for one sample, counted by ``FlopCounterMode`` on a one-sample batch."""
    counter = FlopCounterMode(display=False)
    with evaluating(model), counter:
        model(as_model_input(model, example[:1]))
    return int(counter.get_total_flops())


def output_classes(model: nn.Module, example: torch.Tensor) -> int:
    """How many class scores ``model`` produces (the width of its eval-mode logits)."""
    with evaluating(model):
        return int(model(as_model_input(model, example[:1])).shape[-1])


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
