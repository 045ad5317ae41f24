"""Compression methods behind one small interface, and their registry.

A method is built from its validated parameters, changes the model before training
(``apply``: zeros, bits, dtypes, layers), may shape training (``stored_dtype``,
``autocast_dtype``, and ``optimizer``, which wraps the optimiser's step with the method's
passes: masks, re-imposed bits, truncation) and fills a
:class:`CompressionReport` saying what it changed. To add a method: subclass
:class:`Method` in its own file, declare ``name`` and ``params``, and register it in
``METHODS`` below.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from joulebench.compress.base import (
    CompressionReport,
    Method,
    OptimizerWithPasses,
    ModelStats,
    ParamSpec,
    flops_per_sample,
    model_stats,
    parse_bool,
)
from joulebench.compress.baseline import Baseline
from joulebench.compress.lowrank import LowRank
from joulebench.compress.prune import Prune
from joulebench.compress.stego import Stego
from joulebench.errors import ConfigError

__all__ = [
    "CompressionReport", "Method", "OptimizerWithPasses", "compress", "ModelStats", "ParamSpec", "METHODS", "build_method",
    "flops_per_sample", "method_names", "model_stats", "parse_bool", "parse_method_params",
]

METHODS: dict[str, type[Method]] = {
    method.name: method for method in (Baseline, Stego, Prune, LowRank)
}


def method_names() -> list[str]:
    return sorted(METHODS)


def parse_method_params(method: str, pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``key=value`` strings into validated values for ``method``; raise ConfigError."""
    if method not in METHODS:
        raise ConfigError(
            f"unknown method {method!r}; accepted: {', '.join(method_names())}"
        )
    specs = METHODS[method].params
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"method parameter {pair!r} is not key=value; e.g. --param bits=16")
        if key not in specs:
            accepted = ", ".join(f"{k} ({s.accepted})" for k, s in specs.items()) or "none"
            raise ConfigError(
                f"method {method!r} has no parameter {key!r}; accepted: {accepted}"
            )
        spec = specs[key]
        try:
            value = spec.parse(text.strip())
        except ValueError:
            value = None
        if value is None or not spec.check(value):
            raise ConfigError(
                f"bad value {text!r} for {method}.{key}; accepted: {spec.accepted}"
            )
        values[key] = value
    return {key: spec.default for key, spec in specs.items()} | values


def build_method(method: str, values: dict[str, Any]) -> Method:
    """An instance of ``method`` with already validated parameter values."""
    return METHODS[method](**values)


def compress(method: Method, model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, CompressionReport]:
    """Apply ``method`` to ``model`` and report what changed (stats before and after)."""
    before = model_stats(model, example)
    model = method.apply(model, example)
    after = model_stats(model, example)
    return model, CompressionReport(method.name, dict(method.values), before, after, method.facts(model))
