"""Seldon Core's microservice protocol: request bodies, SeldonMessage → features, results → SeldonMessage, errors."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import pytest

from inferd.compat.seldon.component import RuntimeResponse, SeldonComponent
from inferd.compat.seldon.protocol import (
    SeldonError,
    SeldonFailure,
    answer,
    build_response,
    decode_body,
    extract,
    failure,
    predict,
)
from inferd.types import ErrorKind


class Iris:
    """A Seldon user class with the optional extras a wrapper asks for."""

    class_names = ["setosa", "versicolor"]

    def __init__(self) -> None:
        self.seen: list[tuple[Any, list[str], Any]] = []

    def predict(self, X: Any, features_names: list[str], meta: Any = None) -> Any:
        self.seen.append((X, features_names, meta))
        return np.asarray(X, dtype=np.float64) * 2

    def tags(self) -> dict[str, Any]:
        return {"model": "iris"}

    def metrics(self) -> list[dict[str, Any]]:
        return [{"type": "COUNTER", "key": "calls", "value": 1}]


class Plain:
    """No extras at all."""

    def predict(self, X: Any, features_names: list[str]) -> Any:
        return X


@pytest.fixture
def iris() -> Iterator[SeldonComponent]:
    component = SeldonComponent(Iris(), "Iris")
    yield component
    component.close()


@pytest.fixture
def plain() -> Iterator[SeldonComponent]:
    component = SeldonComponent(Plain(), "Plain")
    yield component
    component.close()


def _seldon_error(call: Any, *words: str, status: int = 400) -> SeldonError:
    with pytest.raises(SeldonError) as caught:
        call()
    error = caught.value
    assert error.status_code == status
    for word in words:
        assert word in error.info
    return error


# ---- request bodies ----

def test_json_body() -> None:
    message = {"data": {"ndarray": [[1, 2]]}}
    assert decode_body(orjson.dumps(message), "application/json", "") == message


def test_json_form_field() -> None:
    body = ("json=" + quote('{"data": {"ndarray": [[1.5]]}}')).encode()
    assert decode_body(body, "application/x-www-form-urlencoded", "") == {"data": {"ndarray": [[1.5]]}}


def test_json_query_parameter_of_a_get() -> None:
    query = "json=" + quote('{"strData": "hello"}')
    assert decode_body(b"", "", query) == {"strData": "hello"}


def test_body_wins_over_the_query() -> None:
    assert decode_body(b'{"strData": "body"}', "application/json", "json=%7B%7D") == {"strData": "body"}


def _multipart(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    boundary = "XyZboundary"
    chunks = []
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_multipart_fields() -> None:
    body, content_type = _multipart(("meta", b'{"puid": "p1"}', None), ("binData", b"\x00\xff", "blob.bin"))
    assert decode_body(body, content_type, "") == {"meta": {"puid": "p1"},
                                                   "binData": base64.b64encode(b"\x00\xff").decode()}
    body, content_type = _multipart(("strData", b"some text", None))
    assert decode_body(body, content_type, "") == {"strData": "some text"}
    body, content_type = _multipart(("data", b'{"ndarray": [1]}', None), ("note", b"not json", "note.txt"))
    assert decode_body(body, content_type, "") == {"data": {"ndarray": [1]}, "note": "not json"}


@pytest.mark.parametrize(("body", "content_type", "query"), [
    (b"", "application/json", ""),
    (b"{not json", "application/json", ""),
    (b"json=%7Bnot", "application/x-www-form-urlencoded", ""),
    (b"", "", "json=%7Bbroken"),
    (b"no boundary here", "multipart/form-data", ""),
])
def test_no_json_found(body: bytes, content_type: str, query: str) -> None:
    error = _seldon_error(lambda: decode_body(body, content_type, query), "Can't find JSON in data")
    assert error.reason == "MICROSERVICE_BAD_DATA"


# ---- SeldonMessage -> features ----

def test_ndarray_with_names_and_meta() -> None:
    message = {"data": {"names": ["a", "b"], "ndarray": [[1, 2], [3, 4]]}, "meta": {"tags": {"t": 1}}}
    features, meta, data = extract(message)
    np.testing.assert_array_equal(features, [[1, 2], [3, 4]])
    assert meta == {"tags": {"t": 1}}
    assert data == message["data"]


def test_tensor_is_reshaped_float64() -> None:
    features, meta, _ = extract({"data": {"tensor": {"shape": [2, 3], "values": [0, 1, 2, 3, 4, 5]}}})
    assert features.dtype == np.float64
    assert features.shape == (2, 3)
    assert features[1].tolist() == [3, 4, 5]
    assert meta is None


def test_tensor_values_that_do_not_fit_the_shape() -> None:
    _seldon_error(lambda: extract({"data": {"tensor": {"shape": [2, 2], "values": [1, 2, 3]}}}), "Invalid data")
    _seldon_error(lambda: extract({"data": {"tensor": [1, 2]}}), "'tensor'", "shape")


def test_other_payloads() -> None:
    assert extract({"jsonData": {"k": [1]}})[0] == {"k": [1]}
    assert extract({"strData": "hi"})[0] == "hi"
    assert extract({"binData": base64.b64encode(b"\x01\x02").decode()})[0] == b"\x01\x02"


@pytest.mark.parametrize(("message", "words"), [
    ([1, 2], ("Invalid request data type",)),
    ({"meta": {}}, ("Invalid request data type",)),
    ({"strData": 5}, ("'strData'", "string")),
    ({"binData": "@@not base64@@"}, ("'binData'", "base64")),
    ({"data": [1, 2]}, ("'data'", "object")),
    ({"data": {"ndarray": [1]}, "meta": "tags"}, ("'meta'", "object")),
])
def test_bad_messages(message: Any, words: tuple[str, ...]) -> None:
    _seldon_error(lambda: extract(message), *words)


# ---- results -> SeldonMessage ----

def test_numeric_result_to_an_ndarray_request_is_an_ndarray_with_class_names(iris: SeldonComponent) -> None:
    request = {"data": {"ndarray": [[1, 2]]}}
    response = build_response(iris, request, RuntimeResponse(np.array([[0.25, 0.75]])), None)
    assert response["data"] == {"ndarray": [[0.25, 0.75]], "names": ["setosa", "versicolor"]}
    assert response["meta"]["tags"] == {"model": "iris"}
    assert response["meta"]["metrics"] == [{"type": "COUNTER", "key": "calls", "value": 1}]


def test_numeric_result_to_a_tensor_request_is_a_tensor(plain: SeldonComponent) -> None:
    request = {"data": {"tensor": {"shape": [1, 3], "values": [1, 2, 3]}}}
    response = build_response(plain, request, RuntimeResponse(np.array([[1.0, 2.0, 3.0]])), None)
    assert response["data"] == {"tensor": {"shape": [1, 3], "values": [1.0, 2.0, 3.0]}, "names": ["t:0", "t:1", "t:2"]}
    assert response["meta"] == {}


def test_numeric_result_to_a_request_without_data_is_a_tensor(plain: SeldonComponent) -> None:
    response = build_response(plain, {"strData": "x"}, RuntimeResponse([1, 2]), None)
    assert response["data"] == {"tensor": {"shape": [2], "values": [1, 2]}, "names": []}


def test_non_numeric_list_is_an_ndarray(plain: SeldonComponent) -> None:
    response = build_response(plain, {"data": {"tensor": {"shape": [1], "values": [1]}}},
                              RuntimeResponse(["a", "b"]), None)
    assert response["data"] == {"ndarray": ["a", "b"], "names": []}


@pytest.mark.parametrize(("value", "expected"), [
    ("text", {"strData": "text"}),
    (b"\x00\x01", {"binData": "AAE="}),
    ({"answer": 42}, {"jsonData": {"answer": 42}}),
])
def test_other_result_forms(plain: SeldonComponent, value: Any, expected: dict[str, Any]) -> None:
    response = build_response(plain, {"strData": "q"}, RuntimeResponse(value), None)
    assert {k: v for k, v in response.items() if k != "meta"} == expected


def test_result_of_an_unknown_type_is_a_server_error(plain: SeldonComponent) -> None:
    error = _seldon_error(lambda: build_response(plain, {"strData": "q"}, RuntimeResponse(3.5), None),
                          "Unknown data type returned", status=500)
    assert error.reason == "MICROSERVICE_BAD_DATA"


def test_meta_merges_tags_and_keeps_puid_and_request_path(iris: SeldonComponent,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREDICTIVE_UNIT_ID", "classifier")
    monkeypatch.setenv("PREDICTIVE_UNIT_IMAGE", "repo/iris:0.1")
    request = {"data": {"ndarray": [[1]]}, "meta": {"puid": "abc", "requestPath": {"router": "repo/router:1"}}}
    meta_in = {"tags": {"from_request": True, "model": "overridden"},
               "metrics": [{"type": "GAUGE", "key": "upstream", "value": 2}]}
    result = RuntimeResponse(np.array([[1.0]]), tags={"runtime": "yes"})
    meta = build_response(iris, request, result, meta_in)["meta"]
    # The request's tags, then the class's, then the response's: later ones win.
    assert meta["tags"] == {"from_request": True, "model": "iris", "runtime": "yes"}
    assert meta["metrics"] == [{"type": "GAUGE", "key": "upstream", "value": 2},
                               {"type": "COUNTER", "key": "calls", "value": 1}]
    assert meta["puid"] == "abc"
    assert meta["requestPath"] == {"classifier": "repo/iris:0.1", "router": "repo/router:1"}


def test_seldon_error_form() -> None:
    error = SeldonError("bad input")
    assert (error.status_code, error.to_dict()) == (
        400, {"status": {"status": 1, "info": "bad input", "code": -1, "reason": "MICROSERVICE_BAD_DATA"}})
    assert SeldonError("boom", 500, "MICROSERVICE_INTERNAL_ERROR").to_dict()["status"]["reason"] == \
        "MICROSERVICE_INTERNAL_ERROR"


# ---- predict: the whole path from message to message ----

def test_predict_hands_features_names_and_meta_to_the_class(iris: SeldonComponent) -> None:
    message = {"data": {"names": ["sl", "sw"], "ndarray": [[1, 2]]}, "meta": {"tags": {"k": "v"}}}
    response = predict(iris, message)
    X, names, meta = iris.user.seen[0]
    np.testing.assert_array_equal(X, [[1, 2]])
    assert names == ["sl", "sw"]
    assert meta == {"tags": {"k": "v"}}
    assert response["data"]["ndarray"] == [[2.0, 4.0]]
    assert response["meta"]["tags"] == {"k": "v", "model": "iris"}


def test_predict_raw_gets_the_message_as_it_is() -> None:
    class Raw:
        def predict_raw(self, message: Any) -> Any:
            return {"jsonData": {"echo": message}}

    component = SeldonComponent(Raw(), "Raw")
    try:
        assert predict(component, {"anything": [1]}) == {"jsonData": {"echo": {"anything": [1]}}}
    finally:
        component.close()


# ---- failures: Seldon's error answers, counted by the core as failed requests ----

def test_a_seldon_error_becomes_its_answer() -> None:
    found = failure(SeldonError("Invalid data: x"))
    assert isinstance(found, SeldonFailure)
    assert (found.status, found.kind) == (400, ErrorKind.INVALID_ARGUMENT)
    assert found.body == {"status": {"status": 1, "info": "Invalid data: x", "code": -1,
                                     "reason": "MICROSERVICE_BAD_DATA"}}
    assert found.message == "Invalid data: x"


def test_a_microservice_exception_raised_by_the_class_keeps_its_status_and_body() -> None:
    class SeldonMicroserviceException(Exception):  # seldon_core's, recognised by its shape
        status_code = 409

        def to_dict(self) -> dict[str, Any]:
            return {"status": {"status": 1, "info": "busy", "code": -1, "reason": "MICROSERVICE_BAD_DATA"}}

    found = failure(SeldonMicroserviceException("busy"))
    assert (found.status, found.body["status"]["info"]) == (409, "busy")


def test_any_other_exception_is_an_internal_error() -> None:
    found = failure(ZeroDivisionError("division by zero"))
    assert (found.status, found.kind) == (500, ErrorKind.INTERNAL)
    assert found.body["status"]["reason"] == "MICROSERVICE_INTERNAL_ERROR"
    assert found.body["status"]["info"] == "ZeroDivisionError: division by zero"


def test_answer_runs_an_operation(iris: SeldonComponent) -> None:
    status, body = answer(iris, "predict", {"data": {"ndarray": [[1.0]]}})
    assert (status, body["data"]["ndarray"]) == (200, [[2.0]])


def test_answer_to_an_unknown_operation(iris: SeldonComponent) -> None:
    with pytest.raises(SeldonFailure) as caught:
        answer(iris, "explain", {})
    assert caught.value.status == 404
    assert "explain" in caught.value.body["status"]["info"]


def test_answer_to_a_bad_message_is_seldons_400(iris: SeldonComponent) -> None:
    with pytest.raises(SeldonFailure) as caught:
        answer(iris, "predict", {"nothing": 1})
    assert caught.value.status == 400
    assert "Invalid request data type" in caught.value.body["status"]["info"]


def test_a_raw_answer_may_set_its_status() -> None:
    class Raw:
        def predict_raw(self, message: Any) -> Any:
            return {"status": {"code": 202, "info": "accepted"}}

    component = SeldonComponent(Raw(), "Raw")
    try:
        assert answer(component, "predict", {})[0] == 202
    finally:
        component.close()
