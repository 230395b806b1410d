"""Fuzz targets, one per decoder of what arrives from the network or the repository.

Each `fuzz_*` takes arbitrary bytes and must either decode them or raise the protocol's own error (InferError,
ConfigError, SeldonError, AuthConfigError); anything else — an IndexError, a RecursionError, a MemoryError from a
declared shape, a hang — is a bug the fuzzer reports. Run one with atheris (`pip install atheris`):

    python fuzz/run.py v2_http -atheris_runs=200000
    python fuzz/run.py grpc_infer corpus/ -max_len=4096

The test suite feeds each target its seeds (tests/unit/test_fuzz_targets.py), so the targets cannot rot.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tritonclient.grpc import service_pb2 as pb

from inferd.compat.seldon.protocol import SeldonError, decode_body, extract
from inferd.config import ConfigError, parse_config
from inferd.frontends.grpc.codec import decode_infer_request as decode_grpc
from inferd.frontends.http.v2 import decode_infer_request as decode_http
from inferd.frontends.tensors import decode_nested
from inferd.gateway.config import AuthConfigError, parse_auth_config
from inferd.limits import RequestLimits
from inferd.types import InferError

# Small limits, so a fuzzed shape cannot make the target allocate gigabytes: what the server's flags bound too.
LIMITS = RequestLimits(max_tensor_elements=1 << 16, max_inputs=64)


def fuzz_v2_http(data: bytes) -> None:
    """A V2 HTTP inference body (JSON, or a JSON header and binary tensors: the first byte picks the split)."""
    header_length = data[0] if data and data[0] < len(data) and data[0] % 2 else None
    try:
        decode_http(data[1:] if header_length is not None else data, header_length, "m", "", LIMITS)
    except InferError:
        pass


def fuzz_grpc_infer(data: bytes) -> None:
    """A gRPC ModelInferRequest as it comes off the wire (protobuf bytes)."""
    request = pb.ModelInferRequest()
    try:
        request.ParseFromString(data)
    except Exception:  # google.protobuf.message.DecodeError: grpc refuses such a message before the servicer
        return
    try:
        decode_grpc(request, LIMITS)
    except InferError:
        pass


def fuzz_v1_values(data: bytes) -> None:
    """A V1 (TF-Serving) tensor value: nested JSON lists of any type."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return
    for datatype in ("FP32", "INT32", "BOOL", "BYTES"):
        try:
            decode_nested("x", datatype, value, "the instances")
        except InferError:
            pass


def fuzz_seldon(data: bytes) -> None:
    """A Seldon message body (JSON, form or multipart) and its data (ndarray, tensor, strData, binData, jsonData)."""
    content_type = "multipart/form-data; boundary=b" if data[:1] == b"-" else "application/json"
    try:
        extract(decode_body(data, content_type, ""))
    except (SeldonError, InferError):
        pass


def fuzz_model_config(data: bytes) -> None:
    """A config.pbtxt (protobuf text format)."""
    try:
        parse_config(data.decode("utf-8", errors="replace"))
    except ConfigError:
        pass


def fuzz_auth_config(data: bytes) -> None:
    """The auth file's content, as JSON."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(value, dict):
        return
    try:
        parse_auth_config(value)
    except AuthConfigError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {
    "v2_http": fuzz_v2_http, "grpc_infer": fuzz_grpc_infer, "v1_values": fuzz_v1_values, "seldon": fuzz_seldon,
    "model_config": fuzz_model_config, "auth_config": fuzz_auth_config,
}


def _grpc_seed() -> bytes:
    request = pb.ModelInferRequest(model_name="m", id="1")
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[1, 2])
    tensor.contents.int_contents.extend([1, 2])
    request.raw_input_contents.append(b"\x01\x00\x00\x00\x02\x00\x00\x00")
    return request.SerializeToString()


# Valid and near-valid inputs each target starts from (and the unit test runs).
SEEDS: dict[str, list[bytes]] = {
    "v2_http": [b'{"inputs":[{"name":"x","datatype":"INT32","shape":[1,2],"data":[1,2]}]}',
                b'{"id":"a","inputs":[{"name":"s","datatype":"BYTES","shape":[1],"data":["hi"]}],"outputs":[]}',
                b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1.5, 1e39]}]}',
                b"\x41" + b'{"inputs":[{"name":"x","datatype":"INT32","shape":[1],'
                b'"parameters":{"binary_data_size":4}}]}' + b"\x00\x00\x00\x01",
                b"[" * 5000, b'{"inputs":[{"name":"x","datatype":"INT32","shape":[4611686018427387904,4,0]}]}'],
    "grpc_infer": [_grpc_seed(), b"\x0a\x01m\x22\x0a\x0a\x01x\x12\x04INT32\x1a\x01\xff"],
    "v1_values": [b"[[1, 2], [3, 4]]", b'[[1, "a"], [2]]', b"[true, 1.5, null]", b"[" * 3000 + b"]" * 3000],
    "seldon": [b'{"data":{"ndarray":[[1,2]],"names":["a","b"]}}', b'{"data":{"tensor":{"shape":[2],"values":[1,2]}}}',
               b'{"strData":"x"}', b'{"binData":"AAE="}', b"json=%7B%7D", b"--b\r\nContent-Disposition: form-data; "
               b'name="strData"\r\n\r\nhi\r\n--b--\r\n'],
    "model_config": [b'name: "m" platform: "onnxruntime_onnx" max_batch_size: 8 '
                     b'input [{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }]',
                     b"dynamic_batching { max_queue_delay_microseconds: 100 }", b"{{{", b"name: 1"],
    "auth_config": [b'{"admin_keys":["k"],"tenants":[{"name":"a","keys":["x"],"models":["m:1"],'
                    b'"rate_limit":{"requests_per_second":1,"burst":2}}]}', b'{"tenants":[{"name":"admin"}]}',
                    b'{"tenants":[{"name":"a","keys":[{"key":"sha256:zz"}]}]}'],
}
