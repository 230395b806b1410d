"""Seldon Core 1.x's microservice protocol: SeldonMessage JSON in and out, as its Python wrapper answers it.

A request is a SeldonMessage (`data` with `ndarray` / `tensor {shape, values}` and `names`, or `strData`,
`binData` (base64), `jsonData`, and `meta`), sent as a JSON body, as a form field / query parameter `json=`, or
as multipart form fields. The answer uses the request's form: a numeric result to a `tensor` request is a
tensor, otherwise an ndarray; a str, bytes or dict result is `strData`, `binData` or `jsonData`; `meta` carries
the request's tags and metrics plus the class's `tags()` and `metrics()`, its `puid` and `requestPath`.
Errors are Seldon's: `{"status": {"status": 1, "info": ..., "code": -1, "reason": "MICROSERVICE_BAD_DATA"}}`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import orjson

from ...multipart import form_parts
from ...types import ErrorKind, InferError, describe_error
from .component import NotImplementedBySeldonClass, RuntimeResponse, SeldonComponent

__all__ = ["OPERATIONS", "SeldonError", "SeldonFailure", "aggregate", "answer", "decode_body", "feedback",
           "health_status", "metadata", "predict", "route", "transform"]

log = logging.getLogger("inferd.seldon")

Message = dict[str, Any]


class SeldonError(Exception):
    """An error answered in Seldon's form (SeldonMicroserviceException's fields)."""

    def __init__(self, info: str, status_code: int = 400, reason: str = "MICROSERVICE_BAD_DATA") -> None:
        super().__init__(info)
        self.info = info
        self.status_code = status_code
        self.reason = reason

    def to_dict(self) -> Message:
        return {"status": {"status": 1, "info": self.info, "code": -1, "reason": self.reason}}


_KINDS = {400: ErrorKind.INVALID_ARGUMENT, 404: ErrorKind.NOT_FOUND, 405: ErrorKind.INVALID_ARGUMENT}


class SeldonFailure(InferError):
    """A Seldon call that failed, carrying the answer Seldon's wrapper gives for it (status and JSON), so the
    core counts it as any failed request and the front door answers in Seldon's form."""

    def __init__(self, status: int, body: Any) -> None:
        info = body.get("status", {}).get("info", "") if isinstance(body, dict) else ""
        kind = _KINDS.get(status, ErrorKind.INTERNAL if status >= 500 else ErrorKind.INVALID_ARGUMENT)
        super().__init__(kind, str(info) or f"Seldon call failed with status {status}")
        self.status = status
        self.body = body


def failure(exc: BaseException, hint: str = "") -> SeldonFailure:
    """Seldon's error answer for an exception: its own errors, a SeldonMicroserviceException the class raised
    (anything with `to_dict()` and an int `status_code`), or any other error as MICROSERVICE_INTERNAL_ERROR."""
    if isinstance(exc, SeldonFailure):
        return exc
    if isinstance(exc, SeldonError):
        log.info("bad Seldon request: %s", exc.info)
        return SeldonFailure(exc.status_code, exc.to_dict())
    to_dict = getattr(exc, "to_dict", None)
    status = getattr(exc, "status_code", None)
    if callable(to_dict) and isinstance(status, int):  # seldon_core's SeldonMicroserviceException and subclasses
        try:
            return SeldonFailure(status, to_dict())
        except Exception:  # a broken to_dict: fall through to the generic form
            pass
    log.error("the Seldon class raised: %s: %s", type(exc).__name__, exc, exc_info=exc)
    error = SeldonError(f"{describe_error(exc)}{hint}", 500, "MICROSERVICE_INTERNAL_ERROR")
    return SeldonFailure(500, error.to_dict())


# ---- request bodies ----

def decode_body(body: bytes, content_type: str, query: str) -> Any:
    """The request's JSON: multipart form fields, a `json=` form field or query parameter, or the body itself."""
    if "multipart/form-data" in content_type:
        return _multipart(body, content_type)
    stripped = body.lstrip()
    if stripped[:1] not in (b"{", b"[", b'"') and stripped:
        form = parse_qs(body.decode("utf-8", errors="replace"))
        if form.get("json"):
            return _loads(form["json"][0].encode("utf-8"))
    if query and not stripped:
        found = parse_qs(query).get("json")
        if found:
            return _loads(found[0].encode("utf-8"))
    if not stripped:
        raise SeldonError("Can't find JSON in data")
    return _loads(body)


