"""Strict tensor values and clean statuses for hostile input (issue 17, findings 5 and 6).

List data is read as Triton reads it: BOOL takes only true / false, integer datatypes only integers in their range,
float datatypes only numbers that fit (NaN / Infinity tokens stay). Anything else, and input built to crash the
decoders (deep nesting, lone surrogates, shapes numpy cannot hold), is INVALID_ARGUMENT (HTTP 400), never a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from inferd.frontends import tensors
from inferd.frontends.grpc.codec import decode_infer_request as decode_grpc
from inferd.frontends.http.v2 import decode_infer_request as decode_v2
from inferd.frontends.http.v2 import load_json_object
from inferd.types import ErrorKind, InferError


def _v2(datatype: str, data: Any, shape: list[int] | None = None) -> bytes:
    shape = [len(data)] if shape is None else shape
    return json.dumps({"inputs": [{"name": "X", "datatype": datatype, "shape": shape, "data": data}]}).encode()


def _invalid(call: Any, *words: str) -> str:
    with pytest.raises(InferError) as caught:
        call()
    assert caught.value.kind is ErrorKind.INVALID_ARGUMENT
    assert caught.value.kind.http_status == 400
    for word in words:
        assert word in caught.value.message, caught.value.message
    return caught.value.message


def _v2_invalid(body: bytes, *words: str, header_length: int | None = None) -> str:
    return _invalid(lambda: decode_v2(body, header_length, "m", ""), *words)


def _decoded(body: bytes) -> np.ndarray:
    request, _ = decode_v2(body, None, "m", "")
    return request.inputs["X"]


@pytest.fixture(params=[True, False], ids=["numpy2-cast", "int64-then-range"])
def int_cast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both integer paths: numpy 2's checked cast, and the range check that numpy 1 (which wraps) needs."""
    monkeypatch.setattr(tensors, "_STRICT_INT_CAST", request.param, raising=False)


# ---- finding 5: values that do not fit the datatype ----

@pytest.mark.usefixtures("int_cast")
@pytest.mark.parametrize(("datatype", "data", "words"), [
    ("INT32", [1, 1.5], ("'X'", "INT32", "integers", "1.5", "element 1")),
    ("INT64", [2.0], ("INT64", "integers", "2.0")),  # as Triton: a number written with a fraction is no integer
    ("INT8", [float("nan")], ("INT8", "integers")),
    ("INT32", [True], ("INT32", "integers", "true")),
    ("UINT16", [False, 1], ("UINT16", "integers", "false")),
    ("FP32", [1.0, True], ("FP32", "numbers", "true", "element 1")),
    ("FP64", [False], ("FP64", "numbers", "false")),
    ("FP32", ["1.5"], ("FP32", "numbers", "str", "'1.5'")),
    ("INT32", ["7"], ("INT32", "integers", "str")),
    ("FP32", [None], ("FP32", "numbers", "null")),
    ("INT16", [{"a": 1}], ("INT16", "integers", "dict")),
    ("FP32", [1e39], ("FP32", "1e+39", "out of the range")),
    ("FP32", [-1e39], ("FP32", "out of the range")),
    ("FP32", [float("nan"), 3.5e38], ("FP32", "element 1", "out of the range")),
    ("FP32", [10**39], ("FP32", "out of the range")),
    ("FP64", [10**400], ("FP64", "out of the range")),
    ("UINT8", [300], ("UINT8", "300", "out of the range")),
    ("UINT8", [-1], ("UINT8", "-1", "out of the range")),
    ("UINT32", [2**32], ("UINT32", "out of the range")),
    ("UINT64", [-1], ("UINT64", "-1", "out of the range")),
    ("UINT64", [2**63, -1], ("UINT64", "element 1", "out of the range")),
    ("INT8", [127, 128], ("INT8", "128", "element 1", "out of the range")),
    ("INT8", [-129], ("INT8", "-129", "out of the range")),
    ("INT64", [2**63], ("INT64", "out of the range")),
    ("INT64", [-(2**63) - 1], ("INT64", "out of the range")),
    ("BOOL", [1], ("BOOL", "true or false", "int 1")),
    ("BOOL", [True, 0.0], ("BOOL", "true or false", "element 1")),
    ("BOOL", ["true"], ("BOOL", "true or false", "str")),
    ("BYTES", [1], ("BYTES", "strings", "int")),
    ("BYTES", [None], ("BYTES", "strings")),
])
def test_values_that_do_not_fit_are_refused(datatype: str, data: list[Any], words: tuple[str, ...]) -> None:
    body = json.dumps({"inputs": [{"name": "X", "datatype": datatype, "shape": [len(data)], "data": data}]},
                      allow_nan=True).encode()
    _v2_invalid(body, *words)


