"""Request limits (`--max-tensor-elements`, `--max-inputs`): refused with INVALID_ARGUMENT from the declared shape,
before any tensor data is read, over HTTP (JSON and binary) and gRPC; the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import inferd
from clients import make_input, simple_data, simple_inputs
from models import SIMPLE, add_simple, identity_config, identity_model, identity_name, write_model
from serving import ServerProcess, start_server

MAX_ELEMENTS = 100
MAX_INPUTS = 2
IDENTITY = identity_name("FP32")


def _repository(root: Path) -> Path:
    repo = root / "models"
    add_simple(repo)
    write_model(repo, IDENTITY, identity_model("FP32"), identity_config("FP32"))
    return repo


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = _repository(tmp_path_factory.mktemp("limits"))
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-limits.log",
                           "--max-tensor-elements", str(MAX_ELEMENTS), "--max-inputs", str(MAX_INPUTS))
    yield process
    process.stop()


def _still_serving(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    a, b = simple_data(2, seed=5)
    np.testing.assert_array_equal(client.infer(SIMPLE, simple_inputs(grpcclient, a, b)).as_numpy("OUTPUT0"), a + b)
    client.close()
    x = np.ones((1, MAX_ELEMENTS), dtype=np.float32)  # exactly the limit is fine
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, MAX_ELEMENTS], "data": x.ravel().tolist()}]}
    response = httpx.post(f"{server.base_url}/v2/models/{IDENTITY}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text


def _error(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    for word in words:
        assert word in message, message


def test_too_many_elements_over_json(limited: ServerProcess) -> None:
    data = [0.5] * (MAX_ELEMENTS + 1)
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, MAX_ELEMENTS + 1], "data": data}]}
    response = httpx.post(f"{limited.base_url}/v2/models/{IDENTITY}/infer", json=body, timeout=30)
    _error(response, "INPUT0", "--max-tensor-elements", str(MAX_ELEMENTS))
    _still_serving(limited)


def test_the_declared_shape_is_checked_before_the_data(limited: ServerProcess) -> None:
    """A huge declared shape with a little data is refused for its shape, not for its data."""
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [8, 10**12], "data": [1.0]}]}
    response = httpx.post(f"{limited.base_url}/v2/models/{IDENTITY}/infer", json=body, timeout=30)
    _error(response, "--max-tensor-elements")
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2**40],
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    response = httpx.post(f"{limited.base_url}/v2/models/{IDENTITY}/infer", content=header + b"\x00" * 8,
                          headers={"Inference-Header-Content-Length": str(len(header))}, timeout=30)
    _error(response, "--max-tensor-elements")
    _still_serving(limited)


def test_too_many_elements_over_grpc(limited: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(limited.grpc_url)
    x = np.zeros((1, MAX_ELEMENTS + 1), dtype=np.float32)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(IDENTITY, [make_input(grpcclient, "INPUT0", x, "FP32")])
    assert str(caught.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "--max-tensor-elements" in (caught.value.message() or "")
    client.close()
    with grpc.insecure_channel(limited.grpc_url) as channel:  # a declared shape with no data at all
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name=IDENTITY)
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[4, 2**50])
        request.raw_input_contents.append(b"")
        with pytest.raises(grpc.RpcError) as rpc_error:
            stub.ModelInfer(request, timeout=30)
        assert rpc_error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max-tensor-elements" in (rpc_error.value.details() or "")
    _still_serving(limited)


def test_too_many_inputs(limited: ServerProcess) -> None:
    inputs = [{"name": f"INPUT{i}", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16} for i in range(3)]
    response = httpx.post(f"{limited.base_url}/v2/models/{SIMPLE}/infer", json={"inputs": inputs}, timeout=30)
    _error(response, "3 inputs", "--max-inputs")
    client = grpcclient.InferenceServerClient(limited.grpc_url)
    a, b = simple_data(1)
    tensors = [*simple_inputs(grpcclient, a, b), make_input(grpcclient, "EXTRA", a, "INT32")]
    with pytest.raises(InferenceServerException) as caught:
        client.infer(SIMPLE, tensors)
    assert str(caught.value.status()) == "StatusCode.INVALID_ARGUMENT"
    assert "--max-inputs" in (caught.value.message() or "")
    client.close()
    _still_serving(limited)


def test_the_sdk_has_the_same_limits(tmp_path: Path) -> None:
    with inferd.Server(_repository(tmp_path), max_tensor_elements=MAX_ELEMENTS, max_inputs=MAX_INPUTS) as server:
        with pytest.raises(inferd.InferError) as caught:
            server.infer(IDENTITY, {"INPUT0": np.zeros((2, MAX_ELEMENTS), np.float32)})
        assert caught.value.kind == inferd.ErrorKind.INVALID_ARGUMENT
        assert "--max-tensor-elements" in caught.value.message
        with pytest.raises(inferd.InferError, match="--max-inputs"):
            server.infer(SIMPLE, {"INPUT0": np.zeros((1, 16), np.int32), "INPUT1": np.zeros((1, 16), np.int32),
                                  "INPUT2": np.zeros((1, 16), np.int32)})
        out = server.infer(SIMPLE, {"INPUT0": np.ones((1, 16), np.int32), "INPUT1": np.ones((1, 16), np.int32)})
        np.testing.assert_array_equal(out.outputs["OUTPUT0"], np.full((1, 16), 2, np.int32))


@pytest.mark.parametrize("kwargs", [{"max_tensor_elements": 0}, {"max_inputs": 0}])
def test_limits_must_be_positive(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        inferd.Server(tmp_path, start=False, **kwargs)


def test_cli_rejects_a_bad_limit(tmp_path: Path, server_log: Path) -> None:
    repo = _repository(tmp_path)
    with pytest.raises(RuntimeError, match="max_inputs must be at least 1"):
        start_server(repo, server_log, "--max-inputs", "0")
