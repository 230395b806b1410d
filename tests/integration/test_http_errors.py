"""Bad requests over V2 REST get the right status and an `{"error": "..."}` body, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import math
import socket
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from clients import make_input
from models import NOBATCH, SIMPLE, SIMPLE_STRING, add_simple, identity_name
from serving import ServerProcess, start_server


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        yield client


def _tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _simple_request(batch: int = 1, **extra: Any) -> dict[str, Any]:
    a = np.arange(batch * 16, dtype=np.int32).reshape(batch, 16)
    return {"inputs": [_tensor("INPUT0", "INT32", [batch, 16], a.tolist()),
                       _tensor("INPUT1", "INT32", [batch, 16], (2 * a).tolist())], **extra}


def _binary(doc: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


def assert_still_serving(http: httpx.Client) -> None:
    """A good request right after a bad one gets the right answer."""
    response = http.post(f"/v2/models/{SIMPLE}/infer", json=_simple_request(2))
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    a = np.arange(32, dtype=np.int32)
    assert outputs["OUTPUT0"]["data"] == (3 * a).tolist()
    assert outputs["OUTPUT1"]["data"] == (-a).tolist()
    assert outputs["OUTPUT0"]["shape"] == [2, 16]


# ---- not found ----

def test_unknown_model(http: httpx.Client) -> None:
    response = http.post("/v2/models/x/infer", json=_simple_request())
    assert response.status_code == 404
    assert response.json() == {"error": "Request for unknown model: 'x' is not found"}
    assert_still_serving(http)


@pytest.mark.parametrize("path", ["/v2/models/x", "/v2/models/x/config", "/v2/models/x/versions/1"])
def test_unknown_model_metadata_and_config(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404, "'x'")
    assert_still_serving(http)


def test_unknown_model_with_a_bad_body_is_still_not_found(http: httpx.Client) -> None:
    assert_error(http.post("/v2/models/x/infer", content=b"{oops"), 404, "'x'")
    assert_still_serving(http)


@pytest.mark.parametrize("path", [f"/v2/models/{SIMPLE}/versions/9/infer", f"/v2/models/{SIMPLE}/versions/9"])
def test_unknown_version(http: httpx.Client, path: str) -> None:
    response = http.post(path, json=_simple_request()) if path.endswith("infer") else http.get(path)
    assert_error(response, 404, SIMPLE)
    assert_still_serving(http)


def test_unknown_path(http: httpx.Client) -> None:
    assert_error(http.get("/v2/no/such/thing"), 404)
    assert_still_serving(http)


# ---- invalid requests ----

def _with_input(index: int, **changes: Any) -> dict[str, Any]:
    doc = _simple_request()
    doc["inputs"][index].update(changes)
    return doc


BAD_JSON_REQUESTS = {
    "wrong_shape": (_with_input(0, shape=[1, 15], data=list(range(15))), ["INPUT0"]),
    "wrong_rank": (_with_input(0, shape=[1, 16, 1]), ["INPUT0"]),
    "batch_dimension_missing": (_with_input(0, shape=[16]), []),
    "wrong_datatype": (_with_input(1, datatype="FP32", data=[float(i) for i in range(16)]), ["INPUT1", "FP32"]),
    "batch_above_max": (_simple_request(9), ["batch"]),
    "batch_sizes_differ": (_with_input(1, shape=[2, 16], data=list(range(32))), []),
    "missing_input": ({"inputs": _simple_request()["inputs"][:1]}, ["INPUT1"]),
    "extra_input": ({"inputs": [*_simple_request()["inputs"], _tensor("INPUT2", "INT32", [1, 16], [0] * 16)]},
                    ["INPUT2"]),
    "data_length_not_matching_shape": (_with_input(0, data=list(range(15))), ["INPUT0"]),
    "data_length_too_long": (_with_input(0, data=list(range(17))), ["INPUT0"]),
    "data_of_the_wrong_kind": (_with_input(0, data=["a"] * 16), ["INPUT0"]),
    "unknown_output": (_simple_request(outputs=[{"name": "OUTPUT9"}]), ["OUTPUT9"]),
    "negative_dimension": (_with_input(0, shape=[-1, 16]), ["INPUT0"]),
    "no_inputs_key": ({"outputs": []}, ["inputs"]),
    "duplicate_input": ({"inputs": [*_simple_request()["inputs"], _simple_request()["inputs"][0]]}, ["INPUT0"]),
    "unknown_datatype": (_with_input(0, datatype="INT33"), ["INT33"]),
}


@pytest.mark.parametrize("case", list(BAD_JSON_REQUESTS))
def test_invalid_json_request(http: httpx.Client, case: str) -> None:
    doc, words = BAD_JSON_REQUESTS[case]
    assert_error(http.post(f"/v2/models/{SIMPLE}/infer", json=doc), 400, *words)
    assert_still_serving(http)


@pytest.mark.parametrize("body", [b"{oops", b"", b"[1, 2]", b"\xff\xfe", b'{"inputs": [1]}'])
def test_malformed_json(http: httpx.Client, body: bytes) -> None:
    response = http.post(f"/v2/models/{SIMPLE}/infer", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 400)
    assert_still_serving(http)


def test_non_batching_model_wrong_shape(http: httpx.Client) -> None:
    doc = {"inputs": [_tensor("INPUT0", "FP32", [1, 2, 3], [0.0] * 6)]}
    assert_error(http.post(f"/v2/models/{NOBATCH}/infer", json=doc), 400, "INPUT0")
    assert_still_serving(http)


def test_fp16_in_json_is_refused_with_a_hint_to_use_binary(http: httpx.Client) -> None:
    doc = {"inputs": [_tensor("INPUT0", "FP16", [1, 2], [1.0, 2.0])]}
    assert_error(http.post(f"/v2/models/{identity_name('FP16')}/infer", json=doc), 400, "binary")
    assert_still_serving(http)


def _simple_binary_request(batch: int = 1) -> tuple[dict[str, Any], bytes, bytes]:
    a = np.arange(batch * 16, dtype=np.int32)
    doc = {"inputs": [
        {"name": n, "datatype": "INT32", "shape": [batch, 16], "parameters": {"binary_data_size": a.nbytes}}
        for n in ("INPUT0", "INPUT1")]}
    return doc, a.tobytes(), (2 * a).tobytes()


def test_good_binary_request(http: httpx.Client) -> None:
    """The baseline the binary error cases below change one thing of."""
    doc, a, b = _simple_binary_request()
    body, headers = _binary(doc, a, b)
    response = http.post(f"/v2/models/{SIMPLE}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["OUTPUT0"] == (3 * np.arange(16)).tolist()


def test_truncated_binary_body(http: httpx.Client) -> None:
    doc, a, b = _simple_binary_request()
    body, headers = _binary(doc, a, b)
    assert_error(http.post(f"/v2/models/{SIMPLE}/infer", content=body[:-3], headers=headers), 400)
    assert_still_serving(http)


def test_binary_data_size_not_matching_the_shape(http: httpx.Client) -> None:
    doc, a, b = _simple_binary_request()
    doc["inputs"][1]["parameters"]["binary_data_size"] = len(b) - 4
    body, headers = _binary(doc, a, b[:-4])
    assert_error(http.post(f"/v2/models/{SIMPLE}/infer", content=body, headers=headers), 400, "INPUT1")
    assert_still_serving(http)


@pytest.mark.parametrize("header_length", ["+1", "-1", "-10", "huge", "not-a-number", "-5000"])
def test_wrong_inference_header_content_length(http: httpx.Client, header_length: str) -> None:
    doc, a, b = _simple_binary_request()
    body, headers = _binary(doc, a, b)
    length = int(headers["Inference-Header-Content-Length"])
    headers["Inference-Header-Content-Length"] = {
        "+1": str(length + 1), "-1": str(length - 1), "-10": str(length - 10), "huge": str(len(body) + 1000),
        "not-a-number": "twelve", "-5000": "-5000"}[header_length]
    assert_error(http.post(f"/v2/models/{SIMPLE}/infer", content=body, headers=headers), 400)
    assert_still_serving(http)


def test_header_length_with_json_data_and_trailing_garbage(http: httpx.Client) -> None:
    header = json.dumps(_simple_request()).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    assert_error(http.post(f"/v2/models/{SIMPLE}/infer", content=header + b"garbage", headers=headers), 400)
    assert_still_serving(http)


def test_non_utf8_bytes_into_the_onnx_string_model(http: httpx.Client) -> None:
    elements = [b"ok"] * 15 + [b"\xff\xfe\x80"]
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    doc = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16],
                       "parameters": {"binary_data_size": len(blob)}}]}
    body, headers = _binary(doc, blob)
    assert_error(http.post(f"/v2/models/{SIMPLE_STRING}/infer", content=body, headers=headers), 400, "INPUT0")
    assert_still_serving(http)


def test_truncated_bytes_element(http: httpx.Client) -> None:
    blob = b"".join(struct.pack("<I", 2) + b"ab" for _ in range(16))[:-1]
    doc = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16],
                       "parameters": {"binary_data_size": len(blob)}}]}
    body, headers = _binary(doc, blob)
    assert_error(http.post(f"/v2/models/{SIMPLE_STRING}/infer", content=body, headers=headers), 400, "INPUT0")
    assert_still_serving(http)


def test_corrupt_gzip_body(http: httpx.Client) -> None:
    body = gzip.compress(json.dumps(_simple_request()).encode())[:-8] + b"\x00" * 8
    response = http.post(f"/v2/models/{SIMPLE}/infer", content=body, headers={"Content-Encoding": "gzip"})
    assert_error(response, 400)
    assert_still_serving(http)


def test_wrong_method(http: httpx.Client) -> None:
    response = http.get(f"/v2/models/{SIMPLE}/infer")
    assert 400 <= response.status_code < 500
    assert set(response.json()) == {"error"}
    assert_still_serving(http)


def test_error_from_tritonclient_carries_status_and_message(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        bad = np.zeros((1, 15), dtype=np.int32)
        with pytest.raises(httpclient.InferenceServerException) as exc:
            client.infer(SIMPLE, [make_input(httpclient, "INPUT0", bad, "INT32"),
                                  make_input(httpclient, "INPUT1", bad, "INT32")])
        assert exc.value.status() == "400"
        assert "INPUT0" in exc.value.message()
    finally:
        client.close()


# ---- accepted on purpose ----

@pytest.mark.parametrize("binary_in", [False, True], ids=["json_in", "binary_in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json_out", "binary_out"])
def test_nan_and_infinity_pass_through(http: httpx.Client, binary_in: bool, binary_out: bool) -> None:
    """FP32 NaN and ±Inf are data, not errors: they come back as they went in."""
    values = np.array([[np.nan, np.inf, -np.inf, 1.5]], dtype=np.float32)
    parameters = {"binary_data_output": True} if binary_out else {}
    if binary_in:
        doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                           "parameters": {"binary_data_size": values.nbytes}}], "parameters": parameters}
        body, headers = _binary(doc, values.tobytes())
    else:  # JSON has no NaN / Infinity, but Triton (and Python's json) read these tokens
        body = ('{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], '
                '"data": [NaN, Infinity, -Infinity, 1.5]}], "parameters": ' + json.dumps(parameters) + "}").encode()
        headers = {"Content-Type": "application/json"}
    response = http.post(f"/v2/models/{identity_name('FP32')}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    out_length = response.headers.get("inference-header-content-length")
    if binary_out:
        assert out_length is not None
        got = np.frombuffer(response.content[int(out_length):], dtype=np.float32)
    else:
        assert out_length is None
        got = np.array(json.loads(response.content)["outputs"][0]["data"], dtype=np.float32)
    assert math.isnan(got[0])
    assert got[1:].tolist() == [math.inf, -math.inf, 1.5]
    assert_still_serving(http)


def test_nan_with_tritonclient(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        values = np.array([[np.nan, np.inf, -np.inf]], dtype=np.float32)
        for binary in (False, True):
            result = client.infer(identity_name("FP32"), [make_input(httpclient, "INPUT0", values, "FP32", binary)],
                                  outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values)  # NaN == NaN for this check
    finally:
        client.close()


def test_empty_post_to_repository_index(http: httpx.Client) -> None:
    response = http.post("/v2/repository/index", content=b"")
    assert response.status_code == 200, response.text
    names = {row["name"] for row in response.json()}
    assert SIMPLE in names


def test_repository_index_ready_only(http: httpx.Client) -> None:
    response = http.post("/v2/repository/index", json={"ready": True})
    assert response.status_code == 200, response.text
    rows = response.json()
    assert rows and all(row["state"] == "READY" for row in rows)
    assert SIMPLE in {row["name"] for row in rows}


def test_json_without_content_type(http: httpx.Client) -> None:
    body = json.dumps(_simple_request(2)).encode()
    request = http.build_request("POST", f"/v2/models/{SIMPLE}/infer", content=body)
    request.headers.pop("Content-Type", None)
    assert "content-type" not in request.headers
    response = http.send(request)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["OUTPUT0"] == (3 * np.arange(32)).tolist()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_response_compression_header(http: httpx.Client, encoding: str) -> None:
    """A large enough inference response comes back compressed when the client accepts it."""
    values = np.arange(8 * 2000, dtype=np.float32).reshape(8, 2000)
    doc = {"inputs": [_tensor("INPUT0", "FP32", [8, 2000], values.ravel().tolist())]}
    response = http.post(f"/v2/models/{identity_name('FP32')}/infer", json=doc,
                         headers={"Accept-Encoding": encoding})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == encoding
    assert response.json()["outputs"][0]["data"] == values.ravel().tolist()


# ---- --http-max-input-size ----

@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("small-limit") / "models"
    add_simple(repo)
    log_path = repo.parent / "inferd.log"
    process = start_server(repo, log_path, "--http-max-input-size", "4096", "--allow-grpc=false")
    yield process
    process.stop()


def _limit_client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30.0)


def test_body_over_max_input_size(small_server: ServerProcess) -> None:
    with _limit_client(small_server) as http:
        small = http.post(f"/v2/models/{SIMPLE}/infer", json=_simple_request(1))
        assert small.status_code == 200, small.text
        big = _simple_request(1, id="x" * 5000)
        assert_error(http.post(f"/v2/models/{SIMPLE}/infer", json=big), 413)
        assert_still_serving(http)


def test_chunked_body_over_max_input_size(small_server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000
        yield json.dumps(_simple_request(1)).encode()

    with _limit_client(small_server) as http:
        assert_error(http.post(f"/v2/models/{SIMPLE}/infer", content=chunks()), 413)
        assert_still_serving(http)


def test_chunked_body_over_max_input_size_sent_at_once(small_server: ServerProcess) -> None:
    """The same, written in one piece, so the server may get the whole body in a single read."""
    body = json.dumps(_simple_request(1, id="z" * 5000)).encode()
    request = (f"POST /v2/models/{SIMPLE}/infer HTTP/1.1\r\nHost: {small_server.http_url}\r\n"
               "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
               f"{len(body):x}\r\n").encode() + body + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", small_server.http_port), timeout=30) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"413", reply[:300]
    payload = rest.partition(b"\r\n\r\n")[2]
    assert set(json.loads(payload)) == {"error"}
    with _limit_client(small_server) as http:
        assert_still_serving(http)


def test_decompressed_body_over_max_input_size(small_server: ServerProcess) -> None:
    body = json.dumps(_simple_request(1, id="y" * 20000)).encode()
    compressed = gzip.compress(body)
    assert len(compressed) < 4096
    with _limit_client(small_server) as http:
        response = http.post(f"/v2/models/{SIMPLE}/infer", content=compressed, headers={"Content-Encoding": "gzip"})
        assert_error(response, 413)
        assert_still_serving(http)