def test_nested_data_is_checked_too() -> None:
    _v2_invalid(_v2("INT32", [[1, 2], [3, 4.5]], [2, 2]), "INT32", "integers", "4.5", "element 3")
    _v2_invalid(_v2("FP32", [[1.0], [True]], [2, 1]), "FP32", "true")
    _v2_invalid(_v2("FP32", [[1.0], 2.0], [2]), "mix lists and values")


@pytest.mark.usefixtures("int_cast")
@pytest.mark.parametrize(("datatype", "data"), [
    ("BOOL", [True, False]),
    ("INT8", [-128, 127]),
    ("INT16", [-(2**15), 2**15 - 1]),
    ("INT32", [-(2**31), 2**31 - 1]),
    ("INT64", [-(2**63), 2**63 - 1]),
    ("UINT8", [0, 255]),
    ("UINT16", [0, 2**16 - 1]),
    ("UINT32", [0, 2**32 - 1]),
    ("UINT64", [0, 2**64 - 1]),
    ("UINT64", [2**63 + 5, 2**64 - 1]),
    ("FP32", [1, -2, 0.5, 3.4e38]),  # integers are numbers: they go into float tensors
    ("FP64", [1e308, -5, 2**70]),
    ("BYTES", ["a", "é", ""]),
])
def test_values_that_fit_are_kept_exactly(datatype: str, data: list[Any]) -> None:
    array = _decoded(_v2(datatype, data))
    assert array.dtype == tensors.V2_TO_NUMPY[datatype]
    expected = [s.encode() for s in data] if datatype == "BYTES" else data
    assert array.tolist() == pytest.approx(expected) if datatype.startswith("FP") else array.tolist() == expected


def test_nan_and_infinity_tokens_stay_in_float_tensors() -> None:
    body = b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [4], "data": [NaN, Infinity, -Infinity, 1]}]}'
    values = _decoded(body)
    assert math.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf and values[3] == 1


def test_empty_data_fits_every_datatype() -> None:
    for datatype in ("BOOL", "INT8", "UINT64", "FP32", "FP64", "BYTES"):
        assert _decoded(_v2(datatype, [], [0, 3])).shape == (0, 3)
        assert _decoded(_v2(datatype, [[], []], [2, 0])).shape == (2, 0)


def test_grpc_typed_contents_out_of_the_datatypes_range() -> None:
    for datatype, field, values in (("INT8", "int_contents", [200]), ("INT16", "int_contents", [-40000]),
                                    ("UINT8", "uint_contents", [300]), ("UINT16", "uint_contents", [70000])):
        request = pb.ModelInferRequest(model_name="m")
        getattr(request.inputs.add(name="X", datatype=datatype, shape=[1]).contents, field).extend(values)
        _invalid(lambda r=request: decode_grpc(r), "'X'", datatype, str(values[0]), "out of the range")


# ---- V1's values go through the same checks ----

