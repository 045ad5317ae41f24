"""Compression methods behind one small interface, and their registry.

A method is built from its validated parameters, changes the model before training
(``apply``: zeros, bits, dtypes, layers), may shape training (``stored_dtype``,
``autocast_dtype``, and ``optimizer``, which wraps the optimiser's step with the method's
passes: masks, re-imposed bits, truncation) and fills a
:class:`CompressionReport` saying what it changed. To add a method: subclass
:class:`Method` in its own file, declare ``name``, take ``params`` from ``method_params.PARAMS`` (where its
parameters are declared, importable without torch), and register it in ``METHODS`` below.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from joulebench.compress.base import (
    CompressionReport,
    Method,
    OptimizerWithPasses,
    ModelStats,
    flops_per_sample,
    model_stats,
)
from joulebench.compress.baseline import Baseline
from joulebench.compress.lowrank import LowRank
from joulebench.compress.prune import Prune
from joulebench.compress.stego import Stego
from joulebench.method_params import ParamSpec, method_names, parse_bool, parse_method_params

__all__ = [
    "CompressionReport", "Method", "OptimizerWithPasses", "compress", "ModelStats", "ParamSpec", "METHODS", "build_method",
    "flops_per_sample", "method_names", "model_stats", "parse_bool", "parse_method_params",
]

METHODS: dict[str, type[Method]] = {
    method.name: method for method in (Baseline, Stego, Prune, LowRank)
}


def build_method(method: str, values: dict[str, Any]) -> Method:
    """An instance of ``method`` with already validated parameter values."""
    return METHODS[method](**values)


def compress(method: Method, model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, CompressionReport]:
    """Apply ``method`` to ``model`` and report what changed (stats before and after)."""
    before = model_stats(model, example)
    model = method.apply(model, example)
    after = model_stats(model, example)
    return model, CompressionReport(method.name, dict(method.values), before, after, method.facts(model))
