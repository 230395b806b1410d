"""The hostile-input suite: malformed HTTP, bad V2 / V1 / TorchServe bodies and bad gRPC requests, table-driven.

One `inferd serve` (explicit model control, `simple` loaded, small limits so the limit cases are cheap) answers every
case; each case states the exact status (HTTP) or grpc.StatusCode it must get, and after each one a valid `simple`
inference must still return the right sums and differences, so no case may kill, wedge or corrupt the server.
Raw-socket cases carry the request bytes as written (a pipelined case lists the statuses in the order they must come
back); the others go through httpx or the raw gRPC stubs, so that they can send what no client library would.
A case whose answer is a server bug is marked `xfail(strict=True)` with the reason.
"""

from __future__ import annotations

import gzip
import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models import (
    SIMPLE,
    SIMPLE_STRING,
    SIMPLE_STRING_CONFIG,
    add_broken,
    add_simple,
    identity_config,
    identity_model,
    identity_name,
    simple_string_model,
    write_model,
)
from serving import HOST, ServerProcess, start_server

MAX_INPUT = 1024 * 1024  # --http-max-input-size
MAX_ELEMENTS = 100_000  # --max-tensor-elements
MAX_INPUTS = 16  # --max-inputs
GRPC_MAX = 2 * 1024 * 1024  # --grpc-max-message-size
A = list(range(16))
B = [1] * 16
INFER = f"/v2/models/{SIMPLE}/infer"
FP32 = identity_name("FP32")  # FP32 [batch, n] -> the same
FP32_INFER = f"/v2/models/{FP32}/infer"
STRING_INFER = f"/v2/models/{SIMPLE_STRING}/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("hostile")
    repo = base / "models"
    repo.mkdir()
    add_simple(repo)
    add_broken(repo)
    write_model(repo, SIMPLE_STRING, simple_string_model(), SIMPLE_STRING_CONFIG)
    write_model(repo, FP32, identity_model("FP32"), identity_config("FP32"))
    proc = start_server(repo, base / "server.log", "--model-control-mode=explicit", "--load-model", SIMPLE,
                        "--load-model", SIMPLE_STRING, "--load-model", FP32,
                        "--http-max-input-size", str(MAX_INPUT), "--max-tensor-elements", str(MAX_ELEMENTS),
                        "--max-inputs", str(MAX_INPUTS), "--grpc-max-message-size", str(GRPC_MAX))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def assert_alive(server: ServerProcess, http: httpx.Client) -> None:
    """The server still runs and a valid `simple` inference still gives the right answer."""
    assert server.process.poll() is None, f"inferd exited:\n{server.log()[-4000:]}"
    reply = http.post(INFER, json=simple_body())
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
    assert outputs["OUTPUT0"] == [a + b for a, b in zip(A, B, strict=True)]
    assert outputs["OUTPUT1"] == [a - b for a, b in zip(A, B, strict=True)]


# ---- request builders ----

def tensor(name: str, data: Any = None, *, datatype: str = "INT32", shape: Any = None, **extra: Any) -> dict[str, Any]:
    data = A if data is None else data
    return {"name": name, "datatype": datatype, "shape": [1, 16] if shape is None else shape, "data": data, **extra}


def simple_body(**extra: Any) -> dict[str, Any]:
    return {"inputs": [tensor("INPUT0", A), tensor("INPUT1", B)], **extra}


def with_input0(**changes: Any) -> dict[str, Any]:
    """A valid `simple` request whose INPUT0 has `changes` applied (a value of None drops the key)."""
    first = tensor("INPUT0", A)
    for key, value in changes.items():
        if value is None:
            first.pop(key, None)
        else:
            first[key] = value
    return {"inputs": [first, tensor("INPUT1", B)]}


def binary_request(header: dict[str, Any], blob: bytes, declared: int | str | None = None) -> tuple[bytes, dict]:
    raw = json.dumps(header).encode()
    length = len(raw) if declared is None else declared
    return raw + blob, {"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"}


