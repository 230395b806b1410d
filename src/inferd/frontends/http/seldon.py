"""Seldon Core's routes: the engine's for every model `inferd serve` serves, and the microservice's (the wrapper's)
for the class `inferd microservice` serves.

Engine routes (`prediction`, every served model: repository models, ensembles, graphs): `POST
/seldon/{namespace}/{name}/api/v1.0/predictions` (Seldon Core's ingress path, any namespace) and `POST
/api/v1.0/predictions` (`/api/v0.1/...`) naming the model by the `Seldon-Model` header (or the host, see
gateway/routing.py), and the same for `.../feedback`. Models that take whole messages get the SeldonMessage; models
that take tensors get it converted (compat/seldon/engine.py says how). Answers and errors are the engine's: `meta`
with a puid (made when the request has none), tags, routing, requestPath and metrics; errors as `{"status":
{"code", "info", "reason", "status": "FAILURE"}}`. Feedback to a model that takes tensors (it has no
`send_feedback`) is answered as the engine answers it for such a model, with an empty SeldonMessage (its `meta`
only), and counted (`FeedbackCounts`, on the metrics endpoint).

Microservice routes (`message`, `inferd microservice`):

Routes (as Seldon Core 1.x's Python wrapper): `/predict` and `/api/v1.0/predictions` (`/api/v0.1/...`),
`/transform-input`, `/transform-output`, `/route`, `/aggregate`, `/send-feedback` and `/api/v1.0/feedback`,
`GET /health/ping` ("pong"), `GET /health/status`, `GET /metadata` (see routes.py). Like Seldon's wrapper, every
route is served whatever the service type. The body is decoded here (JSON, a `json=` form field or query
parameter, multipart forms); the call itself is a request of the one pipeline, answered by the served class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ...compat.seldon.engine import (
    FeedbackCounts,
    answer_meta,
    decode_tensors,
    encode_tensors,
    error_body,
    feedback_puid,
    with_puid,
)
from ...compat.seldon.protocol import SeldonError, SeldonFailure, decode_body
from ...types import InferenceRequest, InferError
from .messages import JSON, QUERY_HEADER, HttpRequest, Params, Reply, error_headers

if TYPE_CHECKING:
    from .app import HttpFrontend

__all__ = ["FeedbackCounts", "engine_error_reply", "health_status", "message", "metadata", "not_allowed", "ping",
           "prediction"]

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


# ---- the engine's routes, for every served model ----

async def prediction(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    """`.../api/v1.0/predictions` and `.../feedback` for the model the route named (path, header or host)."""
    name = params.get("model_name", "")
    content_type = request.headers.get(b"content-type", b"").decode("latin-1")
    query = request.headers.get(QUERY_HEADER, b"").decode("latin-1")
    try:
        body = decode_body(request.body, content_type, query)
        if not name:
            raise SeldonError("no model named: use /seldon/{namespace}/{name}/api/v1.0/predictions, or the "
                              "Seldon-Model header")
        if request.route.endswith("/feedback"):
            return await _feedback(app, request, name, body)
        return await _predict(app, request, name, body)
    except SeldonError as exc:
        return _json_reply(exc.status_code, error_body(exc.status_code, exc.info))
    except SeldonFailure as exc:  # a message model's own failure: its status, in the engine's envelope
        return _json_reply(exc.status, error_body(exc.status, exc.message))
    except InferError as exc:
        return engine_error_reply(exc)


def engine_error_reply(exc: InferError) -> Reply:
    """An InferError in the engine's envelope, with its status and headers (401's challenge, 429's retry)."""
    status = exc.kind.http_status
    code, body, headers = _json_reply(status, error_body(status, exc.message))
    return code, body, [*headers, *error_headers(exc)]


async def _predict(app: HttpFrontend, request: HttpRequest, name: str, body: Any) -> Reply:
    message, puid = with_puid(body)
    server = app.server
    model = server.model(name)  # which kind of model: one that takes messages, or tensors
    context = request.context("seldon")
    if model.takes_messages:
        response = await server.infer_request(InferenceRequest(name, {}, {}, message=message, operation="predict"),
                                              context)
        status, answer = response.message
        if isinstance(answer, dict) and status < 400:
            meta = answer.get("meta")
            answer["meta"] = {**meta, "puid": meta.get("puid") or puid} if isinstance(meta, dict) else {"puid": puid}
        return _json_reply(status, answer)
    decoded = decode_tensors(message, list(model.inputs.values()), model.max_batch_size > 0, name)
    response = await server.infer_request(InferenceRequest(name, decoded.inputs, decoded.datatypes), context)
    answer = encode_tensors(response.outputs, decoded.form)
    answer["meta"] = answer_meta(message.get("meta"), puid,
                                 {response.model_name: f"{response.model_name}:{response.model_version}"})
    return _json_reply(200, answer)


async def _feedback(app: HttpFrontend, request: HttpRequest, name: str, body: Any) -> Reply:
    puid = feedback_puid(body)
    server = app.server
    model = server.model(name)
    if model.takes_messages:  # a router that learns, a graph: it takes the Feedback message itself
        call = InferenceRequest(name, {}, {}, message=body, operation="send-feedback")
        status, answer = (await server.infer_request(call, request.context("seldon"))).message
        return _json_reply(status, answer)
    app.seldon_feedback.record(name, float(body.get("reward") or 0.0))
    return _json_reply(200, {"meta": {"puid": puid}})
