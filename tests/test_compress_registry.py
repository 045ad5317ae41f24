"""The method registry: names, defaults, parsed values and one-line errors for bad parameters."""

import pytest

from joulebench.compress import METHODS, build_method, method_names, parse_method_params
from joulebench.errors import ConfigError
from joulebench.method_params import PARAMS


def test_the_four_methods_are_registered_under_their_names():
    assert method_names() == ["baseline", "lowrank", "prune", "stego"]
    assert all(METHODS[name].name == name for name in method_names())


def test_every_method_class_takes_its_parameters_from_the_torch_free_declarations():
    assert sorted(METHODS) == sorted(PARAMS)
    assert all(METHODS[name].params is PARAMS[name] for name in PARAMS)


@pytest.mark.parametrize(
    ("method", "pairs", "expected"),
    [
        ("stego", [], {"bits": 16, "fill": "zero", "seed": 0, "dtype": "bfloat16"}),
        ("stego", ["bits=23", "fill=RANDOM", "seed=5", "dtype=float16"],
         {"bits": 23, "fill": "random", "seed": 5, "dtype": "float16"}),
        ("prune", [], {"amount": 0.5, "structured": False}),
        ("prune", ["amount=0.25", "structured=yes"], {"amount": 0.25, "structured": True}),
        ("lowrank", [], {"rank_ratio": 0.25, "energy": None, "conv": False}),
        ("lowrank", ["rank_ratio=1", "energy=0.9", "conv=true"],
         {"rank_ratio": 1.0, "energy": 0.9, "conv": True}),
    ],
)
def test_parameters_parse_to_typed_values_over_the_defaults(method, pairs, expected):
    values = parse_method_params(method, pairs)
    assert values == expected
    assert build_method(method, values).values == expected


@pytest.mark.parametrize(
    ("method", "pair", "accepted"),
    [
        ("stego", "bits=24", "an integer 0–23"),
        ("stego", "bits=-1", "an integer 0–23"),
        ("stego", "bits=1.5", "an integer 0–23"),
        ("stego", "fill=ones", "zero (the compression, default) or random"),
        ("stego", "seed=-3", "an integer ≥ 0"),
        ("stego", "dtype=float8", "bfloat16 (default) or float16"),
        ("prune", "amount=0", "a fraction in (0, 1)"),
        ("prune", "amount=1", "a fraction in (0, 1)"),
        ("prune", "structured=maybe", "true (remove channels"),
        ("lowrank", "rank_ratio=0", "a fraction in (0, 1]"),
        ("lowrank", "rank_ratio=1.5", "a fraction in (0, 1]"),
        ("lowrank", "energy=nan", "a fraction in (0, 1]"),
        ("lowrank", "conv=2", "true (also factorise"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_parameter_and_what_is_accepted(method, pair, accepted):
    key, _, text = pair.partition("=")
    with pytest.raises(ConfigError) as error:
        parse_method_params(method, [pair])
    message = str(error.value)
    assert message.startswith(f"bad value {text!r} for {method}.{key}; accepted: ")
    assert accepted in message
    assert "\n" not in message


def test_an_unknown_parameter_lists_the_accepted_ones():
    with pytest.raises(ConfigError) as error:
        parse_method_params("prune", ["rank_ratio=0.5"])
    message = str(error.value)
    assert message.startswith("method 'prune' has no parameter 'rank_ratio'; accepted: amount (")
    assert "structured (" in message
