"""TorchServe's inference API: /ping, /predictions/{model}[/{version}], the handler's answer and TorchServe's errors.

Requests go through the HTTP application (`HttpFrontend.handle`, no socket) to an in-process Server whose models run
on the test's function backend, so each test sees what a client would and what the model got.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

import inferd
from function_backend import Tensors, behaviour, registered, write_model
from inferd.config import ConfigError
from inferd.frontends.http import HttpFrontend
from inferd.types import ErrorKind, InferError

# What a .mar archive is served as: the body and its headers in, the handler's response and its meta out.
HANDLER = """
max_batch_size: 4
version_policy { all {} }
input { name: "body" data_type: TYPE_STRING dims: [1] }
input { name: "headers" data_type: TYPE_STRING dims: [1] optional: true }
output { name: "response" data_type: TYPE_STRING dims: [1] }
output { name: "response_meta" data_type: TYPE_STRING dims: [1] }
"""
NUMERIC = """
input { name: "x" data_type: TYPE_FP32 dims: [2] }
output { name: "y" data_type: TYPE_FP32 dims: [2] }
"""
ONE_BYTES = """
input { name: "text" data_type: TYPE_STRING dims: [1] }
output { name: "score" data_type: TYPE_FP32 dims: [1] }
output { name: "label" data_type: TYPE_INT64 dims: [1] }
"""
SEEN: list[tuple[str, Tensors]] = []  # (model, inputs) of every execution of the current test


def _bytes(value: bytes) -> np.ndarray:
    array = np.empty((1, 1), dtype=np.object_)
    array[0, 0] = value
    return array


def _answer(payload: bytes, meta: dict[str, Any] | None = None) -> Any:
    """A handler's outputs: its answer and the meta its context set (none: an empty object)."""
    def outputs(inputs: Tensors) -> Tensors:
        return {"response": _bytes(payload), "response_meta": _bytes(orjson.dumps(meta or {}))}
    return outputs


def _set(model: str, function: Any) -> None:
    def execute(inputs: Tensors) -> Tensors:
        SEEN.append((model, inputs))
        return function(inputs)
    behaviour(model).execute = execute


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFrontend]:
    repo = tmp_path_factory.mktemp("torchserve") / "models"
    write_model(repo, "mnist", HANDLER, versions=(1, 2))
    write_model(repo, "numeric", NUMERIC)
    write_model(repo, "sentiment", ONE_BYTES)
    write_model(repo, "failed", NUMERIC)
    with registered(), pytest.MonkeyPatch.context() as patch:
        patch.setattr("inferd.manager._RETIRE_GRACE_S", 0.0, raising=False)  # nothing is in flight at close
        behaviour("failed").load_error = ConfigError("the archive is corrupt")
        with inferd.Server(model_repository=repo, strict_readiness=False) as server:
            yield HttpFrontend(server)


@pytest.fixture(autouse=True)
def models(app: HttpFrontend) -> None:
    """Each test starts from the default behaviours and an empty record of executions."""
    _set("mnist", _answer(b'{"digit": 7}'))
    _set("numeric", lambda i: {"y": i["x"] * 2})
    _set("sentiment", lambda i: {"score": np.array([[0.5]], np.float32), "label": np.array([[1]])})
    SEEN.clear()


async def _call(app: HttpFrontend, method: str, path: str, body: bytes = b"",
                headers: dict[bytes, bytes] | None = None) -> tuple[int, bytes, dict[bytes, bytes]]:
    status, payload, extra = await app.handle(method, path, headers or {}, body)
    return status, payload, dict(extra)


async def _error(app: HttpFrontend, method: str, path: str, code: int, kind: str, message: str | None = None) -> None:
    status, payload, headers = await _call(app, method, path, b"{}")
    doc = orjson.loads(payload)
    assert (status, doc["code"], doc["type"]) == (code, code, kind), doc
    assert headers[b"content-type"] == b"application/json"
    if message is not None:
        assert doc["message"] == message


def _inputs(model: str) -> Tensors:
    [(name, inputs)] = SEEN
    assert name == model
    return inputs


# ---- /ping ----

async def test_ping(app: HttpFrontend, tmp_path: Any) -> None:
    assert await _call(app, "GET", "/ping") == (200, b'{\n  "status": "Healthy"\n}',
                                                {b"content-type": b"application/json"})
    await _error(app, "POST", "/ping", 405, "MethodNotAllowedException")
    assert (await _call(app, "GET", "/ping/more"))[0] == 404
    with inferd.Server(model_repository=tmp_path, start=False) as not_started:
        status, payload, _ = await _call(HttpFrontend(not_started), "GET", "/ping")
    assert (status, orjson.loads(payload)) == (500, {"status": "Unhealthy"})


# ---- /predictions ----

async def test_body_and_content_type_reach_the_handler(app: HttpFrontend) -> None:
    reply = await _call(app, "POST", "/predictions/mnist", b"\x89PNG...", {b"content-type": b"image/png"})
    assert reply == (200, b'{"digit": 7}', {b"content-type": b"application/json"})
    inputs = _inputs("mnist")
    assert behaviour("mnist").executed[-1] == 2  # no version asked: the newest
    assert inputs["body"].shape == (1, 1)  # a batching model gets one row
    assert inputs["body"][0, 0] == b"\x89PNG..."
    assert orjson.loads(inputs["headers"][0, 0]) == {"content-type": "image/png"}


