"""Every method's name and parameters, importable without torch.

The command line, the sweep and the report need to know which methods exist and what their
parameters accept; none of them should pay for torch and Torch-Pruning to learn it. The method
classes in ``compress`` take their ``params`` from here; a method is one entry here plus its
class registered in ``compress.METHODS`` (a test holds the two to the same names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from joulebench.errors import ConfigError

MAX_BITS = 23  # float32's mantissa; overwriting more would reach the exponent
FILLS = ("zero", "random")
STEGO_DTYPES = ("bfloat16", "float16")  # the compute dtypes stego may train in
BFLOAT16_BITS = 16  # float32 keeps 16 more mantissa bits than bfloat16


@dataclass(frozen=True)
class ParamSpec:
    """One method parameter: its default, how to parse it from text, and what is accepted."""

    default: Any
    parse: Callable[[str], Any]
    accepted: str
    check: Callable[[Any], bool] = lambda value: True


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no) as a bool; ValueError otherwise."""
    lowered = text.lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise ValueError(text)


PARAMS: dict[str, dict[str, ParamSpec]] = {
    "baseline": {},
    "stego": {
        "bits": ParamSpec(
            16, int, f"an integer 0–{MAX_BITS} (low-order bits overwritten; default 16)",
            lambda bits: 0 <= bits <= MAX_BITS,
        ),
        "fill": ParamSpec(
            "zero", str.lower, "zero (the compression, default) or random (a seeded payload)",
            lambda fill: fill in FILLS,
        ),
        "seed": ParamSpec(
            0, int, "an integer ≥ 0 seeding fill=random (default 0)", lambda seed: seed >= 0
        ),
        "dtype": ParamSpec(
            "bfloat16", str.lower,
            "bfloat16 (default) or float16 (CUDA only) for the compute when bits ≥ 16",
            lambda dtype: dtype in STEGO_DTYPES,
        ),
    },
    "prune": {
        "amount": ParamSpec(
            0.5, float,
            "a fraction in (0, 1): of the weights, or of each layer's channels when structured "
            "(default 0.5)",
            lambda amount: 0 < amount < 1,
        ),
        "structured": ParamSpec(
            False, parse_bool,
            "true (remove channels with Torch-Pruning) or false (masked weights, default)",
        ),
    },
    "lowrank": {
        "rank_ratio": ParamSpec(
            0.25, float, "a fraction in (0, 1]: rank = rank_ratio × min(rows, cols) (default 0.25)",
            lambda ratio: 0 < ratio <= 1,
        ),
        "energy": ParamSpec(
            None, float,
            "a fraction in (0, 1]: instead of rank_ratio, keep the fewest singular values "
            "holding this share of Σσ² (default: unset)",
            lambda energy: 0 < energy <= 1,
        ),
        "conv": ParamSpec(
            False, parse_bool, "true (also factorise Conv2d layers) or false (Linear only, default)"
        ),
    },
}


def method_names() -> list[str]:
    return sorted(PARAMS)


# Rules between a method's parameters, and between them and the device. They are checked where the
# values meet (parse_method_params; config.make_config for the device), so a sweep refuses a
# cell that breaks one when it builds the grid, before its first child starts.


def _stego_parameters_problem(values: dict[str, Any]) -> str | None:
    if values["dtype"] == "float16" and values["bits"] < BFLOAT16_BITS:
        return (f"stego dtype=float16 needs bits ≥ {BFLOAT16_BITS} (with bits={values['bits']} the kept bits "
                "fit no 16-bit format and compute is float32); raise bits or drop dtype")
    return None


PARAMETER_RULES: dict[str, Callable[[dict[str, Any]], str | None]] = {"stego": _stego_parameters_problem}


def device_problem(method: str, values: dict[str, Any], device_type: str) -> str | None:
    """Why ``method`` with ``values`` cannot run on a ``device_type`` device, or None."""
    if method == "stego" and values["dtype"] == "float16" and device_type != "cuda":
        # Refused rather than silently swapped: a float16 run must be float16 on every host.
        return (f"stego dtype=float16 runs on CUDA only (device is {device_type}); "
                "use dtype=bfloat16 (the default) or --device cuda")
    return None


def parse_method_params(method: str, pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``key=value`` strings into validated values for ``method``; raise ConfigError."""
    if method not in PARAMS:
        raise ConfigError(
            f"unknown method {method!r}; accepted: {', '.join(method_names())}"
        )
    specs = PARAMS[method]
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
            # Python reads "٣" or "１" as 3 and 1; a value in other digits than 0-9 is a typo here.
            value = spec.parse(text.strip()) if text.isascii() else None
        except ValueError:
            value = None
        if value is None or not spec.check(value):
            raise ConfigError(
                f"bad value {text!r} for {method}.{key}; accepted: {spec.accepted}"
            )
        values[key] = value
    values = {key: spec.default for key, spec in specs.items()} | values
    problem = PARAMETER_RULES.get(method, lambda _: None)(values)
    if problem:
        raise ConfigError(problem)
    return values
