"""Property tests (hypothesis) for the tensor codecs: V2 JSON, V2 binary, gRPC raw and typed contents, V1 values.

- Round trips: a tensor of any datatype and shape that the server sends back (the response encoders) and a client
  sends again decodes to the same tensor (dtype, shape and values, NaN included).
- Hostile input: arbitrary bytes, arbitrary JSON documents and arbitrary protobuf requests make the decoders raise
  only `InferError` (a 4xx for the client), never another exception (a 500).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import service_pb2 as pb

from inferd.frontends.grpc import codec as grpc_codec
from inferd.frontends.http import v2
from inferd.frontends.tensors import JsonConstant, decode_nested
from inferd.limits import RequestLimits
from inferd.types import V2_TO_NUMPY, InferenceResponse, InferError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=100)  # the slower generators
NUMERIC = [d for d in V2_TO_NUMPY if d != "BYTES"]
# Small limits keep hostile shapes from allocating much; the checks they exercise are the same.
LIMITS = RequestLimits(max_tensor_elements=4096, max_inputs=16)

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, datatypes: list[str], text_only: bool = False) -> np.ndarray:
    """An array of one of `datatypes` (BYTES: an object array of bytes; `text_only`: valid UTF-8 bytes)."""
    datatype = draw(st.sampled_from(datatypes))
    shape = draw(shapes)
    if datatype == "BYTES":
        item = st.text(max_size=8).map(str.encode) if text_only else st.binary(max_size=8)
        items = draw(st.lists(item, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    return draw(hnp.arrays(V2_TO_NUMPY[datatype], shape))


def _same(decoded: np.ndarray, array: np.ndarray) -> None:
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    if array.dtype == np.object_:
        assert decoded.tolist() == array.tolist()
    else:
        np.testing.assert_array_equal(decoded, array)  # NaN equals NaN here


def _response(array: np.ndarray) -> InferenceResponse:
    return InferenceResponse("m", "1", {"X": array})


def _as_request(body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
    """A response body sent back as a request: its `outputs` (the last member) are `inputs` of the same layout."""
    header = body if header_length is None else body[:header_length]
    start = header.index(b'"outputs":') + len(b'"outputs":')
    request_header = b'{"inputs":' + header[start:]
    if header_length is None:
        return request_header, None
    return request_header + body[header_length:], len(request_header)


# ---- round trips ----

@SETTINGS
@given(tensors([d for d in V2_TO_NUMPY if d != "FP16"], text_only=True))
def test_v2_json_round_trip(array: np.ndarray) -> None:
    body, length = v2.encode_infer_response(_response(array), v2.OutputOptions())
    assert length is None
    request, _ = v2.decode_infer_request(*_as_request(body, None), "m", "")
    _same(request.inputs["X"], array)


@SETTINGS
@given(tensors(list(V2_TO_NUMPY)))
def test_v2_binary_round_trip(array: np.ndarray) -> None:
    body, length = v2.encode_infer_response(_response(array), v2.OutputOptions(binary_all=True))
    assert length is not None
    request, _ = v2.decode_infer_request(*_as_request(body, length), "m", "")
    _same(request.inputs["X"], array)


@SETTINGS
@given(tensors(list(V2_TO_NUMPY)))
def test_grpc_raw_round_trip(array: np.ndarray) -> None:
    response = grpc_codec.encode_infer_response(_response(array))
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=response.raw_output_contents)
    for output in response.outputs:
        request.inputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
    _same(grpc_codec.decode_infer_request(pb.ModelInferRequest.FromString(request.SerializeToString()))
          .inputs["X"], array)


@SETTINGS
@given(tensors([d for d in V2_TO_NUMPY if d != "FP16"]))
def test_grpc_typed_contents_round_trip(array: np.ndarray) -> None:
    datatype = {np.dtype(v): k for k, v in V2_TO_NUMPY.items()}[array.dtype]
    request = pb.ModelInferRequest(model_name="m")
    tensor = request.inputs.add(name="X", datatype=datatype, shape=array.shape)
    field = grpc_codec._CONTENTS_FIELD[datatype]
    getattr(tensor.contents, field).extend(array.ravel().tolist())
    _same(grpc_codec.decode_infer_request(pb.ModelInferRequest.FromString(request.SerializeToString()))
          .inputs["X"], array)


@SETTINGS
@given(tensors([d for d in NUMERIC if d != "FP16"]))
def test_v1_values_round_trip(array: np.ndarray) -> None:
    datatype = {np.dtype(v): k for k, v in V2_TO_NUMPY.items()}[array.dtype]
    assume(array.ndim > 0 and 0 not in array.shape[:-1])  # a nesting of lists has no shape of its own to be empty
    _same(decode_nested("x", datatype, _as_parsed_json(array.tolist()), "inputs"), array)


def _as_parsed_json(value: Any) -> Any:
    """Values as the JSON parser hands them over: NaN and infinities can only be JSON's tokens (JsonConstant)."""
    if isinstance(value, list):
        return [_as_parsed_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return JsonConstant(value)
    return value


# ---- hostile input ----

def _v2_only_infer_error(body: bytes, header_length: int | None) -> None:
    try:
        v2.decode_infer_request(body, header_length, "m", "", LIMITS)
    except InferError:
        pass


@SETTINGS
@given(st.binary(max_size=256), st.one_of(st.none(), st.integers(-4, 300)))
def test_v2_arbitrary_bytes(body: bytes, header_length: int | None) -> None:
    _v2_only_infer_error(body, header_length)


lone_surrogates = st.sampled_from(["\ud800", "a\udfff", "\udbff\ud7ff"])  # st.text() never makes them
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6) | lone_surrogates,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
datatype_names = st.sampled_from([*V2_TO_NUMPY, "BF16", "FP8", ""]) | st.text(max_size=4)
dims = st.integers(0, 5) | st.sampled_from([0, -1, 2**31, 2**62, 2**63, 2**64])
numbers = st.integers(-300, 300) | st.integers(-(2**65), 2**65) | st.floats() | st.booleans()
tensor_data = (st.lists(numbers, max_size=8) | st.lists(st.lists(numbers, max_size=3), max_size=3)
               | st.lists(st.text(max_size=4) | lone_surrogates, max_size=4) | st.just([]) | json_values)


