"""The GPU table: NVML names resolve to the right datasheet entry; FLOP/J is peak over power."""

from __future__ import annotations

import pytest

from joulebench.energy.devices import gpu_spec, peak_flops_per_joule
from joulebench.errors import ConfigError


@pytest.mark.parametrize(
    ("nvml_name", "model", "board_watts"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 700),
        ("NVIDIA H100 PCIe", "H100 PCIe", 350),
        ("NVIDIA H100 NVL", "H100 NVL", 400),
        ("NVIDIA H200", "H200 SXM", 700),
        ("NVIDIA H200 NVL", "H200 NVL", 600),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM", 400),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM", 400),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB", 250),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB", 300),
        ("NVIDIA L40S", "L40S", 350),
        ("NVIDIA L4", "L4", 72),
        ("NVIDIA A10", "A10", 150),
        ("Tesla T4", "T4", 70),
        ("Tesla V100-SXM2-16GB", "V100 SXM2", 300),
        ("Tesla V100-PCIE-32GB", "V100 PCIe", 250),
        ("Tesla V100S-PCIE-32GB", "V100S PCIe", 250),
    ],
)
def test_nvml_device_names_match_their_datasheet_entry(nvml_name, model, board_watts):
    spec = gpu_spec(nvml_name)
    assert (spec.model, spec.board_watts) == (model, board_watts)


def test_names_that_only_look_alike_do_not_match():
    assert gpu_spec("NVIDIA A10G") is None  # not an A10, and not an A100
    assert gpu_spec("NVIDIA GeForce RTX 4090") is None
    assert gpu_spec("NVIDIA L40") is None  # the L40 is not the L40S


def test_peak_flops_per_joule_is_dense_peak_over_board_power():
    assert peak_flops_per_joule("NVIDIA H100 80GB HBM3", "bf16") == 989.5e12 / 700
    assert peak_flops_per_joule("NVIDIA A100-SXM4-80GB", "tf32") == 156e12 / 400
    assert peak_flops_per_joule("NVIDIA L4", "fp32") == 30.3e12 / 72
    assert peak_flops_per_joule("Tesla T4", "fp16") == 65e12 / 70


def test_peak_flops_per_joule_is_none_without_a_fast_path_or_a_known_gpu():
    assert peak_flops_per_joule("Tesla T4", "bf16") is None
    assert peak_flops_per_joule("Tesla V100-SXM2-16GB", "tf32") is None
    assert peak_flops_per_joule("NVIDIA GeForce RTX 4090", "fp16") is None


def test_unknown_dtype_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as error:
        peak_flops_per_joule("NVIDIA H100 80GB HBM3", "int8")
    message = str(error.value)
    assert "\n" not in message
    assert "'int8'" in message and "fp32, tf32, bf16, fp16" in message and "fix:" in message