def test_v1_values_are_strict() -> None:
    def v1(datatype: str, value: Any) -> np.ndarray:
        return tensors.decode_nested("x", datatype, value, "instances")

    assert v1("INT32", [[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    assert v1("FP32", [[], []]).shape == (2, 0)
    assert v1("BOOL", [True]).tolist() == [True]
    _invalid(lambda: v1("INT32", [[1, 2.5]]), "'x'", "INT32 instances must be integers", "2.5")
    _invalid(lambda: v1("FP32", [[1.0, True]]), "'x'", "FP32 instances must be numbers", "true")
    _invalid(lambda: v1("FP32", [1e39]), "'x'", "out of the range")
    _invalid(lambda: v1("UINT8", [-1]), "'x'", "out of the range")
    _invalid(lambda: v1("FP32", [[1.0, 2.0], [3.0]]), "'x'", "FP32", "different lengths")
    _invalid(lambda: v1("FP32", [[1.0], 2.0]), "'x'", "mix lists and values")
    deep: Any = [1.0]
    for _ in range(10_000):
        deep = [deep]
    _invalid(lambda: v1("FP32", deep), "'x'", "deeper than 64")


# ---- finding 6: hostile input that gave 500 ----

def test_json_nested_ten_thousand_deep() -> None:
    depth = 10_000
    _v2_invalid(b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}", "failed to parse the request JSON")
    data = b"[" * depth + b"1" + b"]" * depth
    _v2_invalid(b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": ' + data + b"}]}",
                "failed to parse the request JSON")
    _invalid(lambda: load_json_object(b'{"a": ' + b"[" * depth + b"]" * depth + b"}"), "JSON")
    # With a NaN the document goes to the second parser too: still 400.
    _v2_invalid(b'{"x": NaN, "inputs": ' + b"[" * depth + b"]" * depth + b"}", "failed to parse the request JSON")


def test_json_nested_within_the_parsers_depth_but_past_numpys() -> None:
    data = b"[" * 100 + b"1" + b"]" * 100
    _v2_invalid(b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": ' + data + b"}]}",
                "'X'", "deeper than 64")


@pytest.mark.parametrize("text", [rb'"\ud800"', rb'"a\udfffb"', rb'"\ud83d"'])
def test_lone_surrogate_in_bytes_data(text: bytes) -> None:
    body = b'{"inputs": [{"name": "X", "datatype": "BYTES", "shape": [1], "data": [' + text + b"]}]}"
    _v2_invalid(body, "JSON")
    # Even where the other parser is needed (a NaN elsewhere in the document).
    _v2_invalid(body[:-1] + b', "parameters": {"p": NaN}}', "JSON")
    # A surrogate pair is one character, and fine.
    ok = b'{"inputs": [{"name": "X", "datatype": "BYTES", "shape": [1], "data": ["\\ud83d\\ude00"]}]}'
    assert _decoded(ok).tolist() == ["\U0001f600".encode()]


def test_lone_surrogate_given_to_the_list_codec_directly() -> None:
    _invalid(lambda: tensors.decode_list("X", "BYTES", (1,), ["\ud800"]), "'X'", "surrogate")
    _invalid(lambda: tensors.decode_nested("X", "BYTES", ["\ud800"], "inputs"), "'X'", "surrogate")


HUGE = [2**62, 4, 0]


def test_huge_shape_of_no_elements_json() -> None:
    _v2_invalid(_v2("FP32", [], HUGE), "'X'", "shape", "too large")
    _v2_invalid(_v2("BYTES", [], HUGE), "'X'", "shape", "too large")


def test_huge_shape_of_no_elements_binary() -> None:
    header = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": HUGE,
                                     "parameters": {"binary_data_size": 0}}]}).encode()
    _v2_invalid(header, "'X'", "too large", header_length=len(header))


def test_huge_shape_of_no_elements_grpc() -> None:
    typed = pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="X", datatype="FP32", shape=HUGE)
    _invalid(lambda: decode_grpc(typed), "'X'", "too large")
    raw = pb.ModelInferRequest(model_name="m", raw_input_contents=[b""])
    raw.inputs.add(name="X", datatype="INT32", shape=[2**40, 2**40, 0])
    _invalid(lambda: decode_grpc(raw), "'X'", "too large")


def test_shapes_numpy_can_hold_with_a_zero_dimension_are_fine() -> None:
    assert _decoded(_v2("FP32", [], [2**20, 0])).shape == (2**20, 0)
    assert tensors.check_shape("X", [2**59, 0]) == (2**59, 0)


def test_more_dimensions_than_numpy_holds() -> None:
    _v2_invalid(_v2("FP32", [1.0], [1] * 65), "'X'", "65 dimensions")
    assert _decoded(_v2("FP32", [1.0], [1] * 64)).shape == (1,) * 64