@st.composite
def near_valid_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """An input whose data has as many elements as its shape says (zero with a huge dimension included): it gets
    past the count checks to the value checks."""
    shape = draw(st.lists(dims.filter(lambda d: d >= 0), max_size=4))
    count = math.prod(shape)
    leaf = numbers | st.text(max_size=4) | lone_surrogates | st.none()
    data = draw(st.lists(leaf, min_size=count, max_size=count)) if count <= 8 else []
    return {"name": "X", "datatype": draw(st.sampled_from(list(V2_TO_NUMPY))), "shape": shape, "data": data}


named = {"name": st.sampled_from(["X", "Y"]), "datatype": datatype_names}
input_entries = near_valid_inputs() | st.fixed_dictionaries(named, optional={
    "shape": st.lists(dims, max_size=4) | st.lists(dims, min_size=65, max_size=70) | json_values,
    "data": tensor_data,
    "parameters": st.fixed_dictionaries({}, optional={
        "binary_data_size": st.integers(-2, 40) | json_values,
        "shared_memory_region": st.text(max_size=4) | json_values,
        "shared_memory_byte_size": st.integers(-2, 2**64) | json_values,
        "shared_memory_offset": st.integers(-2, 2**64) | json_values,
    }) | json_values,
}) | st.dictionaries(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]), json_values)
documents = st.fixed_dictionaries({}, optional={
    "id": json_values,
    "inputs": st.lists(input_entries, max_size=3) | json_values,
    "outputs": st.lists(st.fixed_dictionaries({}, optional={"name": st.text(max_size=3) | json_values,
                                                            "parameters": json_values}), max_size=2) | json_values,
    "parameters": json_values,
})


