"""SeldonMessages to and from a tensor model's inputs and outputs, as Seldon's engine answers (seldon/engine.py)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from inferd.compat.seldon.engine import (
    answer_meta,
    decode_tensors,
    encode_tensors,
    error_body,
    feedback_puid,
    new_puid,
    with_puid,
)
from inferd.compat.seldon.protocol import SeldonError
from inferd.model import TensorSpec


def spec(name: str, datatype: str, *dims: int) -> TensorSpec:
    return TensorSpec(name, datatype, tuple(dims), None)


ONE = [spec("x", "FP32", 4)]
TWO = [spec("a", "INT64", 1), spec("b", "INT64", 1)]


def test_one_input_takes_the_whole_array_in_its_datatype() -> None:
    decoded = decode_tensors({"data": {"ndarray": [[1, 2, 3, 4]]}}, ONE, True, "m")
    assert decoded.form == "ndarray" and decoded.datatypes == {"x": "FP32"}
    assert decoded.inputs["x"].dtype == np.float32 and decoded.inputs["x"].shape == (1, 4)
    single = decode_tensors({"data": {"tensor": {"shape": [4], "values": [1, 2, 3, 4]}}}, ONE, True, "m")
    assert single.form == "tensor" and single.inputs["x"].shape == (1, 4)  # one instance: a batch of one
    unbatched = decode_tensors({"data": {"ndarray": [1, 2, 3, 4]}}, ONE, False, "m")
    assert unbatched.inputs["x"].shape == (4,)


def test_names_pick_columns_and_position_otherwise() -> None:
    by_name = decode_tensors({"data": {"names": ["b", "a"], "ndarray": [[1, 10], [2, 20]]}}, TWO, True, "m")
    assert by_name.inputs["a"].tolist() == [[10], [20]] and by_name.inputs["b"].tolist() == [[1], [2]]
    by_position = decode_tensors({"data": {"ndarray": [[1, 2], [3, 4]]}}, TWO, True, "m")
    assert by_position.inputs["a"].tolist() == [[1, 2]] and by_position.inputs["b"].tolist() == [[3, 4]]
    with pytest.raises(SeldonError, match="takes 2 inputs"):
        decode_tensors({"data": {"ndarray": [[1, 2, 3]]}}, TWO, True, "m")
    shapes = decode_tensors({"data": {"ndarray": [1, [2, 3]]}}, TWO, False, "m")  # inputs of their own shapes
    assert shapes.inputs["a"].tolist() == 1 and shapes.inputs["b"].tolist() == [2, 3]


@pytest.mark.parametrize(("message", "words"), [
    ({"data": {"ndarray": [[0.5, 1]]}}, "fractions"),
    ({"data": {"ndarray": [["x", "y"], [1, 2]]}}, "strings"),
    ({"data": {"tensor": {"shape": [2**70], "values": [1]}}}, "shape"),
    ({"data": {"tensor": {"shape": [1], "values": ["1"]}}}, "numbers"),
    ({"data": {"names": "a", "ndarray": [[1]]}}, "names"),
    ({"data": [1]}, "object"),
    ({"strData": "hello"}, "BYTES"),
    ({"meta": {}}, "data"),
])
def test_bad_data_is_a_clear_400(message: dict, words: str) -> None:
    with pytest.raises(SeldonError, match=words) as caught:
        decode_tensors(message, [spec("a", "INT64", 2)] if words == "fractions" else TWO, True, "m")
    assert caught.value.status_code == 400


def test_payloads_go_to_one_bytes_input() -> None:
    text = [spec("t", "BYTES", -1)]
    assert decode_tensors({"strData": "hé"}, text, True, "m").inputs["t"].tolist() == [["hé".encode()]]
    raw = base64.b64encode(b"\x00\x01").decode()
    assert decode_tensors({"binData": raw}, text, False, "m").inputs["t"].tolist() == [b"\x00\x01"]
    assert decode_tensors({"jsonData": {"k": [1]}}, text, False, "m").inputs["t"].tolist() == [b'{"k":[1]}']


def test_answers_keep_the_requests_form() -> None:
    scores = np.array([[0.25, 0.75]], dtype=np.float32)
    assert encode_tensors({"p": scores}, "ndarray") == {"data": {"names": ["t:0", "t:1"], "ndarray": [[0.25, 0.75]]}}
    assert encode_tensors({"p": scores}, "tensor") == {
        "data": {"names": ["t:0", "t:1"], "tensor": {"shape": [1, 2], "values": [0.25, 0.75]}}}
    columns = {"a": np.array([1, 2]), "b": np.array([[3], [4]])}
    assert encode_tensors(columns, "ndarray") == {"data": {"names": ["a", "b"], "ndarray": [[1, 3], [2, 4]]}}
    ragged = {"a": np.zeros((1, 2)), "b": np.zeros((1, 3))}
    assert encode_tensors(ragged, "tensor")["data"]["ndarray"] == [[[0, 0]], [[0, 0, 0]]]  # no tensor holds both
    text = np.array([b"out"], dtype=np.object_)
    assert encode_tensors({"t": text}, "strData") == {"strData": "out"}
    assert encode_tensors({"t": text}, "binData") == {"binData": base64.b64encode(b"out").decode()}
    assert encode_tensors({"t": np.array([b'{"a": 1}'], dtype=np.object_)}, "jsonData") == {"jsonData": {"a": 1}}
    assert encode_tensors({"t": text}, "tensor") == {"data": {"names": [], "ndarray": ["out"]}}


def test_meta_puid_and_errors() -> None:
    puid = new_puid()
    assert len(puid) == 26 and set(puid) <= set("0123456789abcdefghijklmnopqrstuv") and new_puid() != puid
    message, made = with_puid({"data": {}})
    assert message["meta"]["puid"] == made and len(made) == 26
    assert with_puid({"meta": {"puid": "p"}})[1] == "p"
    with pytest.raises(SeldonError):
        with_puid({"meta": []})
    meta = answer_meta({"tags": {"a": 1}, "requestPath": {"t": "img"}}, "p", {"m": "m:1"})
    assert meta == {"puid": "p", "tags": {"a": 1}, "routing": {}, "requestPath": {"t": "img", "m": "m:1"},
                    "metrics": []}
    assert error_body(404, "gone") == {"status": {"code": 404, "info": "gone", "reason": "Not Found",
                                                  "status": "FAILURE"}}
    assert feedback_puid({"response": {"meta": {"puid": "r"}}, "request": {"meta": {"puid": "q"}}}) == "r"
    with pytest.raises(SeldonError, match="reward"):
        feedback_puid({"reward": True})
