"""Triton's V2 gRPC API as `tritonclient.grpc` and `tritonclient.grpc.aio` use it, against the live server."""

from __future__ import annotations

import queue
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from clients import SyncAsAsync, make_input, simple_data, simple_inputs
from models import (
    AUTO,
    BROKEN,
    BROKEN_MODELS,
    DATATYPES,
    NOBATCH,
    SIMPLE,
    SIMPLE_STRING,
    VERSIONED,
    identity_name,
    sample,
)
from serving import ServerProcess


# Created on the loop of the test that uses it (aiohttp and grpc.aio bind to the loop they start on).
@pytest_asyncio.fixture(params=["grpc", "grpc.aio"], loop_scope="function")
async def client(request: pytest.FixtureRequest, server: ServerProcess) -> AsyncIterator[Any]:
    """The blocking client (behind awaitable methods) and the asyncio client, each in turn."""
    if request.param == "grpc":
        blocking = grpcclient.InferenceServerClient(server.grpc_url)
        yield SyncAsAsync(blocking)
        blocking.close()
    else:
        aio = aiogrpcclient.InferenceServerClient(server.grpc_url)
        yield aio
        await aio.close()


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_url) as chan:
        yield chan


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# ---- health and metadata ----

async def test_server_live_and_ready(client: Any) -> None:
    assert await client.is_server_live() is True
    assert await client.is_server_ready() is True


async def test_server_metadata(client: Any) -> None:
    metadata = await client.get_server_metadata()
    assert metadata.name == "inferd"
    assert metadata.version
    for extension in ("model_repository", "model_configuration", "binary_tensor_data"):
        assert extension in metadata.extensions
    as_json = await client.get_server_metadata(as_json=True)
    assert as_json["name"] == "inferd"


async def test_model_metadata(client: Any) -> None:
    metadata = await client.get_model_metadata(SIMPLE)
    assert metadata.name == SIMPLE
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("OUTPUT0", "INT32", [-1, 16]), ("OUTPUT1", "INT32", [-1, 16])]
    nobatch = await client.get_model_metadata(NOBATCH)
    assert [list(t.shape) for t in nobatch.inputs] == [[2, 3]]


async def test_model_config(client: Any) -> None:
    config = (await client.get_model_config(SIMPLE)).config
    assert config.name == SIMPLE
    assert config.max_batch_size == 8
    assert config.platform == "onnxruntime_onnx"
    assert [(t.name, list(t.dims)) for t in config.input] == [("INPUT0", [16]), ("INPUT1", [16])]
    assert config.input[0].data_type == grpcclient.model_config_pb2.TYPE_INT32
    auto = (await client.get_model_config(AUTO)).config
    assert auto.max_batch_size == 4
    assert [(t.name, list(t.dims)) for t in auto.input] == [("INPUT0", [4])]
    assert auto.input[0].data_type == grpcclient.model_config_pb2.TYPE_FP32
    as_json = await client.get_model_config(SIMPLE, as_json=True)
    assert as_json["config"]["max_batch_size"] == 8


async def test_model_ready(client: Any) -> None:
    assert await client.is_model_ready(SIMPLE) is True
    assert await client.is_model_ready(VERSIONED, "1") is True
    assert await client.is_model_ready(VERSIONED, "2") is True
    assert await client.is_model_ready(VERSIONED, "3") is False
    assert await client.is_model_ready("no_such_model") is False
    for name in BROKEN_MODELS:
        assert await client.is_model_ready(name) is False, name


async def test_repository_index(client: Any) -> None:
    index = await client.get_model_repository_index()
    rows = {(m.name, m.version): m for m in index.models}
    assert rows[(SIMPLE, "1")].state == "READY"
    assert rows[(VERSIONED, "2")].state == "READY"
    broken = [m for m in index.models if m.name == BROKEN]
    assert broken and all(m.state == "UNAVAILABLE" and m.reason for m in broken)


# ---- inference ----

@pytest.mark.parametrize("batch", range(1, 9))
async def test_simple_every_batch_size(client: Any, batch: int) -> None:
    a, b = simple_data(batch, seed=100 + batch)
    result = await client.infer(SIMPLE, simple_inputs(grpcclient, a, b))
    response = result.get_response()
    assert response.model_name == SIMPLE
    assert response.model_version == "1"
    assert {o.name: list(o.shape) for o in response.outputs} == {"OUTPUT0": [batch, 16], "OUTPUT1": [batch, 16]}
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("datatype", list(DATATYPES))
async def test_every_datatype_round_trip(client: Any, datatype: str) -> None:
    array = sample(datatype, (4, 3), seed=7)
    result = await client.infer(identity_name(datatype), [make_input(grpcclient, "INPUT0", array, datatype)])
    out = result.get_response().outputs[0]
    assert out.datatype == datatype
    assert list(out.shape) == [4, 3]
    got = result.as_numpy("OUTPUT0")
    if datatype == "BYTES":
        assert got.tolist() == array.tolist()
    else:
        assert got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)


