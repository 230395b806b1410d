"""ONNX Runtime's execution providers from Triton's `optimization { execution_accelerators }`, as pure logic."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from inferd.backends.onnxruntime import _providers, _tensorrt_options
from inferd.config import ConfigError, ModelConfig


def _config(accelerators: str) -> ModelConfig:
    return text_format.Parse(f"optimization {{ execution_accelerators {{ {accelerators} }} }}", ModelConfig())


def test_no_accelerators_keep_the_device_defaults() -> None:
    assert _providers(ModelConfig(), "cpu") == (["CPUExecutionProvider"], [])
    providers, named = _providers(ModelConfig(), "cuda:1")
    assert providers == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"] and named == []


def test_the_cpu_accelerator_by_triton_name_or_provider_name() -> None:
    for name in ("cpu", "CPU", "CPUExecutionProvider"):
        providers, named = _providers(_config(f'cpu_execution_accelerator [ {{ name: "{name}" }} ]'), "cpu")
        assert providers == [("CPUExecutionProvider", {})] and named == ["CPUExecutionProvider"]


def test_gpu_accelerators_are_for_gpu_instances_only() -> None:
    config = _config('gpu_execution_accelerator [ { name: "tensorrt" } ]')
    assert _providers(config, "cpu") == (["CPUExecutionProvider"], [])


def test_missing_and_unknown_accelerators_say_what_there_is() -> None:
    with pytest.raises(ConfigError, match=r"execution accelerator 'openvino' needs ONNX Runtime's "
                                          r"OpenVINOExecutionProvider.*available: .*CPUExecutionProvider"):
        _providers(_config('cpu_execution_accelerator [ { name: "openvino" } ]'), "cpu")
    with pytest.raises(ConfigError, match=r"unknown execution accelerator 'warp' for onnxruntime \(known: cpu, "):
        _providers(_config('cpu_execution_accelerator [ { name: "warp" } ]'), "cpu")


def test_tensorrt_parameters_become_provider_options() -> None:
    assert _tensorrt_options({"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824",
                              "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/tmp/engines"}) == {
        "trt_fp16_enable": "True", "trt_max_workspace_size": "1073741824", "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/engines"}
    assert _tensorrt_options({"precision_mode": "int8"}) == {"trt_int8_enable": "True"}
    assert _tensorrt_options({}) == {}
    with pytest.raises(ConfigError, match="precision_mode must be FP32, FP16 or INT8, got 'FP8'"):
        _tensorrt_options({"precision_mode": "FP8"})
