"""Seldon Core 1.x's microservice routes, served by `inferd microservice` next to the whole V2 API.

Routes (as Seldon Core 1.x's Python wrapper): `/predict` and `/api/v1.0/predictions` (`/api/v0.1/...`),
`/transform-input`, `/transform-output`, `/route`, `/aggregate`, `/send-feedback` and `/api/v1.0/feedback`,
`GET /health/ping` ("pong"), `GET /health/status`, `GET /metadata` (see routes.py). Like Seldon's wrapper, every
route is served whatever the service type. The body is decoded here (JSON, a `json=` form field or query
parameter, multipart forms); the call itself is a request of the one pipeline, answered by the served class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ...compat.seldon.protocol import SeldonError, SeldonFailure, decode_body
from ...types import InferenceRequest, InferError
from .messages import JSON, QUERY_HEADER, HttpRequest, Params, Reply, error_headers

if TYPE_CHECKING:
    from .app import HttpFrontend

__all__ = ["health_status", "message", "metadata", "not_allowed", "ping"]

# Route path -> the operation of Seldon's API it calls.
_OPERATIONS = {
    "predict": "predict", "api/v1.0/predictions": "predict", "api/v0.1/predictions": "predict",
    "transform-input": "transform-input", "transform-output": "transform-output", "route": "route",
    "aggregate": "aggregate", "send-feedback": "send-feedback", "api/v1.0/feedback": "send-feedback",
    "api/v0.1/feedback": "send-feedback",
}


def _json_reply(status: int, value: Any) -> Reply:
    return status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_default), JSON


def _default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def not_allowed(method: str, path: str) -> Reply:
    return _json_reply(405, SeldonError(f"method {method} is not allowed on /{path.strip('/')}", 405).to_dict())


async def message(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    content_type = request.headers.get(b"content-type", b"").decode("latin-1")
    query = request.headers.get(QUERY_HEADER, b"").decode("latin-1")
    try:
        body = decode_body(request.body, content_type, query)
    except SeldonError as exc:
        return _json_reply(exc.status_code, exc.to_dict())
    return await _call(app, request, _OPERATIONS[request.path.strip("/")], body)


async def ping(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return 200, b"pong", [(b"content-type", b"text/html; charset=utf-8")]


async def health_status(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return await _call(app, request, "health-status", None)


async def metadata(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return await _call(app, request, "metadata", None)


async def _call(app: HttpFrontend, request: HttpRequest, operation: str, body: Any) -> Reply:
    """One call of Seldon's API as a request of the pipeline, for the served model; errors in Seldon's form."""
    call = InferenceRequest(app.default_model, {}, {}, message=body if body is not None else {},
                            operation=operation)
    try:
        response = await app.server.infer_request(call, request.context("seldon"))
    except SeldonFailure as exc:
        return _json_reply(exc.status, exc.body)
    except InferError as exc:  # refused by the core (unavailable, queue full, limits): Seldon's form too
        reason = "MICROSERVICE_BAD_DATA" if exc.kind.http_status < 500 else "MICROSERVICE_INTERNAL_ERROR"
        status, body, headers = _json_reply(exc.kind.http_status,
                                            SeldonError(exc.message, exc.kind.http_status, reason).to_dict())
        return status, body, [*headers, *error_headers(exc)]
    status, answer = response.message
    return _json_reply(status, answer)
