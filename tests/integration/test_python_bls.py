"""Business Logic Scripting: Triton python-backend models calling other models of the same `inferd serve`.

The BLS models call the ONNX `simple` model (tests/models.py: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1,
INT32) and a Python model (`py_scale`: y = 2x, FP32). The expected outputs are computed with numpy here; integer
sums and a float32 doubling are exact, so the comparisons are exact. Errors of a BLS call (unknown model, bad
input, a single-instance model calling itself) reach the calling model as an error response, and the model's own
error reaches the client.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients import infer_tensors, simple_data
from models import SIMPLE, add_simple
from serving import ServerProcess, start_server

SCALE = "py_scale"  # a plain Triton python model: y = 2x
BLS_SYNC = "bls_sync"  # exec(): simple, then py_scale on simple's sum
BLS_ASYNC = "bls_async"  # async execute: both calls in flight at once with asyncio.gather over async_exec
BLS_ERRORS = "bls_errors"  # calls an unknown model, or simple with a bad input, and returns its own error
BLS_SELF = "bls_self"  # calls itself with a single instance: refused
PROTOCOLS = ["http", "grpc"]
WAIT_S = 90.0

SCALE_PY = """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            x = pb_utils.get_input_tensor_by_name(requests[0], "x").as_numpy()
            return [pb_utils.InferenceResponse([pb_utils.Tensor("y", x * 2)])]
"""

SCALE_CONFIG = """
    name: "py_scale"
    backend: "python"
    input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

BLS_SYNC_PY = """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                inputs = [pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                          pb_utils.get_input_tensor_by_name(request, "INPUT1")]
                simple = pb_utils.InferenceRequest(model_name="simple", inputs=inputs,
                                                   requested_output_names=["OUTPUT0", "OUTPUT1"])
                answer = simple.exec()
                if answer.has_error():
                    raise pb_utils.TritonModelException(answer.error().message())
                total = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
                scale = pb_utils.InferenceRequest(
                    model_name="py_scale", model_version=1, requested_output_names=["y"],
                    inputs=[pb_utils.Tensor("x", total.astype(np.float32).reshape(-1))])
                scaled = scale.exec()
                if scaled.has_error():
                    raise pb_utils.TritonModelException(scaled.error().message())
                y = pb_utils.get_output_tensor_by_name(scaled, "y").as_numpy().reshape(total.shape)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.get_output_tensor_by_name(answer, "OUTPUT0"),
                    pb_utils.get_output_tensor_by_name(answer, "OUTPUT1"),
                    pb_utils.Tensor("SCALED", y),
                ]))
            return responses
"""

BLS_SYNC_CONFIG = """
    name: "bls_sync"
    backend: "python"
    max_batch_size: 8
    input [
      { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
      { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
    ]
    output [
      { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
      { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] },
      { name: "SCALED" data_type: TYPE_FP32 dims: [ 16 ] }
    ]
    instance_group [ { count: 2 kind: KIND_CPU } ]
"""

BLS_ASYNC_PY = """
    import asyncio

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        async def execute(self, requests):
            request = requests[0]
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            simple = pb_utils.InferenceRequest(model_name="simple", inputs=[a, b], requested_output_names=["OUTPUT1"])
            scale = pb_utils.InferenceRequest(model_name="py_scale", requested_output_names=["y"],
                                              inputs=[pb_utils.Tensor("x", a.as_numpy().astype(np.float32).ravel())])
            difference, scaled = await asyncio.gather(simple.async_exec(), scale.async_exec())
            for answer in (difference, scaled):
                if answer.has_error():
                    return [pb_utils.InferenceResponse(error=answer.error())]
            return [pb_utils.InferenceResponse([
                pb_utils.Tensor("DIFF", pb_utils.get_output_tensor_by_name(difference, "OUTPUT1").as_numpy()),
                pb_utils.Tensor("SCALED", pb_utils.get_output_tensor_by_name(scaled, "y").as_numpy().reshape(1, 16)),
            ])]
"""

BLS_ASYNC_CONFIG = """
    name: "bls_async"
    backend: "python"
    input [
      { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1, 16 ] },
      { name: "INPUT1" data_type: TYPE_INT32 dims: [ 1, 16 ] }
    ]
    output [
      { name: "DIFF" data_type: TYPE_INT32 dims: [ 1, 16 ] },
      { name: "SCALED" data_type: TYPE_FP32 dims: [ 1, 16 ] }
    ]
"""

BLS_ERRORS_PY = """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            which = int(pb_utils.get_input_tensor_by_name(requests[0], "WHICH").as_numpy()[0])
            if which == 0:
                call = pb_utils.InferenceRequest(model_name="no_such_model", requested_output_names=["y"],
                                                 inputs=[pb_utils.Tensor("x", np.zeros(4, np.float32))])
            else:  # simple wants INPUT0 and INPUT1, INT32 [batch, 16]
                call = pb_utils.InferenceRequest(model_name="simple", requested_output_names=["OUTPUT0"],
                                                 inputs=[pb_utils.Tensor("INPUT0", np.zeros((1, 3), np.float32))])
            answer = call.exec()
            if not answer.has_error():
                return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([0], np.int32))])]
            error = pb_utils.TritonError("downstream failed: " + answer.error().message())
            return [pb_utils.InferenceResponse(error=error)]
"""

WHICH_CONFIG = """
    name: "{name}"
    backend: "python"
    input [ {{ name: "WHICH" data_type: TYPE_INT32 dims: [ 1 ] }} ]
    output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
"""

BLS_SELF_PY = """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            call = pb_utils.InferenceRequest(model_name="bls_self", requested_output_names=["OUT"],
                                             inputs=[pb_utils.Tensor("WHICH", np.array([1], np.int32))])
            answer = call.exec()
            if answer.has_error():
                return [pb_utils.InferenceResponse(error=pb_utils.TritonError(answer.error().message()))]
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], np.int32))])]
"""


