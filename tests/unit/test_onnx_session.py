"""Choosing the execution provider: auto takes CUDA when it loads, a demand never falls back."""

from __future__ import annotations

import logging

import pytest

from daemon.engines.onnx_session import CPU, CUDA, Hardware, check_providers, providers_for
from daemon.errors import EngineUnavailableError

CPU_ONLY = ["AzureExecutionProvider", CPU]
WITH_CUDA = ["TensorrtExecutionProvider", CUDA, CPU]


def test_auto_takes_cuda_when_installed_else_the_cpu() -> None:
    assert providers_for("auto", WITH_CUDA) == [CUDA, CPU]
    assert providers_for("auto", CPU_ONLY) == [CPU]


def test_cpu_is_the_cpu_even_with_cuda_installed() -> None:
    assert providers_for("cpu", WITH_CUDA) == [CPU]


def test_cuda_demanded_and_not_installed_says_what_to_install() -> None:
    with pytest.raises(EngineUnavailableError, match="pip install onnxruntime-gpu"):
        providers_for("cuda", CPU_ONLY)
    assert providers_for("cuda", WITH_CUDA) == [CUDA]  # no CPU to fall back on


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown device"):
        providers_for("tpu", CPU_ONLY)


def test_cuda_demanded_but_not_loaded_fails_instead_of_running_on_the_cpu() -> None:
    with pytest.raises(EngineUnavailableError, match="CUDA provider did not load"):
        check_providers("cuda", [CUDA], [CPU])
    assert check_providers("cuda", [CUDA], [CUDA, CPU]) == CUDA


def test_auto_says_when_cuda_is_installed_but_did_not_load(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="daemon.engines.onnx_session"):
        assert check_providers("auto", [CUDA, CPU], [CPU]) == CPU
    assert [r.event for r in caplog.records] == ["engine.device_unavailable"]  # type: ignore[attr-defined]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daemon.engines.onnx_session"):
        assert check_providers("auto", [CPU], [CPU]) == CPU
        assert check_providers("auto", [CUDA, CPU], [CUDA, CPU]) == CUDA
    assert not caplog.records


def test_hardware_line_names_runtime_provider_precision_and_threads() -> None:
    hardware = Hardware("onnxruntime 1.25.1", CPU, "cpu", "fp32", 1, 2)
    assert hardware.line() == (
        "onnxruntime 1.25.1, CPUExecutionProvider (cpu), fp32, 2 run(s) at once x 1 thread(s)"
    )
