"""Triton's `optimization` block for ONNX Runtime models, on a real server.

A model whose config names an execution accelerator this onnxruntime lacks (OpenVINO: not in the CPU wheel) is
UNAVAILABLE, and the repository index says which accelerator and which providers there are; an unknown name says
so too. Models with the CPU accelerator, each graph optimization level, thread / arena / shrinkage parameters, or a
GPU accelerator on a CPU instance (GPU accelerators are for GPU instances, as in Triton) serve correct answers. A
TorchScript model with Triton's pytorch parameters (threads, DISABLE_OPTIMIZED_EXECUTION, the JIT switches) serves;
a flag that is not a boolean is a load error saying so.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from clients import simple_data, simple_inputs, unavailable_reason
from models import SIMPLE_CONFIG, simple_model, write_model
from serving import ServerProcess, start_server


def _config(name: str, optimization: str = "", parameters: str = "") -> str:
    body = SIMPLE_CONFIG.replace('name: "simple"', f'name: "{name}"')
    return body + (f"optimization {{ {optimization} }}\n" if optimization else "") + parameters


_PARAMETERS = """
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "inter_op_thread_count" value { string_value: "1" } }
parameters { key: "enable_mem_arena" value { string_value: "0" } }
parameters { key: "enable_mem_pattern" value { string_value: "0" } }
"""
_SHRINKAGE = 'parameters { key: "memory.enable_memory_arena_shrinkage" value { string_value: "cpu:0" } }\n'

SERVING = {
    "cpu_accelerator": _config("cpu_accelerator",
                               'execution_accelerators { cpu_execution_accelerator [ { name: "cpu" } ] }'),
    "graph_basic": _config("graph_basic", "graph { level: -1 }"),
    "graph_extended": _config("graph_extended", "graph { level: 1 }"),
    "graph_all": _config("graph_all", "graph { level: 0 }"),
    "threads_and_arena": _config("threads_and_arena", "", _PARAMETERS),
    "arena_shrinkage": _config("arena_shrinkage", "", _SHRINKAGE),
    # A GPU accelerator is for GPU instances: this model's instance is on the CPU.
    "tensorrt_on_cpu": _config("tensorrt_on_cpu", 'execution_accelerators { gpu_execution_accelerator [ { name: '
                               '"tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] }')
    + "instance_group [ { kind: KIND_CPU } ]\n",
}
MISSING = _config("openvino_missing", 'execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] }')
# Shrinking the CPU arena with the arena turned off would fail every request: the load fails instead.
NO_ARENA = _config("no_arena_to_shrink", "", _PARAMETERS + _SHRINKAGE)
UNKNOWN = _config("warp_drive", 'execution_accelerators { cpu_execution_accelerator [ { name: "warp_drive" } ] }')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("accelerators") / "models"
    repo.mkdir(parents=True)
    for name, config in {**SERVING, "openvino_missing": MISSING, "warp_drive": UNKNOWN,
                         "no_arena_to_shrink": NO_ARENA}.items():
        write_model(repo, name, simple_model(), config)
    process = start_server(repo, Path(tmp_path_factory.mktemp("logs")) / "inferd-accelerators.log",
                           "--strict-readiness=false")
    yield process
    process.stop()


def test_missing_accelerator_is_unavailable_with_the_reason(server: ServerProcess) -> None:
    assert "OpenVINOExecutionProvider" not in ort.get_available_providers()  # what this test relies on
    reason = unavailable_reason(server.base_url, "openvino_missing")
    assert "execution accelerator 'openvino'" in reason, reason
    assert "OpenVINOExecutionProvider" in reason, reason
    assert "available: " in reason and "CPUExecutionProvider" in reason, reason
    assert "\n" not in reason


def test_unknown_accelerator_is_unavailable_with_the_known_names(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, "warp_drive")
    assert "unknown execution accelerator 'warp_drive'" in reason, reason
    assert "openvino" in reason and "tensorrt" in reason, reason


def test_shrinking_an_arena_that_is_off_is_a_load_error(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, "no_arena_to_shrink")
    assert "memory.enable_memory_arena_shrinkage" in reason and "enable_mem_arena is 0" in reason, reason


@pytest.mark.parametrize("name", sorted(SERVING))
def test_optimized_models_serve(server: ServerProcess, name: str) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_model_ready(name)
        a, b = simple_data(3, seed=7)
        result = client.infer(name, simple_inputs(httpclient, a, b))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()


# ---- PyTorch: Triton's pytorch backend parameters ----

_TORCH_CONFIG = """
name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ {{ name: "INPUT__0" data_type: TYPE_INT32 dims: [ 16 ] }},
         {{ name: "INPUT__1" data_type: TYPE_INT32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 16 ] }},
         {{ name: "OUTPUT__1" data_type: TYPE_INT32 dims: [ 16 ] }} ]
"""
_TORCH_PARAMETERS = {
    "INTRA_OP_THREAD_COUNT": "1", "INTER_OP_THREAD_COUNT": "1", "DISABLE_OPTIMIZED_EXECUTION": "true",
    "ENABLE_JIT_PROFILING": "false", "ENABLE_JIT_EXECUTOR": "false", "DISABLE_CUDNN": "true",
    "INFERENCE_MODE": "false",
}


def _torch_config(name: str, parameters: dict[str, str]) -> str:
    return _TORCH_CONFIG.format(name=name) + "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in parameters.items())


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    torch = pytest.importorskip("torch")

    class AddSub(torch.nn.Module):  # type: ignore[misc, name-defined]
        # Unannotated: TorchScript takes the arguments as tensors (and reads `# type:` comments, so none here).
        def forward(self, a, b):
            return a + b, a - b

    repo = tmp_path_factory.mktemp("torch-options") / "models"
    for name, parameters in (("torch_options", _TORCH_PARAMETERS),
                             ("torch_bad_flag", {"DISABLE_OPTIMIZED_EXECUTION": "maybe"})):
        folder = repo / name / "1"
        folder.mkdir(parents=True)
        with warnings.catch_warnings():  # TorchScript is deprecated, and Triton's pytorch_libtorch models are it
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(AddSub()), str(folder / "model.pt"))
        (repo / name / "config.pbtxt").write_text(_torch_config(name, parameters))
    process = start_server(repo, Path(tmp_path_factory.mktemp("logs")) / "inferd-torch-options.log",
                           "--strict-readiness=false")
    yield process
    process.stop()


def test_pytorch_thread_and_jit_parameters_serve(torch_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(torch_server.http_url)
    try:
        a, b = simple_data(2, seed=8)
        inputs = [httpclient.InferInput(n, list(a.shape), "INT32") for n in ("INPUT__0", "INPUT__1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("torch_options", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), a - b)
    finally:
        client.close()


def test_pytorch_flag_that_is_not_a_boolean_is_a_load_error(torch_server: ServerProcess) -> None:
    reason = unavailable_reason(torch_server.base_url, "torch_bad_flag")
    assert "parameter 'DISABLE_OPTIMIZED_EXECUTION' must be true or false, got 'maybe'" in reason, reason
