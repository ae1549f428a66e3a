"""``auto`` precision on CPUs: which class of CPU it saw, why it chose, and what the run records."""
import logging

import pytest
import torch

import ltpa.train.precision as precision_module
from ltpa.train.precision import (cpu_bf16_support, cpu_supports_bf16, describe_cpu, describe_environment,
                                  resolve_precision)

RESTRICTING = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


@pytest.fixture()
def cpu(monkeypatch):
    """Pretend to be a CPU: ``cpu(hardware=..., capability=..., **environment)``."""
    for name in RESTRICTING:
        monkeypatch.delenv(name, raising=False)

    def pretend(*, hardware: bool, capability: str, **environment: str) -> None:
        monkeypatch.setattr(precision_module, "_cpu_bf16_hardware", lambda: hardware)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)

    return pretend


def test_auto_is_fp32_on_a_cpu_without_native_bf16_and_says_so(cpu, caplog):
    cpu(hardware=False, capability="AVX2")
    with caplog.at_level(logging.INFO, logger="ltpa"):
        choice = resolve_precision("auto", "auto", "cpu")
    assert choice.name == "fp32" and not cpu_supports_bf16()
    line = "precision auto -> fp32: this CPU (ATen capability AVX2) has no native bf16"
    assert line in caplog.messages
    assert choice.reason == line


def test_auto_is_bf16_on_an_unrestricted_avx512_bf16_cpu(cpu, caplog):
    cpu(hardware=True, capability="AVX512")
    with caplog.at_level(logging.INFO, logger="ltpa"):
        choice = resolve_precision("auto", "auto", "cpu")
    assert choice.name == "bf16" and cpu_supports_bf16()
    assert "precision auto -> bf16: this CPU (ATen capability AVX512) has native bf16 (AVX-512 BF16)" in caplog.messages


@pytest.mark.parametrize("capability, environment, named", [
    ("AVX2", {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
     "ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2"),
    ("DEFAULT", {"ATEN_CPU_CAPABILITY": "default"}, "ATEN_CPU_CAPABILITY=default"),
    ("AVX512", {"ONEDNN_MAX_CPU_ISA": "avx512_core"}, "ONEDNN_MAX_CPU_ISA=avx512_core"),
    ("AVX512", {"DNNL_MAX_CPU_ISA": "AVX2"}, "DNNL_MAX_CPU_ISA=AVX2"),
])
def test_restricted_kernels_count_as_a_cpu_without_native_bf16(cpu, capability, environment, named):
    # The CPU flags still report AVX-512 BF16 under ATEN_CPU_CAPABILITY=avx2: auto must not
    # believe them when the user asked to be an AVX2 (or no-SIMD) machine.
    cpu(hardware=True, capability=capability, **environment)
    support = cpu_bf16_support()
    assert support.hardware and not support.native and support.restriction == named
    choice = resolve_precision("auto", "auto", "cpu")
    assert choice.name == "fp32"
    assert choice.reason == (f"precision auto -> fp32: this CPU (ATen capability {capability}) has no native "
                             f"bf16: kernels restricted by {named} (the hardware has AVX-512 BF16)")
    assert resolve_precision("bf16", "auto", "cpu").name == "bf16"  # asked for explicitly: honoured


def test_a_onednn_cap_at_or_above_bf16_is_no_restriction(cpu):
    cpu(hardware=True, capability="AVX512", ONEDNN_MAX_CPU_ISA="AVX512_CORE_BF16")
    assert resolve_precision("auto", "auto", "cpu").name == "bf16"


def test_this_process_never_gets_bf16_from_auto_without_native_unrestricted_bf16():
    # No pretending: under the CI legs ATEN_CPU_CAPABILITY=avx2 / default this is the real check.
    support = cpu_bf16_support()
    assert support.capability == torch.backends.cpu.get_cpu_capability()
    choice = resolve_precision("auto", "auto", "cpu")
    if not support.capability.startswith("AVX512") or not support.hardware:
        assert choice.name == "fp32"
    assert (choice.name == "bf16") == support.native


def test_environment_records_the_cpu_class_and_why_auto_chose(cpu):
    cpu(hardware=True, capability="AVX2", ATEN_CPU_CAPABILITY="avx2")
    environment = describe_environment(resolve_precision("auto", "auto", "cpu"))
    assert environment["cpu_capability"] == "AVX2"
    assert environment["cpu_bf16_hardware"] is True and environment["cpu_native_bf16"] is False
    assert environment["cpu_kernel_restriction"] == "ATEN_CPU_CAPABILITY=avx2"
    assert environment["precision"] == "fp32"
    assert environment["precision_choice"].startswith("precision auto -> fp32: this CPU (ATen capability AVX2)")
    assert environment["cpu_model"] == describe_cpu()["cpu_model"] != ""
    explicit = describe_environment(resolve_precision("bf16", False, "cpu"))
    assert explicit["precision_choice"] == "precision bf16 as configured"