def _write(repo: Path, name: str, model_py: str, config: str) -> None:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent(model_py))
    (repo / name / "config.pbtxt").write_text(textwrap.dedent(config))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("bls") / "models"
    repo.mkdir()
    add_simple(repo)
    _write(repo, SCALE, SCALE_PY, SCALE_CONFIG)
    _write(repo, BLS_SYNC, BLS_SYNC_PY, BLS_SYNC_CONFIG)
    _write(repo, BLS_ASYNC, BLS_ASYNC_PY, BLS_ASYNC_CONFIG)
    _write(repo, BLS_ERRORS, BLS_ERRORS_PY, WHICH_CONFIG.format(name=BLS_ERRORS))
    _write(repo, BLS_SELF, BLS_SELF_PY, WHICH_CONFIG.format(name=BLS_SELF))
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-bls.log", "--strict-readiness=false")
    names = (SIMPLE, SCALE, BLS_SYNC, BLS_ASYNC, BLS_ERRORS, BLS_SELF)
    deadline = time.monotonic() + WAIT_S
    while not all(_ready(process, name) for name in names):
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.2)
    yield process
    process.stop()


def _ready(server: ServerProcess, model: str) -> bool:
    return httpx.get(f"{server.base_url}/v2/models/{model}/ready", timeout=30).status_code == 200


def _success_count(server: ServerProcess, model: str) -> int:
    stats = httpx.get(f"{server.base_url}/v2/models/{model}/stats", timeout=30).json()
    return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])


def _assert_serving(server: ServerProcess) -> None:
    """The server is ready and answers the called model directly."""
    assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=30).status_code == 200
    a, b = simple_data(1, seed=99)
    got = infer_tensors("http", server, SIMPLE, {"INPUT0": (a, "INT32"), "INPUT1": (b, "INT32")}, ["OUTPUT0"])
    np.testing.assert_array_equal(got["OUTPUT0"], a + b)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exec_calls_an_onnx_model_and_a_python_model(protocol: str, server: ServerProcess) -> None:
    before = _success_count(server, SIMPLE)
    a, b = simple_data(3, seed=1)
    got = infer_tensors(protocol, server, BLS_SYNC, {"INPUT0": (a, "INT32"), "INPUT1": (b, "INT32")},
                        ["OUTPUT0", "OUTPUT1", "SCALED"])
    np.testing.assert_array_equal(got["OUTPUT0"], a + b)
    np.testing.assert_array_equal(got["OUTPUT1"], a - b)
    np.testing.assert_array_equal(got["SCALED"], (a + b).astype(np.float32) * np.float32(2))
    assert got["SCALED"].dtype == np.float32
    # The BLS call went through the core: the called model's statistics count it.
    assert _success_count(server, SIMPLE) == before + 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_exec_runs_calls_together(protocol: str, server: ServerProcess) -> None:
    a, b = simple_data(1, seed=2)
    got = infer_tensors(protocol, server, BLS_ASYNC, {"INPUT0": (a, "INT32"), "INPUT1": (b, "INT32")},
                        ["DIFF", "SCALED"])
    np.testing.assert_array_equal(got["DIFF"], a - b)
    np.testing.assert_array_equal(got["SCALED"], a.astype(np.float32) * np.float32(2))


def _error_message(protocol: str, server: ServerProcess, model: str, which: int) -> str:
    if protocol == "http":
        response = httpx.post(f"{server.base_url}/v2/models/{model}/infer", timeout=60, json={
            "inputs": [{"name": "WHICH", "shape": [1], "datatype": "INT32", "data": [which]}]})
        assert response.status_code == 400, response.text
        return str(response.json()["error"])
    with pytest.raises(InferenceServerException) as caught:
        infer_tensors(protocol, server, model, {"WHICH": (np.array([which], np.int32), "INT32")}, ["OUT"])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    return str(caught.value.message())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bls_errors_come_back_as_error_responses(protocol: str, server: ServerProcess) -> None:
    unknown = _error_message(protocol, server, BLS_ERRORS, 0)
    assert "downstream failed" in unknown and "no_such_model" in unknown, unknown
    bad_input = _error_message(protocol, server, BLS_ERRORS, 1)
    assert "downstream failed" in bad_input and "simple" in bad_input, bad_input
    _assert_serving(server)


def test_single_instance_model_calling_itself_is_refused(server: ServerProcess) -> None:
    message = _error_message("http", server, BLS_SELF, 0)
    assert "wait for itself" in message, message
    _assert_serving(server)


def test_eight_concurrent_bls_requests(server: ServerProcess) -> None:
    results: dict[int, dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        a, b = simple_data(1 + i % 4, seed=100 + i)
        try:
            got = infer_tensors("http" if i % 2 else "grpc", server, BLS_SYNC,
                                {"INPUT0": (a, "INT32"), "INPUT1": (b, "INT32")}, ["OUTPUT0", "SCALED"])
            np.testing.assert_array_equal(got["OUTPUT0"], a + b)
            np.testing.assert_array_equal(got["SCALED"], (a + b).astype(np.float32) * np.float32(2))
            results[i] = got
        except BaseException as exc:  # reported below, from the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    _assert_serving(server)


def test_bls_outside_a_server_is_a_clear_error() -> None:
    """In this test process no server runs the model: exec() answers with an error response, never hangs."""
    import triton_python_backend_utils as pb_utils

    request = pb_utils.InferenceRequest(model_name=SIMPLE, inputs=[pb_utils.Tensor("x", np.zeros(1))],
                                        requested_output_names=[])
    response: Any = request.exec()
    assert response.has_error()
    assert "instance process" in response.error().message()
