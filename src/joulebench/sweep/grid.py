"""The grid: its combinations, each the RunConfig its child will build, and their identity.

A combination's hash is computed here exactly as the child computes it: the child's RunConfig is
built with :func:`joulebench.config.make_config` from the very option values passed to it, and
those values are rendered from the RunConfig's own identity fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from joulebench import names
from joulebench.config import IDENTITY, RunConfig, declaration, make_config, on_device, option_fields
from joulebench.errors import ConfigError
from joulebench.method_params import method_names

# Identity fields that may be unset: the Kubernetes MLproject cannot declare them (no default), so
# they travel as MLflow "extra" parameters, which MLflow turns into ``--KEY VALUE`` verbatim.
OPTIONAL_FIELDS = frozenset(f.name for f in option_fields(IDENTITY) if f.type.endswith("| None"))


@dataclass(frozen=True)
class Combination:
    """One cell of the grid: a model, a method with its parameters, and a repeat index."""

    config: RunConfig  # as the child builds it; its hash identifies the result
    method_args: tuple[str, ...]  # the method's KEY=VALUE overrides, as the user gave them

    @property
    def label(self) -> str:
        return f"{self.config.model}-{self.config.method}-r{self.config.repeat}"

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    def option_values(self) -> dict[str, str]:
        """The child's options (RunConfig field → text): every identity field the resolved config
        has a value for, and where the child is filed (the sweep's experiment, the cell's label)."""
        values = {name: str(value) for name, value in self.config.identity().items()
                  if name != "method_params" and value is not None}  # the method's go as --param
        return values | {"experiment": self.config.experiment, "run_name": self.label}

    def train_arguments(self, parent_run_id: str) -> list[str]:
        """``joulebench train`` arguments that rebuild exactly this combination's config."""
        arguments = ["--quiet", "--parent-run-id", parent_run_id]
        for name, value in self.option_values().items():
            arguments += [declaration(name).flag(name), value]
        for pair in self.method_args:
            arguments += ["--param", pair]
        return arguments

    def kubernetes_parameters(self, parent_run_id: str) -> dict[str, str]:
        """MLflow Project parameters for ``deploy/kubernetes/MLproject``'s ``train`` entry point.

        Declared parameters keep ``train``'s param names, so the project run's params (MLflow
        logs them) equal those ``train`` logs; optional ones and the method's overrides (joined
        by commas, the MLproject convention) are extras, which MLflow appends as ``--KEY VALUE``.
        """
        parameters = {"parent_run_id": parent_run_id}
        for name, value in self.option_values().items():
            parameters[declaration(name).flag(name).removeprefix("--") if name in OPTIONAL_FIELDS else name] = value
        if self.method_args:
            parameters["param"] = ",".join(self.method_args)
        return parameters


def parse_names(text: str, option: str, every: Iterable[str]) -> list[str]:
    """A comma-separated list (order kept, duplicates dropped), or ``all``."""
    if text.strip() == "all":
        return list(every)
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ConfigError(f"{option} is empty; pass a comma-separated list such as resnet18,vgg16, or all")
    return names


MAX_REPEATS = 1000  # each repeat is a full training of every cell: more is a typo


def parse_repeats(text: str) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= MAX_REPEATS:
        raise ConfigError(f"--repeats must be a whole number from 1 to {MAX_REPEATS}, got {text!r}; "
                          "e.g. --repeats 3")
    return int(digits)


def parse_method_overrides(pairs: Iterable[str], methods: list[str]) -> dict[str, tuple[str, ...]]:
    """``METHOD.KEY=VALUE`` pairs → each method's ``KEY=VALUE`` list (validated by make_config)."""
    overrides: dict[str, list[str]] = {}
    for pair in pairs:
        method, dot, setting = pair.partition(".")
        if not dot or "=" not in setting or not method:
            raise ConfigError(
                f"--param {pair!r} must be METHOD.KEY=VALUE (it applies to that method only); "
                "e.g. --param prune.amount=0.7"
            )
        if method not in methods:
            known = method in method_names()
            raise ConfigError(
                f"--param {pair!r} names method {method!r}, which "
                f"{'is not in --methods ' + ','.join(methods) if known else 'does not exist'}; "
                f"accepted methods: {', '.join(methods if known else method_names())}"
            )
        overrides.setdefault(method, []).append(setting)
    return {method: tuple(settings) for method, settings in overrides.items()}


def expand_grid(
    models: list[str],
    methods: list[str],
    repeats: int,
    overrides: dict[str, tuple[str, ...]],
    options: dict[str, Any],
    run_device: str | None = None,
) -> list[Combination]:
    """Every combination, repeat-major (one of each first) and each model's baseline first.

    Repeat ``r`` trains with seed ``--seed + r``: repeats then vary the split, initialisation
    and order, which is what a confidence interval over repeats should cover. ``run_device``
    replaces the resolved device when children run where this process cannot look (a pod).
    """
    ordered_methods = sorted(methods, key=lambda name: name != "baseline")
    combinations = []
    for repeat in range(repeats):
        for model in models:
            for method in ordered_methods:
                config = make_config(**options | {
                    "model": model, "method": method, "params": overrides.get(method, ()),
                    "seed": options.get("seed", 0) + repeat, "repeat": repeat,
                    # where children resolve the device themselves, resolving it here proves nothing
                    **({"device": "cpu"} if run_device else {}),
                })
                if run_device is not None:
                    config = on_device(config, run_device)
                combinations.append(Combination(config, overrides.get(method, ())))
    return combinations


def sweep_hash(combinations: list[Combination]) -> str:
    """Identity of the grid: a sweep started again with the same grid resumes its parent run."""
    hashes = sorted(combination.config_hash for combination in combinations)
    return hashlib.sha256(json.dumps(hashes).encode()).hexdigest()[:16]


def grid_table(combinations: list[Combination]) -> list[dict[str, Any]]:
    """The grid as logged on the parent run (the report reads the hashes back from it)."""
    return [
        {"label": c.label, "model": c.config.model, "method": c.config.method, "repeat": c.config.repeat,
         "method_params": c.config.method_params, names.CONFIG_HASH: c.config_hash}
        for c in combinations
    ]
