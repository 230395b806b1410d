"""TorchServe's inference API on the main HTTP port, so TorchServe clients switch without changes.

- `POST|PUT /predictions/{model}[/{version}]` with a raw body (image bytes, JSON, text, multipart form-data): the
  body goes to the model's BYTES input (`body`) and its `Content-Type` to the optional `headers` input; the answer
  is the `response` output element as it is (the handler's JSON, text or bytes), with the status, content type
  and headers the handler set (`response_meta`). A version "1.0" means version 1 (TorchServe's versions are
  strings such as the archiver's default "1.0"; inferd's are numbers).
- `GET /ping`: `{"status": "Healthy"}` while the server is live, else 500 `{"status": "Unhealthy"}` (TorchServe's
  health counts only registered models: a model that is unloaded or failed to load is not one).

Errors are TorchServe's JSON, `{"code": 404, "type": "ModelNotFoundException", "message": "Model not found: m"}`:
an unknown model or version is 404, as is one without a ready version (unloaded, or its load failed: TorchServe
would not have registered it; the reason is in the repository index), a handler
that raised 503 InternalServerException "Prediction failed" (the exception and its traceback are in the server's
log), a handler's `PredictionException(message, code)` that code (the closest one inferd has) and message, other
methods 405 MethodNotAllowedException. Other paths get the server's plain 404 `{"error": "Not Found"}` (TorchServe
says ResourceNotFoundException). Only the `Content-Type` header reaches the handler (`context.get_request_header`);
TorchServe's management API (`/models`) is a door of its own, on its own port as in TorchServe
(`torchserve_management.py`, `--torchserve-management-port`).
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ...model import ServedModel
from ...server import Server
from ...types import InferenceRequest, InferError
from .messages import HttpRequest, Params, Reply, error_headers, error_reply

if TYPE_CHECKING:
    from .app import HttpFrontend

__all__ = ["not_allowed", "ping", "predict"]

_JSON = [(b"content-type", b"application/json")]
_PREDICTION_FAILED = "Prediction failed"
_VERSION = re.compile(r"^(\d+)(?:\.0+)*$")
# Headers a handler may not set: the server writes these itself.
_RESERVED = frozenset(("content-length", "transfer-encoding", "connection", "content-type", "date"))


def _error(code: int, kind: str, message: str) -> Reply:
    body = orjson.dumps({"code": code, "type": kind, "message": message}, option=orjson.OPT_INDENT_2)
    return code, body, _JSON


def not_allowed() -> Reply:
    return _error(405, "MethodNotAllowedException", "Requested method is not allowed, please refer to API document.")


async def ping(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    healthy = app.server.live()  # TorchServe counts only registered models; unloaded and failed ones are not
    doc = {"status": "Healthy" if healthy else "Unhealthy"}
    return 200 if healthy else 500, orjson.dumps(doc, option=orjson.OPT_INDENT_2), _JSON


async def predict(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    """`POST|PUT /predictions/{model}[/{version}]`; never raises InferError: errors are TorchServe's JSON."""
    server = app.server
    if not params["model_name"]:  # `/predictions//1`: no model named at all is no TorchServe route
        return error_reply(404, "Not Found")
    principal = request.principal
    granted = None if principal is None else principal.versions_of(params["model_name"])
    found = _served(server, params["model_name"], params.get("model_version", ""), granted)
    if not isinstance(found, ServedModel):
        return found
    try:
        return await _predict(server, found, request)
    except InferError as exc:
        return _failed(exc)


def version_number(version: str) -> str:
    """inferd's version number of a TorchServe version ("1.0" is 1); a version that is no number as it is."""
    match = _VERSION.match(version)
    return str(int(match.group(1))) if match is not None else version


def missing_model(name: str, version: str = "") -> Reply:
    """TorchServe's answer for a model (or a version of it) it does not have."""
    if version:
        return _error(404, "ModelVersionNotFoundException",
                      f"Model version: {version} does not exist for model: {name}")
    return _error(404, "ModelNotFoundException", f"Model not found: {name}")


