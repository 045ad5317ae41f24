"""The run schema's seams: one default per option, no RunConfig that make_config did not validate,
hashes that survive a new option, and report rows that follow each option's declaration."""

from __future__ import annotations

import dataclasses

import pytest

from joulebench import config as schema
from joulebench.config import (
    IDENTITY, SPLITS_GROUPS, SPLITS_ROWS, VARIES_IN_ROW, RunConfig, as_baseline, make_config, on_device, option,
    option_fields,
)
from joulebench.report.rows import GROUP_PARAMS, group_runs, param
from joulebench.tracking.read import RunRecord

# make_config(model="tinynet", device="cpu")'s hash as every release since its 21 identity
# options. It must never change: a changed hash reruns every finished cell of a resumed sweep.
PINNED = {"model": "tinynet", "device": "cpu"}
PINNED_HASH = "c065ca83fe73a3fd"


def test_the_pinned_config_keeps_its_hash():
    assert make_config(**PINNED).config_hash() == PINNED_HASH


def test_an_option_added_at_the_value_runs_had_before_it_keeps_every_hash():
    """A new identity field declared with ``absent_means`` leaves hashes alone at that value, and
    changes them at any other (it is part of the result's identity)."""
    extended = dataclasses.make_dataclass(
        "ExtendedRunConfig",
        [("warmup_epochs", int, option(0, "A later option.", absent_means=0))],
        bases=(RunConfig,), frozen=True)
    base = make_config(**PINNED)
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    token = schema._MAKE_CONFIG  # a schema change is this test's subject: it builds the extended schema itself
    assert extended(**values, warmup_epochs=0, built_by=token).config_hash() == PINNED_HASH
    assert extended(**values, warmup_epochs=2, built_by=token).config_hash() != PINNED_HASH


def test_a_run_config_is_built_only_by_make_config():
    with pytest.raises(TypeError, match="make_config"):
        RunConfig(**{f.name: None for f in dataclasses.fields(RunConfig)}, built_by=None)
    with pytest.raises(ValueError, match="built_by"):  # replace() needs the token it does not have
        dataclasses.replace(make_config(**PINNED), image_size=1)


def test_vit_gets_its_own_image_size_not_the_digits_one():
    """The issue's example: RunConfig(model="vit_b_16") used to get 32 px, which ViT cannot take."""
    assert make_config(model="vit_b_16", weights="none").image_size == 224


def test_derived_configs_keep_everything_but_what_they_change():
    config = make_config(**PINNED, method="prune", params=("amount=0.7",))
    baseline = as_baseline(config)
    assert (baseline.method, baseline.method_params) == ("baseline", {})
    assert baseline.config_hash() == make_config(**PINNED).config_hash()
    assert on_device(config, "cuda:0").device == "cuda:0"
    assert on_device(config, "cuda:0").method_params == config.method_params


def test_each_option_has_one_default_and_make_config_starts_from_it():
    """Options not given take their declared default, the value `--help` shows."""
    config = make_config()
    assert config.epochs == schema.declaration("epochs").default == 3
    assert config.device == "cpu" and schema.declaration("device").default == "auto"  # resolved here
    assert config.lr == schema.DEFAULT_LR["adam"] and schema.declaration("lr").default is None  # derived
    assert not hasattr(RunConfig, "epochs")  # the dataclass field has no default of its own


def test_every_identity_option_says_how_the_report_compares_it():
    for f in option_fields():
        spec = f.metadata["option"]
        if spec.role == IDENTITY:
            assert spec.compare in (SPLITS_GROUPS, SPLITS_ROWS, VARIES_IN_ROW), f.name
        else:
            assert spec.compare is None, f.name
    # The rows the report draws are keyed by model, image size and method (with its parameters).
    assert {f.name for f in option_fields(IDENTITY) if f.metadata["option"].compare == SPLITS_ROWS} == {
        "model", "image_size", "method", "method_params"}


def _record(run_id: str, params: dict[str, str]) -> RunRecord:
    return RunRecord(run_id, run_id, 0, params, {"config_hash": run_id, "host": "h1"}, {})


def _places(*runs: RunRecord) -> dict[str, tuple]:
    """Each run's (group, row) in the report."""
    return {run.run_id: (group, row) for group, rows in group_runs(list(runs)).items()
            for row, members in rows.items() for run in members}


def _base_params() -> dict[str, str]:
    return {key: str(value) for key, value in make_config(model="tinynet", method="stego").params().items()}


@pytest.mark.parametrize("name", [f.name for f in option_fields(IDENTITY) if f.name != "method_params"])
def test_runs_that_differ_in_one_option_share_a_row_only_if_it_varies_within_rows(name):
    """Generated over the schema: an option added later is covered without touching this test."""
    base = _base_params()
    other = base | {name: "cuda:0" if name == "device" else base[name] + "-other"}  # a CPU is named by its host
    places = _places(_record("a", base), _record("b", other))
    if schema.declaration(name).compare == VARIES_IN_ROW:
        assert places["a"] == places["b"]
    else:
        assert places["a"] != places["b"]
        assert (places["a"][0] != places["b"][0]) == (schema.declaration(name).compare == SPLITS_GROUPS)


def test_runs_that_differ_in_a_method_parameter_are_different_rows():
    base = _base_params()
    places = _places(_record("a", base), _record("b", base | {"method.bits": "8"}))
    assert places["a"][0] == places["b"][0] and places["a"][1] != places["b"][1]


@pytest.mark.parametrize("name", ["idle_seconds", "inference_batches", "data_dir", "country", "sample_hz"])
def test_options_the_old_hand_kept_list_pooled_now_split_groups(name):
    assert name in GROUP_PARAMS


def test_a_run_logged_before_an_option_existed_reads_as_the_value_runs_had_then(monkeypatch):
    from joulebench.report import rows

    run = _record("old", {"model": "tinynet"})
    assert param(run, "tf32") == "None"  # declared without absent_means: its own value
    monkeypatch.setitem(rows.ABSENT_MEANS, "tf32", "True")
    assert param(run, "tf32") == "True"