def _loads(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise SeldonError("Can't find JSON in data") from None


def _multipart(body: bytes, content_type: str) -> Message:
    """Seldon's multipart form: each field a SeldonMessage key (JSON), `strData` as text, `binData` a file."""
    parts = form_parts(body, content_type)
    if parts is None:
        raise SeldonError("Can't find JSON in data")
    message: Message = {}
    for part in parts:
        if part.name == "binData":
            message[part.name] = base64.b64encode(part.content).decode("ascii")
        elif part.name == "strData" or part.filename is not None:
            message[part.name] = part.content.decode("utf-8", errors="replace")
        else:
            message[part.name] = _loads(part.content)
    return message


# ---- SeldonMessage -> what the user method gets ----

def extract(message: Any) -> tuple[Any, Message | None, Message | None]:
    """(features, meta, data) of a SeldonMessage, as Seldon's wrapper hands them to the user class."""
    if not isinstance(message, dict):
        raise SeldonError(f"Invalid request data type: {_short(message)}")
    meta = message.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise SeldonError("'meta' must be a JSON object")
    if "data" in message:
        data = message["data"]
        if not isinstance(data, dict):
            raise SeldonError("'data' must be a JSON object with 'ndarray' or 'tensor'")
        return _data_array(data), meta, data
    if "jsonData" in message:
        return message["jsonData"], meta, None
    if "strData" in message:
        if not isinstance(message["strData"], str):
            raise SeldonError("'strData' must be a string")
        return message["strData"], meta, None
    if "binData" in message:
        try:
            return base64.b64decode(message["binData"], validate=True), meta, None
        except (binascii.Error, TypeError, ValueError):
            raise SeldonError("'binData' is not valid base64") from None
    raise SeldonError(f"Invalid request data type: {_short(message)}")


def _data_array(data: Message) -> np.ndarray:
    try:
        if "tensor" in data:
            tensor = data["tensor"]
            if not isinstance(tensor, dict):
                raise SeldonError("'tensor' must be an object with 'shape' and 'values'")
            return np.array(tensor.get("values", []), dtype=np.float64).reshape(tensor.get("shape", [-1]))
        if "ndarray" in data:
            return np.array(data["ndarray"])
    except SeldonError:
        raise
    except (ValueError, TypeError) as exc:
        raise SeldonError(f"Invalid data: {exc}") from None
    return np.array([])


def _names(data: Message | None) -> list[str]:
    names = data.get("names") if data else None
    return list(names) if isinstance(names, list) else []


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "..."


# ---- what the user method returned -> SeldonMessage ----

def _request_path(request_meta: Message | None) -> Message:
    unit = os.environ.get("PREDICTIVE_UNIT_ID")
    image = os.environ.get("PREDICTIVE_UNIT_IMAGE")
    own = {unit: image} if unit and image else {}
    given = (request_meta or {}).get("requestPath") or {}
    return {**own, **given} if isinstance(given, dict) else own


def build_response(component: SeldonComponent, request: Message, result: RuntimeResponse,
                   meta: Message | None, extra_metrics: list[Any] | None = None, method: str = "predict") -> Message:
    """A SeldonMessage for `result`, in the request's data form, with the meta Seldon's wrapper adds.

    The class's metrics (unless `extra_metrics` are given) are recorded for Prometheus under `method`."""
    response: Message = {}
    value = result.data
    if isinstance(value, dict):
        response["jsonData"] = value
    elif isinstance(value, (bytes, bytearray)):
        response["binData"] = base64.b64encode(bytes(value)).decode("ascii")
    elif isinstance(value, str):
        response["strData"] = value
    elif isinstance(value, (np.ndarray, list, tuple)):
        array = value if isinstance(value, np.ndarray) else np.array(value)
        listed = value.tolist() if isinstance(value, np.ndarray) else list(value)
        numeric = np.issubdtype(array.dtype, np.number)
        request_data = request.get("data") if isinstance(request.get("data"), dict) else None
        as_tensor = numeric and (request_data is None or "tensor" in request_data)
        data: Message = {}
        if as_tensor:
            data["tensor"] = {"shape": list(array.shape), "values": array.ravel().tolist()}
        else:
            data["ndarray"] = listed
        data["names"] = component.class_names(array.ndim, array.shape[1] if array.ndim > 1 else 0)
        response["data"] = data
    else:
        raise SeldonError(f"Unknown data type returned as payload (must be list or np array):{_short(value)}",
                          500, "MICROSERVICE_BAD_DATA")
    out_meta: Message = {}
    tags = dict((meta or {}).get("tags") or {})
    tags.update(component.tags())
    tags.update(result.tags)
    metrics = list((meta or {}).get("metrics") or [])
    metrics.extend(extra_metrics if extra_metrics is not None else component.metrics(result.metrics, method))
    if tags:
        out_meta["tags"] = tags
    if metrics:
        out_meta["metrics"] = metrics
    request_meta = request.get("meta") if isinstance(request.get("meta"), dict) else None
    if request_meta and request_meta.get("puid"):
        out_meta["puid"] = request_meta["puid"]
    path = _request_path(request_meta)
    if path:
        out_meta["requestPath"] = path
    response["meta"] = out_meta
    return response


# ---- the API's methods (each runs on the component's executor: they call user code) ----

def predict(component: SeldonComponent, message: Any) -> Any:
    try:
        return component.raw("predict", message)
    except NotImplementedBySeldonClass:
        pass
    features, meta, data = extract(message)
    result = component.call_with_meta("predict", features, _names(data), meta, list)
    return build_response(component, message, result, meta)


def transform(component: SeldonComponent, method: str, message: Any) -> Any:
    """`transform_input` / `transform_output`: a class without the method passes the payload through."""
    try:
        return component.raw(method, message)
    except NotImplementedBySeldonClass:
        pass
    features, meta, data = extract(message)
    result = component.call_with_meta(method, features, _names(data), meta, lambda: features)
    return build_response(component, message, result, meta, method=method)


def route(component: SeldonComponent, message: Any) -> Any:
    try:
        return component.raw("route", message)
    except NotImplementedBySeldonClass:
        pass
    features, meta, data = extract(message)
    if not component.has("route"):
        raise SeldonError("Route not defined")
    result = component.call_with_meta("route", features, _names(data), meta, lambda: None)
    if isinstance(result.data, bool) or not isinstance(result.data, (int, np.integer)):
        raise SeldonError(f"Routing response must be int but got {result.data}")
    result.data = np.array([[int(result.data)]])
    return build_response(component, message, result, None, method="route")


def aggregate(component: SeldonComponent, message: Any) -> Any:
    try:
        return component.raw("aggregate", message)
    except NotImplementedBySeldonClass:
        pass
    if isinstance(message, list):
        messages = message
    elif isinstance(message, dict) and isinstance(message.get("seldonMessages"), list):
        messages = message["seldonMessages"]
    else:
        raise SeldonError(f"Invalid request data type: {_short(message)}")
    if not messages:
        raise SeldonError("'seldonMessages' is empty: there is nothing to aggregate")
    features_list, names_list, metas = [], [], []
    for item in messages:
        features, meta, data = extract(item)
        features_list.append(features)
        names_list.append(_names(data))
        metas.append(meta or {})
    try:
        result = component.aggregate(features_list, names_list)
    except NotImplementedBySeldonClass as exc:
        raise SeldonError(str(exc)) from None
    merged: Message = {"tags": {}, "requestPath": {}}
    metrics: list[Any] = []
    for meta in metas:
        merged["tags"].update(meta.get("tags") or {})
        merged["requestPath"].update(meta.get("requestPath") or {})
        metrics.extend(meta.get("metrics") or [])
    metrics.extend(component.metrics(result.metrics, "aggregate"))
    first = dict(messages[0]) if isinstance(messages[0], dict) else {}
    first["meta"] = {**(first.get("meta") or {}), "requestPath": merged["requestPath"]}
    return build_response(component, first, result, {"tags": merged["tags"]}, metrics)


def feedback(component: SeldonComponent, message: Any) -> Any:
    """`/send-feedback`: a Feedback message {request, response, reward, truth} to the class's `send_feedback`."""
    try:
        return component.raw("send_feedback", message)
    except NotImplementedBySeldonClass:
        pass
    if not isinstance(message, dict):
        raise SeldonError(f"Invalid request data type: {_short(message)}")
    request = message.get("request") or {}
    if not isinstance(request, dict):
        raise SeldonError("'request' must be a SeldonMessage")
    data = request.get("data") if isinstance(request.get("data"), dict) else None
    features = _data_array(data) if data is not None else np.array([])
    truth_message = message.get("truth") or {}
    truth_data = truth_message.get("data") if isinstance(truth_message, dict) else None
    truth = _data_array(truth_data) if isinstance(truth_data, dict) else np.array([])
    try:
        reward = float(message.get("reward", 0.0) or 0.0)
    except (TypeError, ValueError):
        raise SeldonError("'reward' must be a number") from None
    response = message.get("response") or {}
    routing_map = ((response.get("meta") or {}).get("routing") or {}) if isinstance(response, dict) else {}
    routing = routing_map.get(os.environ.get("PREDICTIVE_UNIT_ID", "0"))
    result = component.send_feedback(features, _names(data), reward, truth,
                                     int(routing) if isinstance(routing, (int, float)) else None)
    if result.data is None:
        result.data = np.array([])
    if reward:  # Seldon's wrapper counts feedback and sums its rewards as custom counters
        component.custom_metrics.record([{"type": "COUNTER", "key": "seldon_api_model_feedback", "value": 1},
                                         {"type": "COUNTER", "key": "seldon_api_model_feedback_reward",
                                          "value": reward}], "send_feedback")
    return build_response(component, request, result, None, method="send_feedback")


def _health_status(component: SeldonComponent, message: Any) -> Any:
    return health_status(component)


def _metadata(component: SeldonComponent, message: Any) -> Any:
    return metadata(component)


# The calls of Seldon's API by operation name (the route's path, as Seldon's wrapper names it).
OPERATIONS: dict[str, Any] = {
    "predict": predict,
    "transform-input": lambda c, m: transform(c, "transform_input", m),
    "transform-output": lambda c, m: transform(c, "transform_output", m),
    "route": route,
    "aggregate": aggregate,
    "send-feedback": feedback,
    "health-status": _health_status,
    "metadata": _metadata,
}


def answer(component: SeldonComponent, operation: str, message: Any) -> tuple[int, Any]:
    """Run one call of Seldon's API on the user's object (on the calling thread): the HTTP status and JSON
    answer; a failure is raised as SeldonFailure carrying Seldon's error answer."""
    call = OPERATIONS.get(operation)
    if call is None:
        raise SeldonFailure(404, SeldonError(f"unknown Seldon operation '{operation}'", 404).to_dict())
    try:
        response = call(component, message)
    except Exception as exc:
        raise failure(exc, _type_hint(exc, operation, message)) from None
    status = 200
    if isinstance(response, dict):  # a *_raw method may answer with a status of its own
        code = (response.get("status") or {}).get("code") if isinstance(response.get("status"), dict) else None
        if isinstance(code, int) and 100 <= code <= 599:
            status = code
    return status, response


def _type_hint(exc: BaseException, operation: str, message: Any) -> str:
    """For a class that fails on the type of what it was given (a TypeError or AttributeError on a strData,
    binData or jsonData request): what X was, so the user looks at the class rather than at the server."""
    if not isinstance(exc, (TypeError, AttributeError)) or not isinstance(message, dict):
        return ""
    key = next((k for k in ("strData", "binData", "jsonData") if k in message), None)
    if key is None:
        return ""
    kind = {"strData": "a str", "binData": "bytes", "jsonData": "the JSON value"}[key]
    return f" ({operation} got X as {kind}: the request's {key})"


def health_status(component: SeldonComponent) -> Any:
    return build_response(component, {}, RuntimeResponse(component.health_status()), None, method="health_status")


def metadata(component: SeldonComponent) -> Message:
    image = os.environ.get("PREDICTIVE_UNIT_IMAGE", "")
    name, _, version = image.rpartition(":") if ":" in image else (image, "", "")
    return {"name": name, "versions": [version], "platform": "", "inputs": [], "outputs": [], "custom": {},
            **component.init_metadata()}