async def test_without_content_type_the_handler_gets_no_headers(app: HttpFrontend) -> None:
    await _call(app, "PUT", "/predictions/mnist", b"data")
    assert orjson.loads(_inputs("mnist")["headers"][0, 0]) == {}


@pytest.mark.parametrize(("version", "served"), [("1", 1), ("1.0", 1), ("2.0.0", 2)])
async def test_versions_as_torchserve_writes_them(app: HttpFrontend, version: str, served: int) -> None:
    status, _, _ = await _call(app, "POST", f"/predictions/mnist/{version}", b"x")
    assert status == 200
    assert behaviour("mnist").executed[-1] == served


async def test_a_model_with_one_bytes_input_and_numeric_outputs(app: HttpFrontend) -> None:
    status, payload, _ = await _call(app, "POST", "/predictions/sentiment", b"great")
    assert _inputs("sentiment")["text"].tolist() == [b"great"]  # not batching: shape [1]
    assert (status, orjson.loads(payload)) == (200, {"score": [[0.5]], "label": [[1]]})


async def test_a_model_without_bytes_input(app: HttpFrontend) -> None:
    await _error(app, "POST", "/predictions/numeric", 400, "BadRequestException")
    assert SEEN == []


async def test_handler_meta_sets_status_content_type_and_headers(app: HttpFrontend) -> None:
    meta = {"status": 201, "content_type": "text/plain", "headers": {
        "X-Request-Id": "r1", "Content-Length": "999", "Bad Name": "x", "X-Split": "a\r\nInjected: yes"}}
    _set("mnist", _answer(b"created", meta))
    status, payload, headers = await _call(app, "POST", "/predictions/mnist", b"x")
    assert (status, payload) == (201, b"created")
    # The server's own headers and names that are not tokens are dropped; a value cannot split the response.
    assert headers == {b"content-type": b"text/plain", b"x-request-id": b"r1", b"x-split": b"a  Injected: yes"}


@pytest.mark.parametrize("meta", [{"status": 99}, {"status": "201"}, {"status": 600}])
async def test_a_status_that_is_not_one_is_200(app: HttpFrontend, meta: dict[str, Any]) -> None:
    _set("mnist", _answer(b"ok", meta))
    assert (await _call(app, "POST", "/predictions/mnist", b"x"))[0] == 200


async def test_meta_that_is_not_json_is_ignored(app: HttpFrontend) -> None:
    _set("mnist", lambda i: {"response": _bytes(b"ok"), "response_meta": _bytes(b"not json")})
    assert await _call(app, "POST", "/predictions/mnist", b"x") == (200, b"ok", {b"content-type": b"application/json"})


async def test_unknown_model_and_version(app: HttpFrontend) -> None:
    await _error(app, "POST", "/predictions/nope", 404, "ModelNotFoundException", "Model not found: nope")
    await _error(app, "POST", "/predictions/mnist/3.0", 404, "ModelVersionNotFoundException",
                 "Model version: 3.0 does not exist for model: mnist")
    await _error(app, "POST", "/predictions/mnist/v1", 404, "ModelVersionNotFoundException")


async def test_a_model_whose_load_failed_is_not_registered(app: HttpFrontend) -> None:
    await _error(app, "POST", "/predictions/failed", 404, "ModelNotFoundException", "Model not found: failed")
    await _error(app, "POST", "/predictions/failed/1", 404, "ModelVersionNotFoundException")


async def test_predictions_need_post_or_put(app: HttpFrontend) -> None:
    await _error(app, "GET", "/predictions/mnist", 405, "MethodNotAllowedException")


@pytest.mark.parametrize("path", ["/predictions", "/predictions/mnist/1/extra"])
async def test_other_paths_are_the_servers_404(app: HttpFrontend, path: str) -> None:
    status, payload, _ = await _call(app, "POST", path, b"x")
    assert (status, orjson.loads(payload)) == (404, {"error": "Not Found"})


async def test_an_empty_model_name_is_not_found(app: HttpFrontend) -> None:
    status, _, _ = await _call(app, "POST", "/predictions//1", b"x")
    assert status == 404
    assert SEEN == []


async def test_a_handler_that_raised_says_only_prediction_failed(app: HttpFrontend) -> None:
    def fails(inputs: Tensors) -> Tensors:
        raise InferError(ErrorKind.UNAVAILABLE, "Prediction failed: ZeroDivisionError: division by zero")
    _set("mnist", fails)
    await _error(app, "POST", "/predictions/mnist", 503, "InternalServerException", "Prediction failed")


async def test_a_handlers_prediction_exception_keeps_its_message(app: HttpFrontend) -> None:
    def refuses(inputs: Tensors) -> Tensors:
        raise InferError.invalid("image too small")
    _set("mnist", refuses)
    await _error(app, "POST", "/predictions/mnist", 400, "InternalServerException", "image too small")