def _served(server: Server, name: str, version: str, granted: frozenset[str] | None = None) -> ServedModel | Reply:
    """The model version a request calls. `granted`: the versions the caller's tenant may call (None: all); with
    no version named, the newest of those that is ready."""
    known = server.version_states(name)
    if known is None:
        return missing_model(name)
    if not version and granted is not None:
        for granted_version in sorted(granted, key=int, reverse=True):
            with contextlib.suppress(InferError):
                return server.model(name, granted_version)
        return missing_model(name)
    number = ""
    if version:
        match = _VERSION.match(version)
        if match is None or int(match.group(1)) not in known[0]:
            return missing_model(name, version)
        number = str(int(match.group(1)))
    try:
        return server.model(name, number)
    except InferError:  # not loaded, or its load failed: TorchServe has no such model registered
        return missing_model(name, version if number else "")


def _audit_refusal(server: Server, request: HttpRequest, served: ServedModel, error: InferError) -> None:
    """A call refused before the pipeline still leaves its audit record (with auth on)."""
    gateway = server.gateway
    if gateway is not None:
        principal = request.principal
        gateway.refused("torchserve", request.route, served.name, error, request.headers.get(b"x-request-id"),
                        request.context("torchserve").peer, tenant=None if principal is None else principal.name,
                        version=served.version_str)


def _bytes_tensor(value: bytes, batching: bool) -> np.ndarray:
    array = np.empty(1, dtype=np.object_)
    array[0] = value
    return array.reshape((1, 1) if batching else (1,))


async def _predict(server: Server, served: ServedModel, request: HttpRequest) -> Reply:
    headers, body = request.headers, request.body
    byte_inputs = [n for n, s in served.inputs.items() if s.datatype == "BYTES"]
    if not byte_inputs:
        message = (f"model '{served.name}' has no BYTES input: /predictions serves models that take the request "
                   "body as bytes (TorchServe archives)")
        _audit_refusal(server, request, served, InferError.invalid(message))
        return _error(400, "BadRequestException", message)
    body_input = "body" if "body" in byte_inputs else byte_inputs[0]
    batching = served.max_batch_size > 0
    inputs = {body_input: _bytes_tensor(body, batching)}
    if "headers" in byte_inputs and body_input != "headers":
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        given = {"content-type": content_type} if content_type else {}
        inputs["headers"] = _bytes_tensor(orjson.dumps(given), batching)
    call = InferenceRequest(served.name, inputs, dict.fromkeys(inputs, "BYTES"), served.version_str)
    response = await server.infer_request(call, request.context("torchserve"))
    outputs = response.outputs
    answer = outputs.get("response")
    if answer is None or answer.dtype != np.object_:
        byte_outputs = [a for a in outputs.values() if a.dtype == np.object_]
        answer = byte_outputs[0] if len(outputs) == 1 and byte_outputs else None
    if answer is None:  # a model with numeric outputs: all of them, as JSON
        doc = {n: a.tolist() for n, a in outputs.items()}
        return 200, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2), _JSON
    payload = _element(answer)
    meta = outputs.get("response_meta")
    if meta is None or meta.dtype != np.object_:
        return 200, payload, _JSON
    return _with_meta(payload, _element(meta))


def _element(array: np.ndarray) -> bytes:
    value = array.ravel()[0]
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _with_meta(payload: bytes, raw: bytes) -> Reply:
    """The handler's answer with the status, content type and headers it set through its context."""
    try:
        meta: dict[str, Any] = orjson.loads(raw)
    except orjson.JSONDecodeError:
        meta = {}
    status = meta.get("status", 200)
    status = status if isinstance(status, int) and 100 <= status <= 599 else 200
    content_type = str(meta.get("content_type") or "application/json")
    extra = [(b"content-type", _header_value(content_type))]
    handler_headers = meta.get("headers")
    if isinstance(handler_headers, dict):
        for key, value in handler_headers.items():
            key, value = str(key), str(value)
            if key.lower() in _RESERVED or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", key):
                continue
            extra.append((key.lower().encode("ascii"), _header_value(value)))
    return status, payload, extra


def _header_value(value: str) -> bytes:
    """A header value without CR / LF (a handler cannot split the response) and in latin-1."""
    return value.replace("\r", " ").replace("\n", " ").encode("latin-1", errors="replace")


def _failed(exc: InferError) -> Reply:
    message = exc.message
    if message.startswith(f"{_PREDICTION_FAILED}: "):  # the handler raised: TorchServe says only this
        message = _PREDICTION_FAILED
    status, body, headers = _error(exc.kind.http_status, "InternalServerException", message)
    return status, body, [*headers, *error_headers(exc)]