@FEWER
@given(documents, st.binary(max_size=48), st.booleans())
def test_v2_arbitrary_documents(doc: dict[str, Any], tail: bytes, binary: bool) -> None:
    header = json.dumps(doc, allow_nan=True).encode()  # NaN / Infinity tokens too: the second parser's path
    if binary:
        _v2_only_infer_error(header + tail, len(header))
    else:
        _v2_only_infer_error(header, None)


@SETTINGS
@given(st.lists(near_valid_inputs(), min_size=1, max_size=2))
def test_v2_near_valid_inputs(inputs: list[dict[str, Any]]) -> None:
    _v2_only_infer_error(json.dumps({"inputs": inputs}).encode(), None)


@SETTINGS
@given(json_values)
def test_json_objects_and_v1_values(value: Any) -> None:
    for call in (lambda: v2.load_json_object(json.dumps(value).encode()),
                 lambda: decode_nested("x", "FP32", value, "inputs"),
                 lambda: decode_nested("x", "INT8", value, "inputs"),
                 lambda: decode_nested("x", "BOOL", value, "inputs")):
        try:
            call()
        except InferError:
            pass


def _grpc_only_infer_error(request: pb.ModelInferRequest) -> None:
    try:
        grpc_codec.decode_infer_request(request, LIMITS)
    except InferError:
        pass


contents_fields = st.sampled_from(sorted(set(grpc_codec._CONTENTS_FIELD.values())))
field_values = {
    "bool_contents": st.lists(st.booleans(), max_size=6),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=6),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=6),
    "fp32_contents": st.lists(st.floats(width=32), max_size=6),
    "fp64_contents": st.lists(st.floats(), max_size=6),
    "bytes_contents": st.lists(st.binary(max_size=6), max_size=6),
}


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["X", "Y", ""])), datatype=draw(datatype_names),
            shape=draw(st.lists(st.integers(0, 5) | st.sampled_from([-1, 2**31, 2**62, 2**63 - 1, -(2**63)]),
                                max_size=4)))
        for field in draw(st.lists(contents_fields, max_size=2, unique=True)):
            getattr(tensor.contents, field).extend(draw(field_values[field]))
        for key in draw(st.lists(st.sampled_from(["shared_memory_region", "shared_memory_byte_size",
                                                   "shared_memory_offset", "binary_data_size"]), max_size=3)):
            choice = draw(st.sampled_from(["string_param", "int64_param", "bool_param", "uint64_param"]))
            value = {"string_param": st.text(max_size=4), "int64_param": st.integers(-(2**63), 2**63 - 1),
                     "bool_param": st.booleans(), "uint64_param": st.integers(0, 2**64 - 1)}[choice]
            setattr(tensor.parameters[key], choice, draw(value))
    request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=24), max_size=3)))
    return request


@SETTINGS
@given(st.binary(max_size=256))
def test_grpc_arbitrary_bytes(data: bytes) -> None:
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:  # protobuf's own error: grpc answers it before the codec runs
        return
    _grpc_only_infer_error(request)


@FEWER
@given(grpc_requests(), st.integers(0, 2**16), st.binary(min_size=1, max_size=8))
def test_grpc_mangled_requests(request: pb.ModelInferRequest, where: int, junk: bytes) -> None:
    """A valid message with some of its bytes overwritten: what parses still goes to the codec."""
    data = bytearray(request.SerializeToString())
    at = where % (len(data) + 1)
    data[at:at + len(junk)] = junk
    try:
        mangled = pb.ModelInferRequest.FromString(bytes(data))
    except DecodeError:
        return
    _grpc_only_infer_error(mangled)


@FEWER
@given(grpc_requests())
def test_grpc_arbitrary_requests(request: pb.ModelInferRequest) -> None:
    _grpc_only_infer_error(request)
