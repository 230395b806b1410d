"""The V2 HTTP codec: JSON bodies, Triton's binary tensor data extension, and response encoding."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import orjson
import pytest

from inferd.frontends.http.v2 import OutputOptions, decode_infer_request, encode_infer_response, load_json_object
from inferd.limits import RequestLimits
from inferd.types import ErrorKind, InferenceResponse, InferError, SharedMemoryRef


def _binary_body(doc: dict, *blobs: bytes) -> tuple[bytes, int]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), len(header)


def _split(body: bytes, header_length: int | None) -> tuple[dict, bytes]:
    if header_length is None:
        return json.loads(body), b""
    return json.loads(body[:header_length]), body[header_length:]


def test_json_request() -> None:
    body = orjson.dumps({
        "id": "req-1",
        "inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]},
                   {"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["a", "é"]}],
        "outputs": [{"name": "OUTPUT1"}],
        "parameters": {"priority": 1},
    })
    request, options = decode_infer_request(body, None, "simple", "2")
    assert request.model_name == "simple"
    assert request.model_version == "2"
    assert request.id == "req-1"
    assert request.inputs["INPUT0"].dtype == np.int32
    assert request.inputs["INPUT0"].tolist() == [[1, 2, 3]]
    assert request.inputs["TEXT"].tolist() == [b"a", "é".encode()]
    assert request.datatypes == {"INPUT0": "INT32", "TEXT": "BYTES"}
    assert [o.name for o in request.outputs or []] == ["OUTPUT1"]
    assert request.parameters == {"priority": 1}
    assert not options.is_binary("OUTPUT1")


def test_no_outputs_means_all_outputs() -> None:
    body = orjson.dumps({"inputs": [{"name": "I", "datatype": "FP32", "shape": [1], "data": [1.5]}]})
    request, _ = decode_infer_request(body, None, "m", "")
    assert request.outputs is None
    assert request.id == ""


def test_binary_request() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    text = struct.pack("<I", 2) + b"\xff\x00"
    body, length = _binary_body({
        "inputs": [
            {"name": "A", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": values.nbytes}},
            {"name": "B", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(text)}},
            {"name": "C", "datatype": "INT64", "shape": [2], "data": [7, 8]},
        ],
        "outputs": [{"name": "X", "parameters": {"binary_data": True}}, {"name": "Y"}],
    }, values.tobytes(), text)
    request, options = decode_infer_request(body, length, "m", "")
    np.testing.assert_array_equal(request.inputs["A"], values)
    assert request.inputs["B"].tolist() == [b"\xff\x00"]
    assert request.inputs["C"].tolist() == [7, 8]
    assert options.is_binary("X")
    assert not options.is_binary("Y")


def test_binary_data_output_applies_to_every_output_not_asked_as_json() -> None:
    body = orjson.dumps({
        "inputs": [{"name": "I", "datatype": "FP32", "shape": [1], "data": [1]}],
        "outputs": [{"name": "X"}, {"name": "Y", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": True},
    })
    _, options = decode_infer_request(body, None, "m", "")
    assert options.is_binary("X")
    assert not options.is_binary("Y")


def test_fp16_can_come_as_binary_data() -> None:
    values = np.array([1.5, -2.0], dtype=np.float16)
    body, length = _binary_body({"inputs": [{"name": "H", "datatype": "FP16", "shape": [2],
                                             "parameters": {"binary_data_size": 4}}]}, values.tobytes())
    request, _ = decode_infer_request(body, length, "m", "")
    assert request.inputs["H"].dtype == np.float16
    np.testing.assert_array_equal(request.inputs["H"], values)


def _invalid(body: bytes, header_length: int | None = None) -> str:
    with pytest.raises(InferError) as exc:
        decode_infer_request(body, header_length, "m", "")
    assert exc.value.kind.http_status == 400
    return exc.value.message


def test_fp16_as_json_is_invalid_and_says_to_use_binary() -> None:
    message = _invalid(orjson.dumps({"inputs": [{"name": "H", "datatype": "FP16", "shape": [1], "data": [1.0]}]}))
    assert "binary" in message.lower()


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[]",
    b'{"inputs": {}}',
    b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"name": "I", "datatype": "FP32", "data": [1]}]}',
    b'{"inputs": [{"name": "I", "datatype": "FP32", "shape": [1]}]}',
    b'{"inputs": [{"name": "I", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}',
    b'{"inputs": [{"name": "I", "datatype": "NOPE", "shape": [1], "data": [1]}]}',
    b'{"inputs": [{"name": "I", "datatype": "FP32", "shape": [1], "data": [1]},'
    b' {"name": "I", "datatype": "FP32", "shape": [1], "data": [1]}]}',
    b'{"inputs": [], "outputs": {}}',
    b'{"inputs": [], "outputs": [{"parameters": {}}]}',
])
def test_malformed_json_requests_are_invalid(body: bytes) -> None:
    _invalid(body)


def test_binary_data_size_needs_the_header_length() -> None:
    body = orjson.dumps({"inputs": [{"name": "I", "datatype": "FP32", "shape": [1],
                                     "parameters": {"binary_data_size": 4}}]})
    message = _invalid(body)
    assert "Inference-Header-Content-Length" in message


def test_truncated_binary_data_is_invalid() -> None:
    body, length = _binary_body({"inputs": [{"name": "I", "datatype": "FP32", "shape": [4],
                                             "parameters": {"binary_data_size": 16}}]}, b"\x00" * 16)
    _invalid(body[:-1], length)


@pytest.mark.parametrize("delta", [1, -1, 10_000])
def test_wrong_header_length_is_invalid(delta: int) -> None:
    body, length = _binary_body({"inputs": [{"name": "I", "datatype": "FP32", "shape": [1],
                                             "parameters": {"binary_data_size": 4}}]}, b"\x00" * 4)
    _invalid(body, length + delta)


def test_negative_header_length_is_invalid() -> None:
    _invalid(b"{}", -1)


def test_bytes_beyond_the_inputs_are_invalid() -> None:
    body, length = _binary_body({"inputs": [{"name": "I", "datatype": "FP32", "shape": [1],
                                             "parameters": {"binary_data_size": 4}}]}, b"\x00" * 8)
    _invalid(body, length)


def test_nan_and_infinity_in_request_json_are_read() -> None:
    body = b'{"inputs": [{"name": "I", "datatype": "FP32", "shape": [3], "data": [NaN, Infinity, -Infinity]}]}'
    request, _ = decode_infer_request(body, None, "m", "")
    values = request.inputs["I"]
    assert math.isnan(values[0])
    assert values[1] == np.inf
    assert values[2] == -np.inf


def _response(**outputs: np.ndarray) -> InferenceResponse:
    return InferenceResponse("m", "1", dict(outputs), "id-7")


def test_encode_json_response() -> None:
    body, length = encode_infer_response(
        _response(A=np.array([[1, 2]], dtype=np.int32), T=np.array([b"x", "é".encode()], dtype=object)),
        OutputOptions())
    assert length is None
    doc = json.loads(body)
    assert doc["model_name"] == "m"
    assert doc["model_version"] == "1"
    assert doc["id"] == "id-7"
    assert doc["outputs"] == [
        {"name": "A", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
        {"name": "T", "datatype": "BYTES", "shape": [2], "data": ["x", "é"]},
    ]


def test_encode_binary_response() -> None:
    values = np.arange(4, dtype=np.float64)
    body, length = encode_infer_response(_response(A=values, B=np.array([True])),
                                         OutputOptions(binary=frozenset({"A"})))
    assert length is not None
    doc, blob = _split(body, length)
    a, b = doc["outputs"]
    assert a["parameters"] == {"binary_data_size": values.nbytes}
    assert "data" not in a
    assert blob == values.tobytes()
    assert b["data"] == [True]


def test_encode_fp16_as_json_numbers() -> None:
    body, _ = encode_infer_response(_response(H=np.array([1.5, -2.0], dtype=np.float16)), OutputOptions())
    out = json.loads(body)["outputs"][0]
    assert out["datatype"] == "FP16"
    assert out["data"] == [1.5, -2.0]


def test_encode_nan_and_infinity_as_json_tokens() -> None:
    values = np.array([np.nan, np.inf, -np.inf, 1.25], dtype=np.float32)
    body, _ = encode_infer_response(_response(F=values), OutputOptions())
    data = json.loads(body)["outputs"][0]["data"]
    assert math.isnan(data[0])
    assert data[1:] == [math.inf, -math.inf, 1.25]


def test_non_utf8_bytes_output_cannot_go_as_json() -> None:
    with pytest.raises(InferError) as exc:
        encode_infer_response(_response(T=np.array([b"\xff"], dtype=object)), OutputOptions())
    assert "binary" in exc.value.message
    body, length = encode_infer_response(_response(T=np.array([b"\xff"], dtype=object)),
                                         OutputOptions(binary_all=True))
    _, blob = _split(body, length)
    assert blob == struct.pack("<I", 1) + b"\xff"


def test_load_json_object() -> None:
    assert load_json_object(b"") == {}
    assert load_json_object(b"  ") == {}
    assert load_json_object(b'{"ready": true}') == {"ready": True}
    with pytest.raises(InferError):
        load_json_object(b"[1]")
    with pytest.raises(InferError):
        load_json_object(b"{")


def _invalid_with(body: bytes, *words: str, limits: RequestLimits | None = None) -> None:
    with pytest.raises(InferError) as caught:
        decode_infer_request(body, None, "m", "", *(() if limits is None else (limits,)))
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    for word in words:
        assert word in caught.value.message


def test_shared_memory_input_is_left_for_the_core() -> None:
    body = orjson.dumps({"inputs": [
        {"name": "A", "datatype": "FP32", "shape": [2, 2],
         "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16, "shared_memory_offset": 8}},
        {"name": "B", "datatype": "INT32", "shape": [1], "data": [5]},
    ]})
    request, _ = decode_infer_request(body, None, "m", "")
    assert request.shared_inputs == {"A": ((2, 2), SharedMemoryRef("in", 16, 8))}
    assert "A" not in request.inputs
    assert request.inputs["B"].tolist() == [5]
    assert request.datatypes == {"A": "FP32", "B": "INT32"}


def test_shared_memory_input_with_data_too() -> None:
    _invalid_with(orjson.dumps({"inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "data": [1],
                                       "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 4}}]}),
             "'A'", "shared memory", "'data'")


def test_data_count_must_match_the_shape() -> None:
    _invalid_with(orjson.dumps({"inputs": [{"name": "A", "datatype": "INT32", "shape": [2, 3], "data": [1, 2, 3]}]}),
             "'A'", "6 elements", "got 3")


def test_an_input_given_twice() -> None:
    item = {"name": "A", "datatype": "INT32", "shape": [1], "data": [1]}
    _invalid_with(orjson.dumps({"inputs": [item, item]}), "'A'", "more than once")


def test_limits_are_checked_on_declared_shapes_before_data() -> None:
    limits = RequestLimits(max_tensor_elements=100, max_inputs=1)
    _invalid_with(orjson.dumps({"inputs": [{"name": "A", "datatype": "FP32", "shape": [1000, 1000]}]}),
             "'A'", "--max-tensor-elements", limits=limits)
    item = {"datatype": "INT32", "shape": [1], "data": [1]}
    _invalid_with(orjson.dumps({"inputs": [{"name": "A", **item}, {"name": "B", **item}]}), "2 inputs", "--max-inputs",
             limits=limits)


def _decode_one(datatype: str, shape: list[int], data: object, name: str = "INPUT0") -> np.ndarray:
    body = orjson.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]})
    request, _ = decode_infer_request(body, None, "m", "")
    return request.inputs[name]


@pytest.mark.parametrize(("datatype", "data", "expected"), [
    ("FP32", [0.5, 1, -2.25], np.array([0.5, 1, -2.25], dtype=np.float32)),
    ("FP64", [[0.1, 2], [3, 4.5]], np.array([0.1, 2, 3, 4.5])),  # nested lists: the element count decides
    ("INT64", [1, -2, 2**62], np.array([1, -2, 2**62], dtype=np.int64)),
    ("INT32", [1, -2, 2**31 - 1], np.array([1, -2, 2**31 - 1], dtype=np.int32)),
    ("UINT8", [0, 255], np.array([0, 255], dtype=np.uint8)),
])
def test_number_data_without_booleans_converts_to_the_datatype(datatype: str, data: list,
                                                                 expected: np.ndarray) -> None:
    array = _decode_one(datatype, [len(expected)], data)
    assert array.dtype == expected.dtype and array.shape == expected.shape
    assert np.array_equal(array, expected)


@pytest.mark.parametrize(("datatype", "data", "words"), [
    ("FP32", [1.0, "2"], "must be numbers, got str '2' (element 1)"),
    ("FP32", [1.0, None], "must be numbers, got null (element 1)"),
    ("FP32", [1.0, 1e39], "value 1e+39 (element 1) is out of the range of FP32"),
    ("INT64", [1, 2.5], "must be integers, got float 2.5 (element 1)"),
    ("INT64", [1, 2**63], "(element 1) is out of the range of INT64"),
    ("FP32", [1.0, True], "must be numbers, got true (element 1)"),
    ("INT32", [1, 2**31], "(element 1) is out of the range of INT32"),
    ("UINT8", [1, -1], "(element 1) is out of the range of UINT8"),
    ("FP64", [1.0, [2.0]], "mix lists and values at one level"),
])
def test_values_not_of_the_datatype_are_refused_by_name(datatype: str, data: list, words: str) -> None:
    with pytest.raises(InferError) as info:
        _decode_one(datatype, [2], data)
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT and words in info.value.message


def test_a_true_elsewhere_in_the_document_changes_no_answer() -> None:
    # A name holding "true" makes the decoder take the strict path for every input: same arrays, same errors.
    assert np.array_equal(_decode_one("FP32", [2], [1, 2.5], name="true"), np.array([1, 2.5], dtype=np.float32))
    with pytest.raises(InferError, match="got str"):
        _decode_one("FP32", [2], [1, "x"], name="true")
