"""The V2 REST protocol as `tritonclient.http` and `tritonclient.http.aio` use it, against the live server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
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
@pytest_asyncio.fixture(params=["http", "http.aio"], loop_scope="function")
async def client(request: pytest.FixtureRequest, server: ServerProcess) -> AsyncIterator[Any]:
    """The blocking client (behind awaitable methods) and the asyncio client, each in turn."""
    if request.param == "http":
        blocking = httpclient.InferenceServerClient(server.http_url)
        yield SyncAsAsync(blocking)
        blocking.close()
    else:
        aio = aiohttpclient.InferenceServerClient(server.http_url)
        yield aio
        await aio.close()


def _as_bytes(array: np.ndarray) -> list:
    """BYTES elements as bytes: tritonclient gives JSON BYTES data back as str, binary data as bytes."""
    return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(array).tolist()


# ---- health and metadata ----

async def test_server_live_and_ready(client: Any) -> None:
    assert await client.is_server_live() is True
    assert await client.is_server_ready() is True  # --strict-readiness=false: the broken models do not count


async def test_server_metadata(client: Any) -> None:
    metadata = await client.get_server_metadata()
    assert metadata["name"] == "inferd"
    assert metadata["version"]
    for extension in ("model_repository", "model_configuration", "binary_tensor_data"):
        assert extension in metadata["extensions"]


async def test_model_metadata(client: Any) -> None:
    metadata = await client.get_model_metadata(SIMPLE)
    assert metadata["name"] == SIMPLE
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]
    assert metadata["outputs"] == [
        {"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]


async def test_metadata_of_a_model_without_batching(client: Any) -> None:
    metadata = await client.get_model_metadata(NOBATCH)
    assert metadata["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 3]}]
    assert metadata["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [2, 3]}]


async def test_model_config(client: Any) -> None:
    config = await client.get_model_config(SIMPLE)
    assert config["name"] == SIMPLE
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("OUTPUT0", "TYPE_INT32", [16]), ("OUTPUT1", "TYPE_INT32", [16])]


async def test_auto_completed_model(client: Any) -> None:
    """No config.pbtxt: inputs, outputs, batching and platform come from the ONNX file."""
    config = await client.get_model_config(AUTO)
    assert config["name"] == AUTO
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 4  # Triton's default for a model whose first dimension is dynamic
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("INPUT0", "TYPE_FP32", [4])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("OUTPUT0", "TYPE_FP32", [4])]
    metadata = await client.get_model_metadata(AUTO)
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 4]}]
    x = np.array([[1.0, -2.0, 0.5, 0.0], [3.0, 4.0, -5.0, 6.0]], dtype=np.float32)
    result = await client.infer(AUTO, [make_input(httpclient, "INPUT0", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), -x)


async def test_model_ready(client: Any) -> None:
    assert await client.is_model_ready(SIMPLE) is True
    assert await client.is_model_ready(VERSIONED, "1") is True
    assert await client.is_model_ready(VERSIONED, "2") is True
    assert await client.is_model_ready(VERSIONED, "3") is False
    assert await client.is_model_ready("no_such_model") is False
    for name in BROKEN_MODELS:
        assert await client.is_model_ready(name) is False, name


async def test_metadata_of_unknown_model_is_not_found(client: Any) -> None:
    with pytest.raises(InferenceServerException) as exc:
        await client.get_model_metadata("no_such_model")
    assert exc.value.status() == "404"
    assert "no_such_model" in exc.value.message()


# ---- inference ----

@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("batch", range(1, 9))
async def test_simple_every_batch_size(client: Any, batch: int, binary: bool) -> None:
    a, b = simple_data(batch, seed=batch)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    result = await client.infer(SIMPLE, simple_inputs(httpclient, a, b, binary), outputs=outputs)
    response = result.get_response()
    assert response["model_name"] == SIMPLE
    assert response["model_version"] == "1"
    for out in response["outputs"]:
        assert out["datatype"] == "INT32"
        assert out["shape"] == [batch, 16]
        assert ("parameters" in out and "binary_data_size" in out["parameters"]) is binary
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


async def test_default_outputs_are_all_outputs(client: Any) -> None:
    a, b = simple_data(2)
    result = await client.infer(SIMPLE, simple_inputs(httpclient, a, b))
    assert sorted(o["name"] for o in result.get_response()["outputs"]) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
async def test_every_datatype_round_trip(client: Any, datatype: str, binary: bool) -> None:
    array = sample(datatype, (3, 5), seed=len(datatype))
    # FP16 has no JSON form for inputs (V2 JSON numbers are not half floats); its output may still be JSON.
    binary_input = binary or datatype == "FP16"
    result = await client.infer(
        identity_name(datatype),
        [make_input(httpclient, "INPUT0", array, datatype, binary_input)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)],
    )
    out = result.get_response()["outputs"][0]
    assert out["datatype"] == datatype
    assert out["shape"] == [3, 5]
    got = result.as_numpy("OUTPUT0")
    assert got.shape == (3, 5)
    if datatype == "BYTES":
        assert _as_bytes(got) == array.tolist()
    else:
        assert got.dtype == array.dtype
        np.testing.assert_array_equal(got, array)


async def test_bytes_model(client: Any) -> None:
    words = np.array([[f"w{i}-ü".encode() for i in range(16)], [b""] * 16], dtype=np.object_)
    for binary in (False, True):
        result = await client.infer(SIMPLE_STRING, [make_input(httpclient, "INPUT0", words, "BYTES", binary)],
                                    outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
        assert _as_bytes(result.as_numpy("OUTPUT0")) == words.tolist()


async def test_model_without_batching(client: Any) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = await client.infer(NOBATCH, [make_input(httpclient, "INPUT0", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_requested_output_subset(client: Any, binary: bool) -> None:
    a, b = simple_data(3, seed=11)
    result = await client.infer(SIMPLE, simple_inputs(httpclient, a, b, binary),
                                outputs=[httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


async def test_request_id_is_echoed(client: Any) -> None:
    a, b = simple_data(1)
    result = await client.infer(SIMPLE, simple_inputs(httpclient, a, b), request_id="my-request-42")
    assert result.get_response()["id"] == "my-request-42"
    result = await client.infer(SIMPLE, simple_inputs(httpclient, a, b))
    assert result.get_response().get("id", "") == ""


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("direction", ["request", "response", "both"])
async def test_compression(client: Any, algorithm: str, direction: str) -> None:
    a, b = simple_data(8, seed=5)
    kwargs = {}
    if direction in ("request", "both"):
        kwargs["request_compression_algorithm"] = algorithm
    if direction in ("response", "both"):
        kwargs["response_compression_algorithm"] = algorithm
    for binary in (False, True):
        result = await client.infer(SIMPLE, simple_inputs(httpclient, a, b, binary),
                                    outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)],
                                    **kwargs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


async def test_repository_index(client: Any) -> None:
    index = await client.get_model_repository_index()
    rows = {(row["name"], row.get("version", "")): row for row in index}
    assert rows[(SIMPLE, "1")]["state"] == "READY"
    assert rows[(VERSIONED, "1")]["state"] == "READY"
    assert rows[(VERSIONED, "2")]["state"] == "READY"
    names = {row["name"] for row in index}
    for datatype in DATATYPES:
        assert identity_name(datatype) in names
    broken = [row for row in index if row["name"] == BROKEN]
    assert broken and all(row["state"] == "UNAVAILABLE" and row["reason"] for row in broken)


async def test_model_versions_compute_their_own_answers(client: Any) -> None:
    x = np.array([[1, 2, 3], [10, 20, 30]], dtype=np.int32)
    results = {}
    for version in ("1", "2", ""):
        result = await client.infer(VERSIONED, [make_input(httpclient, "INPUT0", x, "INT32")], model_version=version)
        results[version] = result
    np.testing.assert_array_equal(results["1"].as_numpy("OUTPUT0"), x + 1)
    np.testing.assert_array_equal(results["2"].as_numpy("OUTPUT0"), x + 2)
    assert results["1"].get_response()["model_version"] == "1"
    assert results["2"].get_response()["model_version"] == "2"
    # Without a version, the latest one answers.
    np.testing.assert_array_equal(results[""].as_numpy("OUTPUT0"), x + 2)
    assert results[""].get_response()["model_version"] == "2"
    metadata = await client.get_model_metadata(VERSIONED)
    assert sorted(metadata["versions"]) == ["1", "2"]
    assert (await client.get_model_metadata(VERSIONED, "1"))["name"] == VERSIONED


async def test_unknown_version_is_not_found(client: Any) -> None:
    x = np.array([[1]], dtype=np.int32)
    with pytest.raises(InferenceServerException) as exc:
        await client.infer(VERSIONED, [make_input(httpclient, "INPUT0", x, "INT32")], model_version="3")
    assert exc.value.status() == "404"