async def test_bytes_model(client: Any) -> None:
    words = np.array([[f"w{i}-ü".encode() for i in range(16)], [b""] * 16], dtype=np.object_)
    result = await client.infer(SIMPLE_STRING, [make_input(grpcclient, "INPUT0", words, "BYTES")])
    assert result.as_numpy("OUTPUT0").tolist() == words.tolist()


async def test_requested_output_subset(client: Any) -> None:
    a, b = simple_data(3, seed=12)
    result = await client.infer(SIMPLE, simple_inputs(grpcclient, a, b),
                                outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


async def test_request_id_is_echoed(client: Any) -> None:
    a, b = simple_data(1)
    result = await client.infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id="grpc-id-9")
    assert result.get_response().id == "grpc-id-9"


async def test_model_versions(client: Any) -> None:
    x = np.array([[1, 2, 3]], dtype=np.int32)
    for version, expected in (("1", x + 1), ("2", x + 2), ("", x + 2)):
        result = await client.infer(VERSIONED, [make_input(grpcclient, "INPUT0", x, "INT32")], model_version=version)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected)
        assert result.get_response().model_version == (version or "2")


async def test_tensor_larger_than_4mb(client: Any) -> None:
    """gRPC's default message limit is 4 MB; tensors are bigger than that."""
    array = np.random.default_rng(0).standard_normal((8, 200_000)).astype(np.float32)
    assert array.nbytes > 4 * 1024 * 1024
    result = await client.infer(identity_name("FP32"), [make_input(grpcclient, "INPUT0", array, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), array)


async def test_nan_and_infinity_pass_through(client: Any) -> None:
    array = np.array([[np.nan, np.inf, -np.inf, 0.5]], dtype=np.float32)
    result = await client.infer(identity_name("FP32"), [make_input(grpcclient, "INPUT0", array, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), array)


# ---- errors ----

async def test_unknown_model_is_not_found(client: Any) -> None:
    a, b = simple_data(1)
    with pytest.raises(InferenceServerException) as exc:
        await client.infer("no_such_model", simple_inputs(grpcclient, a, b))
    assert _status(exc) == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'no_such_model' is not found" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        await client.get_model_metadata("no_such_model")
    assert _status(exc) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as exc:
        await client.get_model_config("no_such_model")
    assert _status(exc) == "StatusCode.NOT_FOUND"


async def test_unknown_version_is_not_found(client: Any) -> None:
    a, b = simple_data(1)
    with pytest.raises(InferenceServerException) as exc:
        await client.infer(SIMPLE, simple_inputs(grpcclient, a, b), model_version="5")
    assert _status(exc) == "StatusCode.NOT_FOUND"


def _bad_simple_inputs(case: str) -> list[Any]:
    a, b = simple_data(2)
    if case == "shape":
        return simple_inputs(grpcclient, a[:, :15], b[:, :15])
    if case == "datatype":
        return [make_input(grpcclient, "INPUT0", a, "INT32"),
                make_input(grpcclient, "INPUT1", b.astype(np.float32), "FP32")]
    if case == "batch":
        a, b = simple_data(9)
        return simple_inputs(grpcclient, a, b)
    if case == "missing":
        return simple_inputs(grpcclient, a, b)[:1]
    if case == "extra":
        return [*simple_inputs(grpcclient, a, b), make_input(grpcclient, "INPUT2", a, "INT32")]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["shape", "datatype", "batch", "missing", "extra"])
async def test_invalid_argument(client: Any, case: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        await client.infer(SIMPLE, _bad_simple_inputs(case))
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    assert exc.value.message()
    a, b = simple_data(2, seed=3)
    result = await client.infer(SIMPLE, simple_inputs(grpcclient, a, b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


async def test_unknown_output_is_invalid(client: Any) -> None:
    a, b = simple_data(1)
    with pytest.raises(InferenceServerException) as exc:
        await client.infer(SIMPLE, simple_inputs(grpcclient, a, b), outputs=[grpcclient.InferRequestedOutput("NOPE")])
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"


# ---- typed contents (what clients other than tritonclient send) ----

def _typed_request(datatype: str, field: str, values: list[Any]) -> Any:
    request = service_pb2.ModelInferRequest(model_name=identity_name(datatype))
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=[1, len(values)])
    getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize("datatype, field, values", [
    ("INT32", "int_contents", [-5, 0, 2**31 - 1]),
    ("INT8", "int_contents", [-128, 127]),
    ("UINT16", "uint_contents", [0, 65535]),
    ("INT64", "int64_contents", [-(2**63), 2**63 - 1]),
    ("UINT64", "uint64_contents", [0, 2**64 - 1]),
    ("FP32", "fp32_contents", [1.5, -0.25]),
    ("FP64", "fp64_contents", [1e300, -2.5]),
    ("BOOL", "bool_contents", [True, False, True]),
    ("BYTES", "bytes_contents", [b"abc", b"", "é".encode()]),
])
def test_typed_contents(channel: grpc.Channel, datatype: str, field: str, values: list[Any]) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    response = stub.ModelInfer(_typed_request(datatype, field, values), timeout=30)
    dtype = DATATYPES[datatype][2]
    raw = response.raw_output_contents[0]
    if datatype == "BYTES":
        from inferd.frontends.tensors import split_bytes

        assert split_bytes("OUTPUT0", raw, len(values)) == values
    else:
        assert np.frombuffer(raw, dtype=dtype).tolist() == values
    assert list(response.outputs[0].shape) == [1, len(values)]


def test_fp16_in_typed_contents_is_invalid(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = _typed_request("FP16", "fp32_contents", [1.0])
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_contents_of_the_wrong_field_are_invalid(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(_typed_request("INT32", "fp32_contents", [1.0]), timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_raw_contents_of_the_wrong_size_are_invalid(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name=identity_name("FP32"))
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(b"\x00" * 15)
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(request, timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- streaming ----

def _stream_requests() -> list[tuple[str, list[Any], np.ndarray | None]]:
    """(request id, inputs, expected OUTPUT0 or None for a request that must fail), the bad one in the middle."""
    requests: list[tuple[str, list[Any], np.ndarray | None]] = []
    for i in range(5):
        a, b = simple_data(1 + i % 3, seed=200 + i)
        requests.append((f"req-{i}", simple_inputs(grpcclient, a, b), a + b))
    bad_a, bad_b = simple_data(1)
    requests.insert(2, ("req-bad", simple_inputs(grpcclient, bad_a[:, :3], bad_b[:, :3]), None))
    return requests


def _check_stream(requests: list[tuple[str, list[Any], np.ndarray | None]],
                  answers: list[tuple[Any, Any]]) -> None:
    assert len(answers) == len(requests)
    expected = {rid: out for rid, _, out in requests}
    errors = [error for result, error in answers if error is not None]
    assert len(errors) == 1
    assert "INPUT0" in errors[0].message() or "INPUT1" in errors[0].message()
    seen = set()
    for result, error in answers:
        if error is not None:
            continue
        rid = result.get_response().id
        seen.add(rid)
        out = expected[rid]
        assert out is not None, f"{rid} should have failed"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), out)
    assert seen == {rid for rid, _, out in requests if out is not None}


def test_stream_with_an_error_in_the_middle(server: ServerProcess) -> None:
    requests = _stream_requests()
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for rid, inputs, _ in requests:
            client.async_stream_infer(SIMPLE, inputs, request_id=rid)
        received = [answers.get(timeout=30) for _ in requests]
        # the stream is still open after the error: one more request on it
        a, b = simple_data(2, seed=300)
        client.async_stream_infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id="after")
        result, error = answers.get(timeout=30)
        assert error is None, error
        assert result.get_response().id == "after"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        client.stop_stream()
    finally:
        client.close()
    _check_stream(requests, received)


async def test_aio_stream_with_an_error_in_the_middle(server: ServerProcess) -> None:
    requests = _stream_requests()

    async def produce() -> AsyncIterator[dict[str, Any]]:
        for rid, inputs, _ in requests:
            yield {"model_name": SIMPLE, "inputs": inputs, "request_id": rid}

    client = aiogrpcclient.InferenceServerClient(server.grpc_url)
    try:
        received = []
        async for answer in client.stream_infer(produce()):
            received.append(answer)
            if len(received) == len(requests):
                break
    finally:
        await client.close()
    _check_stream(requests, received)


# ---- gRPC health checking ----

@pytest.mark.parametrize("service, status", [
    ("", health_pb2.HealthCheckResponse.SERVING),
    ("inference.GRPCInferenceService", health_pb2.HealthCheckResponse.SERVING),
    (SIMPLE, health_pb2.HealthCheckResponse.SERVING),
    (BROKEN, health_pb2.HealthCheckResponse.NOT_SERVING),
])
def test_grpc_health_check(channel: grpc.Channel, service: str, status: int) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == status


def test_grpc_health_check_of_an_unknown_service(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Check(health_pb2.HealthCheckRequest(service="no_such_service"), timeout=30)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