def binary_input(name: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": "INT32", "shape": [1, 16], "parameters": {"binary_data_size": size}, **extra}


INT32_BLOB = struct.pack("<16i", *A)


def fp32(data: Any, shape: Any = None) -> dict[str, Any]:
    return {"inputs": [tensor("INPUT0", data, datatype="FP32", shape=[1, len(data)] if shape is None else shape)]}


def nested(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"


# ---- HTTP cases ----

@dataclass(frozen=True)
class Raw:
    """Bytes written to a fresh socket as they are; `expect` the statuses of the answers in order. With
    `half_close` the client then shuts its sending side (the request ends early: EOF mid-request)."""

    data: bytes
    expect: tuple[int, ...]
    half_close: bool = False


@dataclass(frozen=True)
class Req:
    """One request through httpx; `body` is bytes as they are, or an object sent as JSON."""

    method: str
    path: str
    expect: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


def post_raw(path: str, body: bytes, *headers: str, close: bool = True) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


VALID_INFER = post_raw(INFER, json.dumps(simple_body()).encode(), "Content-Type: application/json", close=False)
GZIP_BOMB = gzip.compress(b"\0" * (8 * MAX_INPUT), 9)



RAW_CASES: list[Any] = [
    ("garbage-line", Raw(b"\x00\x01\x02 garbage\r\n\r\n", (400,))),
    ("no-version", Raw(b"GET /v2/health/live\r\nHost: x\r\n\r\n", (400,))),
    ("http-2-0-version", Raw(b"GET /v2/health/live HTTP/2.0\r\nHost: x\r\n\r\n", (505,))),
    ("http-version-junk", Raw(b"GET /v2/health/live HTTP/x.y\r\nHost: x\r\n\r\n", (400,))),
    ("extra-request-line-parts", Raw(b"GET /v2/health/live HTTP/1.1 extra\r\nHost: x\r\n\r\n", (400,))),
    ("lowercase-method", Raw(b"get /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (400,))),
    ("unknown-method", Raw(b"BREW /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (400,))),
    ("method-with-control-char", Raw(b"G\x01T /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", (400,))),
    ("wrong-method-on-infer", Raw(get(INFER), (405,))),
    ("delete-on-live", Raw(b"DELETE /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", (405,))),
    ("unknown-path", Raw(get("/v3/nothing"), (404,))),
    ("absolute-form-target", Raw(get("http://x/v2/health/live"), (200,))),
    ("asterisk-target", Raw(get("*"), (404,))),
    ("dot-dot-path", Raw(get("/v2/../v2/health/live"), (404,))),
    ("percent-garbage-path", Raw(get("/v2/models/%ZZ/ready"), (400,))),
    ("nul-in-path", Raw(b"GET /v2/models/sim\x00ple HTTP/1.1\r\nHost: x\r\n\r\n", (400,))),
    ("huge-url", Raw(get("/v2/models/" + "a" * 20_000), (414,))),
    ("header-without-colon", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost x\r\n\r\n", (400,))),
    ("header-space-before-colon", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost : x\r\n\r\n", (400,))),
    ("header-obs-fold", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", (400,))),
    ("header-nul-value", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", (400,))),
    ("huge-header", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
                        (431,))),
    ("too-many-headers", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
                             + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n", (431,))),
    ("bare-lf-line-endings", Raw(b"GET /v2/health/live HTTP/1.1\nHost: x\nConnection: close\n\n", (400,))),
    ("content-length-not-a-number", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Length: abc\r\n\r\n", (400,))),
    ("content-length-negative", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: -5\r\n\r\n", (400,))),
    ("content-length-conflicting", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef", (400,))),
    ("content-length-over-limit", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: %d\r\n\r\n" % (MAX_INPUT + 1), (413,))),
    ("content-length-2-to-the-64", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                       b"Content-Length: 18446744073709551616\r\n\r\n", (400,))),
    ("expect-100-over-limit", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                  b"Content-Length: %d\r\n\r\n" % (MAX_INPUT * 4), (417,))),
    ("expect-unknown", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nExpect: coffee\r\n"
                           b"Content-Length: 2\r\n\r\n{}", (400,))),
    ("chunked-bad-size", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                             b"\r\nzz\r\nabc\r\n0\r\n\r\n", (400,))),
    ("chunked-missing-crlf", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                                 b"\r\n\r\n3\r\nabcXX0\r\n\r\n", (400,))),
    ("chunked-over-limit", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\n%x\r\n" % (MAX_INPUT * 2) + b"\0" * (MAX_INPUT * 2), (413,))),
    ("transfer-encoding-unknown", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                      b"Transfer-Encoding: gzip\r\n\r\n", (400,))),
    ("chunked-and-content-length", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", (400,))),
    ("pipelined-valid-then-garbage", Raw(VALID_INFER + b"\x16\x03\x01 not http\r\n\r\n", (200, 400))),
    ("pipelined-valid-then-huge-url", Raw(VALID_INFER + get("/" + "b" * 20_000), (200, 414))),
    ("pipelined-valid-then-over-limit", Raw(VALID_INFER + b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                            b"Content-Length: %d\r\n\r\n" % (MAX_INPUT + 1), (200, 413))),
    ("missing-host", Raw(b"GET /v2/health/live HTTP/1.1\r\nConnection: close\r\n\r\n", (400,))),
    ("two-hosts", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n", (400,))),
    ("header-name-with-space", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX Y: z\r\n\r\n", (400,))),
    ("header-obs-text-value", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\r\n"
                                  b"Connection: close\r\n\r\n", (200,))),
    ("leading-empty-lines", Raw(b"\r\n\r\n" + get("/v2/health/live"), (200,))),
    ("chunk-extension-control-char", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n2;a=\x01\r\n{}\r\n0\r\n\r\n", (400,))),
    ("chunked-valid-bad-json", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n2\r\n{{\r\n1\r\n}\r\n0\r\n\r\n", (400,))),
    ("torchserve-put-over-limit", Raw(b"PUT /predictions/simple HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: %d\r\n\r\n" % (MAX_INPUT + 1), (413,))),
    ("pipelined-three-then-bad-method", Raw(VALID_INFER * 3 + b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n",
                                            (200, 200, 200, 400))),
    # A client that stops sending mid-request gets the connection closed, promptly and without an answer.
    ("eof-mid-headers", Raw(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-A:", (), half_close=True)),
    ("eof-mid-body", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                         (), half_close=True)),
    ("eof-mid-chunk", Raw(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                          b"\r\n10\r\nabc", (), half_close=True)),
    ("tls-client-hello", Raw(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64, (400,))),
    ("http2-preface", Raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (400,))),
]

HTTP_CASES: list[Any] = [
    # JSON syntax and structure
    ("json-invalid", Req("POST", INFER, 400, b"{not json")),
    ("json-empty-body", Req("POST", INFER, 400, b"")),
    ("json-not-object", Req("POST", INFER, 400, [1, 2, 3])),
    ("json-nested-10000", Req("POST", INFER, 400, nested(10_000))),
    ("json-invalid-utf8", Req("POST", INFER, 400, b'{"inputs": "\xff\xfe"}')),
    ("json-trailing-garbage", Req("POST", INFER, 400, json.dumps(simple_body()).encode() + b"garbage")),
    ("json-nan-literal", Req("POST", INFER, 400, json.dumps(simple_body()).encode().replace(b"[0, 1,", b"[NaN, 1,"))),
    ("inputs-not-list", Req("POST", INFER, 400, {"inputs": {"INPUT0": A}})),
    ("inputs-empty", Req("POST", INFER, 400, {"inputs": []})),
    ("input-not-object", Req("POST", INFER, 400, {"inputs": [1, 2]})),
    ("input-missing-name", Req("POST", INFER, 400, with_input0(name=None))),
    ("input-name-not-string", Req("POST", INFER, 400, with_input0(name=7))),
    ("missing-input", Req("POST", INFER, 400, {"inputs": [tensor("INPUT0")]})),
    ("unknown-input", Req("POST", INFER, 400, {"inputs": [*simple_body()["inputs"], tensor("INPUT9")]})),
    ("duplicate-input", Req("POST", INFER, 400, {"inputs": [tensor("INPUT0"), tensor("INPUT0"), tensor("INPUT1")]})),
    ("too-many-inputs", Req("POST", INFER, 400, {"inputs": [tensor(f"X{i}") for i in range(MAX_INPUTS + 1)]})),
    # datatypes and values
    ("datatype-wrong", Req("POST", INFER, 400, with_input0(datatype="FP32"))),
    ("datatype-unknown", Req("POST", INFER, 400, with_input0(datatype="INT33"))),
    ("datatype-missing", Req("POST", INFER, 400, with_input0(datatype=None))),
    ("datatype-not-string", Req("POST", INFER, 400, with_input0(datatype=5))),
    ("float-into-int32", Req("POST", INFER, 400, with_input0(data=[1.5] * 16))),
    ("string-into-int32", Req("POST", INFER, 400, with_input0(data=["1"] * 16))),
    ("bool-into-int32", Req("POST", INFER, 400, with_input0(data=[True] * 16))),
    ("null-into-int32", Req("POST", INFER, 400, with_input0(data=[None] * 16))),
    ("int32-overflow", Req("POST", INFER, 400, with_input0(data=[2**31] * 16))),
    ("int-2-to-the-70", Req("POST", INFER, 400, with_input0(data=[2**70] * 16))),
    ("data-nested-ragged", Req("POST", INFER, 400, with_input0(data=[[1, 2], [3]]))),
    ("data-missing", Req("POST", INFER, 400, with_input0(data=None))),
    ("data-object", Req("POST", INFER, 400, with_input0(data={"a": 1}))),
    ("bool-into-fp32", Req("POST", "/v2/models/simple_string/infer", 400,
                           {"inputs": [tensor("INPUT0", [True] * 16, datatype="FP32")]})),
    ("int-into-bytes", Req("POST", "/v2/models/simple_string/infer", 400,
                           {"inputs": [tensor("INPUT0", [1] * 16, datatype="BYTES")]})),
    ("fp32-true", Req("POST", FP32_INFER, 400, fp32([True, 1.0]))),
    ("fp32-1e39", Req("POST", FP32_INFER, 400, fp32([1e39, 1.0]))),
    ("fp32-1e400-literal", Req("POST", FP32_INFER, 400, b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", '
                                                        b'"shape": [1, 2], "data": [1e400, 1.0]}]}')),
    ("fp32-string-number", Req("POST", FP32_INFER, 400, fp32(["1.0", 1.0]))),
    ("fp32-datatype-int32", Req("POST", FP32_INFER, 400, {"inputs": [tensor("INPUT0", [1, 2], shape=[1, 2])]})),
    ("fp32-binary-size-odd", Req("POST", FP32_INFER, 400, *binary_request(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2],
                     "parameters": {"binary_data_size": 7}}]}, b"\0" * 7))),
    ("bytes-binary-bad-length-prefix", Req("POST", STRING_INFER, 400, *binary_request(
        {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16],
                     "parameters": {"binary_data_size": 8}}]}, struct.pack("<I", 1000) + b"abcd"))),
    ("bytes-count-mismatch", Req("POST", STRING_INFER, 400,
                                 {"inputs": [tensor("INPUT0", ["a", "b"], datatype="BYTES")]})),
    ("lone-surrogate-bytes", Req("POST", "/v2/models/simple_string/infer", 400,
                                 b'{"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": ['
                                 + b", ".join([b'"\\ud800"'] * 16) + b"]}]}")),
    # shapes
    ("shape-huge", Req("POST", INFER, 400, with_input0(shape=[2**62, 4, 0]))),
    ("shape-2-to-the-64", Req("POST", INFER, 400, with_input0(shape=[2**64, 16]))),
    ("shape-negative", Req("POST", INFER, 400, with_input0(shape=[-1, 16]))),
    ("shape-not-list", Req("POST", INFER, 400, with_input0(shape="1,16"))),
    ("shape-float", Req("POST", INFER, 400, with_input0(shape=[1.0, 16]))),
    ("shape-missing", Req("POST", INFER, 400, with_input0(shape=None))),
    ("shape-data-mismatch", Req("POST", INFER, 400, with_input0(shape=[2, 16]))),
    ("shape-wrong-dims", Req("POST", INFER, 400, with_input0(shape=[1, 8], data=A[:8]))),
    ("shape-over-batch", Req("POST", INFER, 400, with_input0(shape=[9, 16], data=A * 9))),
    ("shape-over-max-elements", Req("POST", INFER, 400, with_input0(shape=[1, MAX_ELEMENTS + 16]))),
    # outputs and parameters
    ("unknown-output", Req("POST", INFER, 400, simple_body(outputs=[{"name": "OUTPUT9"}]))),
    ("outputs-not-list", Req("POST", INFER, 400, simple_body(outputs="OUTPUT0"))),
    ("output-missing-name", Req("POST", INFER, 400, simple_body(outputs=[{}]))),
    ("parameters-not-object", Req("POST", INFER, 400, simple_body(parameters=[1]))),
    ("classification-not-int", Req("POST", INFER, 400,
                                   simple_body(outputs=[{"name": "OUTPUT0", "parameters": {"classification": "x"}}]))),
    # binary tensor extension
    ("binary-size-negative", Req("POST", INFER, 400, *binary_request(
        {"inputs": [binary_input("INPUT0", -64), tensor("INPUT1")]}, INT32_BLOB))),
    ("binary-size-not-int", Req("POST", INFER, 400, *binary_request(
        {"inputs": [binary_input("INPUT0", "64"), tensor("INPUT1")]}, INT32_BLOB))),
    ("binary-size-past-body", Req("POST", INFER, 400, *binary_request(
        {"inputs": [binary_input("INPUT0", 6400), tensor("INPUT1")]}, INT32_BLOB))),
    ("binary-size-not-element-multiple", Req("POST", INFER, 400, *binary_request(
        {"inputs": [binary_input("INPUT0", 63), tensor("INPUT1")]}, INT32_BLOB[:63]))),
    ("binary-data-left-over", Req("POST", INFER, 400, *binary_request(
        {"inputs": [binary_input("INPUT0", 64), tensor("INPUT1")]}, INT32_BLOB + b"extra"))),
    ("header-length-past-body", Req("POST", INFER, 400, *binary_request(simple_body(), b"", declared=10_000))),
    ("header-length-not-number", Req("POST", INFER, 400, *binary_request(simple_body(), b"", declared="ten"))),
    ("header-length-negative", Req("POST", INFER, 400, *binary_request(simple_body(), b"", declared=-1))),
    # content encodings
    ("content-encoding-unknown", Req("POST", INFER, 400, json.dumps(simple_body()).encode(),
                                     {"Content-Encoding": "br2"})),
    ("gzip-not-gzip", Req("POST", INFER, 400, b"this is not gzip", {"Content-Encoding": "gzip"})),
    ("gzip-bomb", Req("POST", INFER, 413, GZIP_BOMB, {"Content-Encoding": "gzip"})),
    ("deflate-garbage", Req("POST", INFER, 400, b"\x00\x01garbage", {"Content-Encoding": "deflate"})),
    # models and versions
    ("model-name-traversal", Req("POST", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", 404, simple_body())),
    ("model-name-huge", Req("POST", "/v2/models/" + "m" * 4000 + "/infer", 404, simple_body())),
    ("duplicate-json-keys", Req("POST", INFER, 400, b'{"inputs": [], "inputs": 5}')),
    ("unknown-model-infer", Req("POST", "/v2/models/nope/infer", 404, simple_body())),
    ("unknown-model-metadata", Req("GET", "/v2/models/nope", 404)),
    ("unknown-model-ready", Req("GET", "/v2/models/nope/ready", 400)),
    ("version-not-number", Req("POST", "/v2/models/simple/versions/abc/infer", 400, simple_body())),
    ("version-negative", Req("POST", "/v2/models/simple/versions/-1/infer", 400, simple_body())),
    ("version-huge", Req("POST", "/v2/models/simple/versions/99999999999999999999999/infer", 404, simple_body())),
    ("version-missing", Req("POST", "/v2/models/simple/versions/7/infer", 404, simple_body())),
    ("unloaded-model-infer", Req("POST", "/v2/models/broken/infer", 404, simple_body())),
    # KServe V1 (TF-Serving REST)
    ("v1-predict-not-json", Req("POST", "/v1/models/simple:predict", 400, b"{{")),
    ("v1-predict-no-instances", Req("POST", "/v1/models/simple:predict", 400, {"foo": 1})),
    ("v1-predict-instances-not-list", Req("POST", "/v1/models/simple:predict", 400, {"instances": 5})),
    ("v1-predict-ragged", Req("POST", "/v1/models/simple:predict", 400,
                              {"instances": [{"INPUT0": A, "INPUT1": B[:3]}]})),
    ("v1-predict-unknown-model", Req("POST", "/v1/models/nope:predict", 404, {"instances": [[1]]})),
    ("v1-predict-float-into-int", Req("POST", "/v1/models/simple:predict", 400,
                                      {"instances": [{"INPUT0": [0.5] * 16, "INPUT1": B}]})),
    # TorchServe
    ("v1-classify-not-classifier", Req("POST", "/v1/models/simple:classify", 400,
                                       {"examples": [{"INPUT0": A, "INPUT1": B}]})),
    ("v1-predict-columnar-bad", Req("POST", "/v1/models/simple:predict", 400, {"inputs": {"INPUT0": "x"}})),
    ("torchserve-unknown-model", Req("POST", "/predictions/nope", 404, b"x")),
    ("torchserve-empty-body", Req("POST", "/predictions/simple", 400, b"")),
    ("torchserve-garbage-body", Req("POST", "/predictions/simple", 400, b"\xff\xfe garbage",
                                    {"Content-Type": "application/octet-stream"})),
    ("torchserve-bad-version", Req("POST", "/predictions/simple/abc", 404, {"INPUT0": A, "INPUT1": B})),
    # repository, trace, logging, shared memory
    ("load-bad-config", Req("POST", "/v2/repository/models/simple/load", 400,
                            {"parameters": {"config": "{not json"}})),
    ("load-config-wrong-type", Req("POST", "/v2/repository/models/simple/load", 400, {"parameters": {"config": 5}})),
    ("load-broken-model", Req("POST", "/v2/repository/models/broken/load", 400)),
    ("load-missing-model", Req("POST", "/v2/repository/models/nope/load", 404)),
    ("load-body-not-json", Req("POST", "/v2/repository/models/simple/load", 400, b"[[[")),
    ("unload-missing-model", Req("POST", "/v2/repository/models/nope/unload", 404)),
    ("load-upload-not-onnx", Req("POST", "/v2/repository/models/upload/load", 400, {"parameters": {
        "config": json.dumps({"backend": "onnxruntime"}), "file:1/model.onnx": "AAAA"}})),
    ("index-body-not-object", Req("POST", "/v2/repository/index", 400, [1])),
    ("trace-rate-wrong-type", Req("POST", "/v2/trace/setting", 400, {"trace_rate": {"a": 1}})),
    ("trace-level-unknown", Req("POST", "/v2/trace/setting", 400, {"trace_level": ["LOUD"]})),
    ("trace-unknown-model", Req("POST", "/v2/models/nope/trace/setting", 400, {"trace_rate": "1"})),
    ("trace-body-not-object", Req("POST", "/v2/trace/setting", 400, [1])),
    ("logging-verbose-wrong-type", Req("POST", "/v2/logging", 400, {"log_verbose_level": "loud"})),
    ("logging-info-wrong-type", Req("POST", "/v2/logging", 400, {"log_info": {"x": 1}})),
    ("shm-register-system", Req("POST", "/v2/systemsharedmemory/region/r/register", 403,
                                {"key": "/x", "offset": -1, "byte_size": "big"})),
    ("shm-register-cuda", Req("POST", "/v2/cudasharedmemory/region/r/register", 400,
                              {"raw_handle": {"b64": "!!"}, "device_id": "x", "byte_size": -1})),
    ("shm-input-reference", Req("POST", INFER, 400, with_input0(data=None, parameters={
        "shared_memory_region": "nope", "shared_memory_byte_size": 64}))),
]


def _read_answers(sock: socket.socket, count: int) -> list[int]:
    """The statuses of the first `count` complete answers (fewer if the server closes first); skips 1xx."""
    buffer = b""
    statuses: list[int] = []

    def fill() -> bool:
        nonlocal buffer
        chunk = sock.recv(65536)
        buffer += chunk
        return bool(chunk)

    while len(statuses) < count:
        while b"\r\n\r\n" not in buffer:
            if not fill():
                return statuses
        head, buffer = buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while not buffer.endswith(b"0\r\n\r\n"):
                if not fill():
                    break
            buffer = b""
        else:
            while len(buffer) < length:
                if not fill():
                    break
            buffer = buffer[length:]
        if status >= 200:
            statuses.append(status)
    return statuses


def send_raw(server: ServerProcess, data: bytes, count: int, half_close: bool = False) -> list[int]:
    with socket.create_connection((HOST, server.http_port), timeout=10.0) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before it read everything
        try:
            statuses = _read_answers(sock, count)
            if half_close:  # then the server closes (a socket timeout here fails the case: a wedged connection)
                while sock.recv(65536):
                    pass
            return statuses
        except ConnectionResetError:
            return []


@pytest.mark.parametrize("case", [pytest.param(c[1], id=c[0], marks=c[2] if len(c) > 2 else ()) for c in RAW_CASES])
def test_raw_http(server: ServerProcess, http: httpx.Client, case: Raw) -> None:
    assert send_raw(server, case.data, len(case.expect), case.half_close) == list(case.expect)
    assert_alive(server, http)


@pytest.mark.parametrize("case", [pytest.param(c[1], id=c[0], marks=c[2] if len(c) > 2 else ())
                                  for c in HTTP_CASES])
def test_http(server: ServerProcess, http: httpx.Client, case: Req) -> None:
    if case.body is None or isinstance(case.body, bytes):
        reply = http.request(case.method, case.path, content=case.body, headers=case.headers)
    else:
        reply = http.request(case.method, case.path, json=case.body, headers=case.headers)
    assert reply.status_code == case.expect, reply.text[:500]
    if reply.status_code >= 400 and reply.content:  # an error says why ("message" in TorchServe's format)
        assert {"error", "message"} & set(reply.json()), reply.text[:500]
    assert_alive(server, http)


# ---- gRPC cases ----

def grpc_tensor(name: str, *, datatype: str = "INT32", shape: Any = (1, 16),
                **extra: Any) -> service_pb2.ModelInferRequest.InferInputTensor:
    return service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=list(shape), **extra)


def grpc_infer(inputs: list[Any] | None = None, raw: list[bytes] | None = None, model: str = SIMPLE,
               **extra: Any) -> service_pb2.ModelInferRequest:
    if inputs is None:
        inputs = [grpc_tensor("INPUT0"), grpc_tensor("INPUT1")]
        raw = [INT32_BLOB, INT32_BLOB] if raw is None else raw
    return service_pb2.ModelInferRequest(model_name=model, inputs=inputs, raw_input_contents=raw or [], **extra)


def contents(**values: Any) -> service_pb2.InferTensorContents:
    return service_pb2.InferTensorContents(**values)


def param(**value: Any) -> service_pb2.InferParameter:
    return service_pb2.InferParameter(**value)


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
GRPC_CASES: list[Any] = [
    ("raw-size-short", "ModelInfer", grpc_infer(raw=[INT32_BLOB[:60], INT32_BLOB]), INVALID),
    ("raw-size-long", "ModelInfer", grpc_infer(raw=[INT32_BLOB + b"\0" * 4, INT32_BLOB]), INVALID),
    ("raw-size-odd", "ModelInfer", grpc_infer(raw=[INT32_BLOB[:63], INT32_BLOB]), INVALID),
    ("raw-count-short", "ModelInfer", grpc_infer(raw=[INT32_BLOB]), INVALID),
    ("raw-count-extra", "ModelInfer", grpc_infer(raw=[INT32_BLOB] * 3), INVALID),
    ("raw-and-contents", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", contents=contents(int_contents=A)), grpc_tensor("INPUT1")],
        [INT32_BLOB, INT32_BLOB]), INVALID),
    ("no-inputs", "ModelInfer", grpc_infer([], []), INVALID),
    ("missing-input", "ModelInfer", grpc_infer([grpc_tensor("INPUT0")], [INT32_BLOB]), INVALID),
    ("unknown-input", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0"), grpc_tensor("INPUT1"), grpc_tensor("INPUT7")], [INT32_BLOB] * 3), INVALID),
    ("duplicate-input", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0"), grpc_tensor("INPUT0"), grpc_tensor("INPUT1")], [INT32_BLOB] * 3), INVALID),
    ("empty-input-name", "ModelInfer", grpc_infer([grpc_tensor(""), grpc_tensor("INPUT1")], [INT32_BLOB] * 2),
     INVALID),
    ("datatype-mismatch", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", datatype="FP32"), grpc_tensor("INPUT1")], [INT32_BLOB] * 2), INVALID),
    ("datatype-unknown", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", datatype="WHAT"), grpc_tensor("INPUT1")], [INT32_BLOB] * 2), INVALID),
    ("datatype-empty", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", datatype=""), grpc_tensor("INPUT1")], [INT32_BLOB] * 2), INVALID),
    ("contents-wrong-field", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", contents=contents(fp32_contents=[1.0] * 16)),
         grpc_tensor("INPUT1", contents=contents(int_contents=B))]), INVALID),
    ("contents-count-mismatch", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", contents=contents(int_contents=A[:5])),
         grpc_tensor("INPUT1", contents=contents(int_contents=B))]), INVALID),
    ("contents-missing", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0"), grpc_tensor("INPUT1", contents=contents(int_contents=B))]), INVALID),
    ("shape-huge", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", shape=(2**62, 4, 0)), grpc_tensor("INPUT1")], [b"", INT32_BLOB]), INVALID),
    ("shape-huge-product", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", shape=(2**40, 2**40)), grpc_tensor("INPUT1")], [INT32_BLOB] * 2), INVALID),
    ("shape-negative", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", shape=(-1, 16)), grpc_tensor("INPUT1")], [INT32_BLOB] * 2), INVALID),
    ("shape-wrong-dims", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", shape=(1, 8)), grpc_tensor("INPUT1")], [INT32_BLOB[:32], INT32_BLOB]), INVALID),
    ("shape-over-batch", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", shape=(9, 16)), grpc_tensor("INPUT1", shape=(9, 16))], [INT32_BLOB * 9] * 2),
     INVALID),
    ("shape-over-max-elements", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", shape=(1, MAX_ELEMENTS + 16)), grpc_tensor("INPUT1")], [INT32_BLOB] * 2), INVALID),
    ("shape-empty", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", shape=()), grpc_tensor("INPUT1")], [INT32_BLOB[:4], INT32_BLOB]), INVALID),
    ("unknown-output", "ModelInfer", grpc_infer(
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="OUTPUT9")]), INVALID),
    ("unknown-model", "ModelInfer", grpc_infer(model="nope"), NOT_FOUND),
    ("empty-model-name", "ModelInfer", grpc_infer(model=""), NOT_FOUND),
    ("unloaded-model", "ModelInfer", grpc_infer(model="broken"), NOT_FOUND),
    ("version-not-number", "ModelInfer", grpc_infer(model_version="abc"), INVALID),
    ("version-missing", "ModelInfer", grpc_infer(model_version="7"), NOT_FOUND),
    ("param-priority-string", "ModelInfer", grpc_infer(parameters={"priority": param(string_param="high")}),
     INVALID),
    ("param-timeout-bool", "ModelInfer", grpc_infer(parameters={"timeout": param(bool_param=True)}), INVALID),
    ("param-shm-region-int", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", parameters={"shared_memory_region": param(int64_param=5)}), grpc_tensor("INPUT1")],
        [INT32_BLOB] * 2), INVALID),
    ("shm-unknown-region", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", parameters={"shared_memory_region": param(string_param="nope"),
                                           "shared_memory_byte_size": param(int64_param=64)}),
         grpc_tensor("INPUT1")], [INT32_BLOB]), INVALID),
    ("output-classification-string", "ModelInfer", grpc_infer(outputs=[
        service_pb2.ModelInferRequest.InferRequestedOutputTensor(
            name="OUTPUT0", parameters={"classification": param(string_param="x")})]), INVALID),
    ("bytes-bad-length-prefix", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", datatype="BYTES")], [struct.pack("<I", 1000) + b"abc"], model=SIMPLE_STRING),
     INVALID),
    ("bytes-raw-count-mismatch", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", datatype="BYTES")], [struct.pack("<I", 1) + b"a"], model=SIMPLE_STRING), INVALID),
    ("fp32-raw-size-mismatch", "ModelInfer", grpc_infer(
        [grpc_tensor("INPUT0", datatype="FP32", shape=(1, 4))], [b"\0" * 15], model=FP32), INVALID),
    # A parameter without a value counts as not given; a sequence_id is ignored by a model without sequence batching.
    ("param-unset-value", "ModelInfer", grpc_infer(parameters={"priority": param()}), grpc.StatusCode.OK),
    ("param-sequence-id-non-sequence", "ModelInfer", grpc_infer(parameters={"sequence_id": param(int64_param=3)}),
     grpc.StatusCode.OK),
    ("stats-bad-version", "ModelStatistics", service_pb2.ModelStatisticsRequest(name=SIMPLE, version="v1"), INVALID),
    ("config-bad-version", "ModelConfig", service_pb2.ModelConfigRequest(name=SIMPLE, version="-3"), INVALID),
    ("trace-level-unknown", "TraceSetting", service_pb2.TraceSettingRequest(
        settings={"trace_level": service_pb2.TraceSettingRequest.SettingValue(value=["LOUD"])}), INVALID),
    ("log-info-wrong-type", "LogSettings", service_pb2.LogSettingsRequest(
        settings={"log_info": service_pb2.LogSettingsRequest.SettingValue(string_param="yes")}), INVALID),
    ("shm-status-unknown-region", "SystemSharedMemoryStatus",
     service_pb2.SystemSharedMemoryStatusRequest(name="nope"), INVALID),
    ("load-upload-not-onnx", "RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(
        model_name="upload", parameters={
            "config": service_pb2.ModelRepositoryParameter(string_param=json.dumps({"backend": "onnxruntime"})),
            "file:1/model.onnx": service_pb2.ModelRepositoryParameter(bytes_param=b"\0")}),
     INVALID),
    ("metadata-unknown-model", "ModelMetadata", service_pb2.ModelMetadataRequest(name="nope"), NOT_FOUND),
    ("metadata-bad-version", "ModelMetadata", service_pb2.ModelMetadataRequest(name=SIMPLE, version="x"),
     INVALID),
    ("ready-unknown-model", "ModelReady", service_pb2.ModelReadyRequest(name="nope"), grpc.StatusCode.OK),
    ("config-unknown-model", "ModelConfig", service_pb2.ModelConfigRequest(name="nope"), NOT_FOUND),
    ("stats-unknown-model", "ModelStatistics", service_pb2.ModelStatisticsRequest(name="nope"), NOT_FOUND),
    ("load-missing-model", "RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name="nope"),
     NOT_FOUND),
    ("load-bad-config", "RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(
        model_name=SIMPLE, parameters={"config": service_pb2.ModelRepositoryParameter(string_param="{oops")}),
     INVALID),
    ("load-config-wrong-type", "RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(
        model_name=SIMPLE, parameters={"config": service_pb2.ModelRepositoryParameter(int64_param=3)}), INVALID),
    ("unload-missing-model", "RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name="nope"),
     NOT_FOUND),
    ("trace-rate-not-number", "TraceSetting", service_pb2.TraceSettingRequest(
        settings={"trace_rate": service_pb2.TraceSettingRequest.SettingValue(value=["fast"])}), INVALID),
    ("trace-unknown-model", "TraceSetting", service_pb2.TraceSettingRequest(model_name="nope"), INVALID),
    ("log-verbose-wrong-type", "LogSettings", service_pb2.LogSettingsRequest(
        settings={"log_verbose_level": service_pb2.LogSettingsRequest.SettingValue(string_param="loud")}), INVALID),
    ("shm-register-system", "SystemSharedMemoryRegister", service_pb2.SystemSharedMemoryRegisterRequest(
        name="r", key="/x", offset=0, byte_size=64), grpc.StatusCode.PERMISSION_DENIED),
    ("shm-register-cuda", "CudaSharedMemoryRegister", service_pb2.CudaSharedMemoryRegisterRequest(
        name="r", raw_handle=b"\0", device_id=-1, byte_size=64), grpc.StatusCode.UNIMPLEMENTED),
    ("message-over-limit", "ModelInfer", grpc_infer(raw=[b"\0" * (GRPC_MAX + 1), INT32_BLOB]),
     grpc.StatusCode.RESOURCE_EXHAUSTED),
]

# Bytes that are no valid ModelInferRequest: sent through a method whose request serializer passes them on as is.
MALFORMED_PROTOBUF: list[Any] = [
    ("protobuf-garbage", b"\xff\xff\xff\xff\xff", INVALID),
    ("protobuf-truncated", grpc_infer().SerializeToString()[:-7], INVALID),
    # A known field with another wire type is kept as an unknown field: an empty request, no model named.
    ("protobuf-wrong-wire-type", b"\x0d\x00\x00\x00\x00", NOT_FOUND),
]


def call(stub: Any, server: ServerProcess, method: str, request: Any) -> grpc.StatusCode:
    try:
        getattr(stub, method)(request, timeout=10.0)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("method", "request_", "expect"),
                         [pytest.param(*c[1:4], id=c[0], marks=c[4] if len(c) > 4 else ()) for c in GRPC_CASES])
def test_grpc(server: ServerProcess, http: httpx.Client, stub: Any, method: str, request_: Any,
              expect: grpc.StatusCode) -> None:
    assert call(stub, server, method, request_) == expect
    assert_alive(server, http)


@pytest.mark.parametrize(("data", "expect"),
                         [pytest.param(*c[1:3], id=c[0], marks=c[3] if len(c) > 3 else ()) for c in MALFORMED_PROTOBUF])
def test_grpc_malformed_protobuf(server: ServerProcess, http: httpx.Client, data: bytes,
                                 expect: grpc.StatusCode) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda raw: raw,
                                    response_deserializer=service_pb2.ModelInferResponse.FromString)
        try:
            infer(data, timeout=10.0)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
    assert code == expect
    assert_alive(server, http)


STREAM_CASES: list[Any] = [
    ("stream-unknown-model", grpc_infer(model="nope")),
    ("stream-raw-size-short", grpc_infer(raw=[INT32_BLOB[:8], INT32_BLOB])),
    ("stream-huge-shape", grpc_infer([grpc_tensor("INPUT0", shape=(2**62, 4, 0)), grpc_tensor("INPUT1")],
                                     [b"", INT32_BLOB])),
]


@pytest.mark.parametrize("request_", [pytest.param(c[1], id=c[0]) for c in STREAM_CASES])
def test_grpc_stream(server: ServerProcess, http: httpx.Client, stub: Any, request_: Any) -> None:
    """On ModelStreamInfer a bad request is answered in the stream (error_message), which then goes on: a valid
    request after it on the same stream still gets its result, and the stream ends OK."""
    valid = grpc_infer()
    replies = list(stub.ModelStreamInfer(iter([request_, valid]), timeout=10.0))
    assert [bool(r.error_message) for r in replies] == [True, False], replies
    sums = struct.unpack("<16i", replies[1].infer_response.raw_output_contents[0])
    assert list(sums) == [2 * a for a in A]
    assert_alive(server, http)


def test_no_unexpected_tracebacks(server: ServerProcess, http: httpx.Client) -> None:
    """After the cases (run last in file order), the server's log holds no traceback: bad input is refused by
    validation, not by an exception that escaped."""
    assert_alive(server, http)
    lines = server.log().splitlines()
    escaped = [next((x for x in lines[i + 1:] if x and not x[0].isspace()), "")
               for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    assert not escaped, escaped


def test_case_count() -> None:
    """The suite keeps at least 80 cases, each with a unique id."""
    ids = [c[0] for c in RAW_CASES + HTTP_CASES] + [c[0] for c in GRPC_CASES + MALFORMED_PROTOBUF + STREAM_CASES]
    assert len(ids) >= 80
    assert len(set(c[0] for c in RAW_CASES + HTTP_CASES)) == len(RAW_CASES) + len(HTTP_CASES)
    assert len(set(c[0] for c in GRPC_CASES + MALFORMED_PROTOBUF)) == len(GRPC_CASES) + len(MALFORMED_PROTOBUF)

