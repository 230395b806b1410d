"""The V2 gRPC codec: `ModelInferRequest` → the core's request, the core's response → `ModelInferResponse`."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import InferResult
from tritonclient.grpc import service_pb2 as pb

from inferd.frontends.grpc.codec import decode_infer_request, encode_infer_response
from inferd.limits import RequestLimits
from inferd.types import ErrorKind, InferenceResponse, InferError, SharedMemoryRef


def _bytes_raw(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _request(*inputs: dict[str, Any], raw: list[bytes] | None = None, **fields: Any) -> Any:
    """A ModelInferRequest for model "m"; each input a dict of InferInputTensor fields (`contents` as a dict,
    `parameters` as plain values)."""
    message = pb.ModelInferRequest(model_name="m", **fields)
    for spec in inputs:
        tensor = message.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for field, values in spec.get("contents", {}).items():
            getattr(tensor.contents, field).extend(values)
        for key, value in spec.get("parameters", {}).items():
            if isinstance(value, str):
                tensor.parameters[key].string_param = value
            else:
                tensor.parameters[key].int64_param = value
    message.raw_input_contents.extend(raw or [])
    return message


def _invalid(request: Any, *words: str, limits: RequestLimits | None = None) -> str:
    with pytest.raises(InferError) as caught:
        if limits is None:
            decode_infer_request(request)
        else:
            decode_infer_request(request, limits)
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    for word in words:
        assert word in caught.value.message
    return caught.value.message


# ---- decoding: raw_input_contents ----

def test_raw_contents_become_arrays_in_input_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([7, -8], dtype=np.int64)
    request = _request({"name": "A", "datatype": "FP32", "shape": [2, 3]},
                       {"name": "B", "datatype": "INT64", "shape": [2]},
                       raw=[a.tobytes(), b.tobytes()], model_version="3", id="req-9")
    decoded = decode_infer_request(request)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "3", "req-9")
    assert decoded.inputs["A"].dtype == np.float32
    np.testing.assert_array_equal(decoded.inputs["A"], a)
    assert decoded.inputs["B"].dtype == np.int64
    np.testing.assert_array_equal(decoded.inputs["B"], b)
    assert decoded.datatypes == {"A": "FP32", "B": "INT64"}
    assert decoded.outputs is None  # no outputs named: the model's all
    assert decoded.shared_inputs == {}


def test_raw_bytes_input_is_length_prefixed_elements() -> None:
    request = _request({"name": "T", "datatype": "BYTES", "shape": [1, 3]},
                       raw=[_bytes_raw(b"abc", b"", "é".encode())])
    decoded = decode_infer_request(request)
    assert decoded.inputs["T"].dtype == np.object_
    assert decoded.inputs["T"].tolist() == [[b"abc", b"", "é".encode()]]


def test_fp16_travels_only_as_raw_contents() -> None:
    half = np.array([1.5, -2.0], dtype=np.float16)
    decoded = decode_infer_request(_request({"name": "H", "datatype": "FP16", "shape": [2]}, raw=[half.tobytes()]))
    np.testing.assert_array_equal(decoded.inputs["H"], half)
    _invalid(_request({"name": "H", "datatype": "FP16", "shape": [2], "contents": {"fp32_contents": [1.5, -2.0]}}),
             "FP16", "raw_input_contents")


def test_outputs_and_parameters_are_decoded() -> None:
    request = _request({"name": "A", "datatype": "INT32", "shape": [1], "contents": {"int_contents": [1]}})
    request.outputs.add(name="Y")
    classified = request.outputs.add(name="Z")
    classified.parameters["classification"].int64_param = 2
    request.parameters["priority"].int64_param = 3
    request.parameters["sequence_start"].bool_param = True
    request.parameters["tag"].string_param = "x"
    decoded = decode_infer_request(request)
    assert [(o.name, o.parameters) for o in decoded.outputs or []] == [("Y", {}), ("Z", {"classification": 2})]
    assert decoded.parameters == {"priority": 3, "sequence_start": True, "tag": "x"}


# ---- decoding: typed contents ----

@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), [
    ("BOOL", "bool_contents", [True, False], np.bool_),
    ("INT8", "int_contents", [-128, 127], np.int8),
    ("INT32", "int_contents", [-5, 6], np.int32),
    ("INT64", "int64_contents", [-(2**40), 2**40], np.int64),
    ("UINT8", "uint_contents", [0, 255], np.uint8),
    ("UINT64", "uint64_contents", [0, 2**63 + 1], np.uint64),
    ("FP32", "fp32_contents", [0.5, -1.25], np.float32),
    ("FP64", "fp64_contents", [0.1, 1e300], np.float64),
])
def test_typed_contents(datatype: str, field: str, values: list[Any], dtype: Any) -> None:
    decoded = decode_infer_request(_request({"name": "X", "datatype": datatype, "shape": [1, 2],
                                             "contents": {field: values}}))
    array = decoded.inputs["X"]
    assert array.dtype == dtype
    assert array.shape == (1, 2)
    assert array.ravel().tolist() == values


def test_typed_bytes_contents() -> None:
    decoded = decode_infer_request(_request({"name": "T", "datatype": "BYTES", "shape": [2],
                                             "contents": {"bytes_contents": [b"\xff\x00", b"ok"]}}))
    assert decoded.inputs["T"].tolist() == [b"\xff\x00", b"ok"]


def test_empty_tensor_needs_no_data_but_others_do() -> None:
    decoded = decode_infer_request(_request({"name": "E", "datatype": "FP32", "shape": [0, 3]}))
    assert decoded.inputs["E"].shape == (0, 3)
    _invalid(_request({"name": "X", "datatype": "FP32", "shape": [1, 3]}), "unable to find data", "'X'")


def test_contents_in_the_wrong_field_name_the_right_one() -> None:
    _invalid(_request({"name": "X", "datatype": "FP32", "shape": [2], "contents": {"int_contents": [1, 2]}}),
             "contents.fp32_contents", "contents.int_contents")


def test_typed_contents_count_must_match_the_shape() -> None:
    _invalid(_request({"name": "X", "datatype": "INT32", "shape": [2, 3], "contents": {"int_contents": [1] * 5}}),
             "'X'", "6 elements", "got 5")
    _invalid(_request({"name": "T", "datatype": "BYTES", "shape": [3], "contents": {"bytes_contents": [b"a"]}}),
             "'T'", "3 elements", "got 1")


def test_unknown_datatype() -> None:
    _invalid(_request({"name": "X", "datatype": "COMPLEX", "shape": [1], "contents": {"int_contents": [1]}}),
             "COMPLEX")


# ---- decoding: errors of raw contents ----

def test_fewer_raw_contents_than_inputs() -> None:
    request = _request({"name": "A", "datatype": "INT32", "shape": [1]},
                       {"name": "B", "datatype": "INT32", "shape": [1]},
                       raw=[np.int32(1).tobytes()])
    _invalid(request, "expected 2 raw_input_contents", "got 1")


def test_more_raw_contents_than_inputs() -> None:
    one = np.int32(1).tobytes()
    _invalid(_request({"name": "A", "datatype": "INT32", "shape": [1]}, raw=[one, one]),
             "expected 1 raw_input_contents", "got 2")


def test_raw_byte_size_must_match_the_shape() -> None:
    _invalid(_request({"name": "A", "datatype": "FP32", "shape": [2, 2]}, raw=[b"\0" * 12]), "'A'", "12", "16")


def test_raw_bytes_elements_must_match_the_shape() -> None:
    _invalid(_request({"name": "T", "datatype": "BYTES", "shape": [2]}, raw=[_bytes_raw(b"x")]),
             "'T'", "expected 2 BYTES elements", "got 1")
    _invalid(_request({"name": "T", "datatype": "BYTES", "shape": [1]}, raw=[struct.pack("<I", 10) + b"abc"]),
             "'T'", "runs past")


def test_raw_and_typed_contents_together() -> None:
    request = _request({"name": "A", "datatype": "INT32", "shape": [1], "contents": {"int_contents": [1]}},
                       raw=[np.int32(1).tobytes()])
    _invalid(request, "contents field must not be specified", "'A'")


def test_an_input_named_twice() -> None:
    request = _request({"name": "A", "datatype": "INT32", "shape": [1], "contents": {"int_contents": [1]}},
                       {"name": "A", "datatype": "INT32", "shape": [1], "contents": {"int_contents": [2]}})
    _invalid(request, "'A'", "more than once")


def test_limits_are_checked_on_declared_shapes_before_data() -> None:
    limits = RequestLimits(max_tensor_elements=100, max_inputs=1)
    # No data at all: the declared shape alone is refused, so a huge shape never allocates anything.
    _invalid(_request({"name": "A", "datatype": "FP32", "shape": [1000, 1000]}), "'A'", "--max-tensor-elements",
             limits=limits)
    two = _request({"name": "A", "datatype": "INT32", "shape": [1], "contents": {"int_contents": [1]}},
                   {"name": "B", "datatype": "INT32", "shape": [1], "contents": {"int_contents": [1]}})
    _invalid(two, "2 inputs", "--max-inputs", limits=limits)


def test_negative_dimension() -> None:
    _invalid(_request({"name": "A", "datatype": "INT32", "shape": [-1], "contents": {"int_contents": [1]}}),
             "'A'", "non-negative")


# ---- decoding: shared memory ----

def test_shared_memory_input_is_left_for_the_core() -> None:
    b = np.array([1, 2], dtype=np.int32)
    request = _request(
        {"name": "A", "datatype": "FP32", "shape": [4],
         "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16, "shared_memory_offset": 32}},
        {"name": "B", "datatype": "INT32", "shape": [2]},
        raw=[b.tobytes()])  # one raw entry: only for the input not in shared memory
    decoded = decode_infer_request(request)
    assert decoded.shared_inputs == {"A": ((4,), SharedMemoryRef("in", 16, 32))}
    assert "A" not in decoded.inputs
    np.testing.assert_array_equal(decoded.inputs["B"], b)
    assert decoded.datatypes == {"A": "FP32", "B": "INT32"}


def test_shared_memory_offset_defaults_to_zero() -> None:
    request = _request({"name": "A", "datatype": "FP32", "shape": [4],
                        "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 16}})
    assert decode_infer_request(request).shared_inputs["A"][1] == SharedMemoryRef("in", 16, 0)


def test_shared_memory_raw_count_error_counts_only_inputs_not_in_shared_memory() -> None:
    one = np.int32(1).tobytes()
    request = _request({"name": "A", "datatype": "INT32", "shape": [1],
                        "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 4}},
                       {"name": "B", "datatype": "INT32", "shape": [1]},
                       raw=[one, one])
    _invalid(request, "expected 1 raw_input_contents", "got 2")


def test_shared_memory_input_with_contents() -> None:
    request = _request({"name": "A", "datatype": "INT32", "shape": [1], "contents": {"int_contents": [1]},
                        "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 4}})
    _invalid(request, "'A'", "shared memory", "contents")


def test_shared_memory_region_needs_its_byte_size() -> None:
    request = _request({"name": "A", "datatype": "INT32", "shape": [1],
                        "parameters": {"shared_memory_region": "in"}})
    _invalid(request, "input 'A'", "shared_memory_byte_size")


# ---- encoding ----

def _response(**outputs: np.ndarray) -> InferenceResponse:
    return InferenceResponse("m", "2", dict(outputs), id="req-1")


def test_response_as_tritonclient_reads_it() -> None:
    y = np.arange(6, dtype=np.float32).reshape(2, 3)
    z = np.array([[True], [False]])
    message = encode_infer_response(_response(Y=y, Z=z))
    assert (message.model_name, message.model_version, message.id) == ("m", "2", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in message.outputs] == [("Y", "FP32", [2, 3]),
                                                                             ("Z", "BOOL", [2, 1])]
    assert len(message.raw_output_contents) == 2  # one per output, in output order
    result = InferResult(message)
    np.testing.assert_array_equal(result.as_numpy("Y"), y)
    np.testing.assert_array_equal(result.as_numpy("Z"), z)


def test_bytes_and_string_outputs_are_length_prefixed() -> None:
    message = encode_infer_response(_response(T=np.array([b"\xff", b"ab"], dtype=object),
                                              S=np.array(["é"])))
    assert [o.datatype for o in message.outputs] == ["BYTES", "BYTES"]
    assert message.raw_output_contents[0] == _bytes_raw(b"\xff", b"ab")
    assert InferResult(message).as_numpy("S").tolist() == ["é".encode()]


def test_big_endian_output_is_sent_little_endian() -> None:
    values = np.array([1, 256], dtype=">i4")
    message = encode_infer_response(_response(Y=values))
    assert message.outputs[0].datatype == "INT32"
    assert message.raw_output_contents[0] == np.array([1, 256], dtype="<i4").tobytes()


def test_output_in_shared_memory_has_its_place_and_no_data() -> None:
    response = _response(Y=np.zeros(4, np.float32), Z=np.ones(2, np.int64))
    response.shared_outputs = {"Y": SharedMemoryRef("out", 16, 8)}
    message = encode_infer_response(response)
    assert list(message.raw_output_contents) == [b"", np.ones(2, np.int64).tobytes()]
    params = {k: v.WhichOneof("parameter_choice") for k, v in message.outputs[0].parameters.items()}
    assert params == {"shared_memory_region": "string_param", "shared_memory_byte_size": "int64_param",
                      "shared_memory_offset": "int64_param"}
    y = message.outputs[0].parameters
    assert (y["shared_memory_region"].string_param, y["shared_memory_byte_size"].int64_param,
            y["shared_memory_offset"].int64_param) == ("out", 16, 8)
    assert not message.outputs[1].parameters


def test_response_parameters_keep_their_types() -> None:
    response = _response(Y=np.zeros(1, np.float32))
    response.parameters = {"flag": True, "count": np.int64(3), "huge": 2**64 - 1, "ratio": 0.5, "name": "x",
                           "other": [1, 2]}
    params = encode_infer_response(response).parameters
    assert params["flag"].bool_param is True
    assert params["count"].int64_param == 3
    assert params["huge"].uint64_param == 2**64 - 1
    assert params["ratio"].double_param == 0.5
    assert params["name"].string_param == "x"
    assert params["other"].string_param == "[1, 2]"


def test_unknown_output_dtype_is_an_internal_error() -> None:
    with pytest.raises(InferError) as caught:
        encode_infer_response(_response(Y=np.zeros(1, np.complex64)))
    assert caught.value.kind is ErrorKind.INTERNAL
