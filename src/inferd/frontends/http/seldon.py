"""The HTTP front door of `inferd microservice`: Seldon's microservice routes next to the whole V2 API.

Routes (as Seldon Core 1.x's Python wrapper): `/predict` and `/api/v1.0/predictions` (`/api/v0.1/...`),
`/transform-input`, `/transform-output`, `/route`, `/aggregate`, `/send-feedback` and `/api/v1.0/feedback`,
`GET /health/ping` ("pong"), `GET /health/status`, `GET /metadata`. Every other path goes to the V2 frontend.
Like Seldon's wrapper, every route is served whatever the service type. The Content-Type (multipart forms) and
the query string (`GET /predict?json=...`, kept under `QUERY_HEADER`) come with the request's headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from ...backends._seldon_component import SeldonComponent
from ...server import Server
from . import seldon_protocol as protocol
from .app import DEFAULT_MAX_INPUT_SIZE, QUERY_HEADER, HttpFrontend, HttpRequest, Reply

log = logging.getLogger("inferd.seldon")

_JSON = [(b"content-type", b"application/json")]

_MESSAGE_ROUTES: dict[str, Callable[[SeldonComponent, Any], Any]] = {
    "predict": protocol.predict,
    "api/v1.0/predictions": protocol.predict,
    "api/v0.1/predictions": protocol.predict,
    "transform-input": lambda c, m: protocol.transform(c, "transform_input", m),
    "transform-output": lambda c, m: protocol.transform(c, "transform_output", m),
    "route": protocol.route,
    "aggregate": protocol.aggregate,
    "send-feedback": protocol.feedback,
    "api/v1.0/feedback": protocol.feedback,
    "api/v0.1/feedback": protocol.feedback,
}
# Seldon's short routes take GET too (with ?json=); its /api/... routes only POST.
_POST_ONLY = frozenset(p for p in _MESSAGE_ROUTES if p.startswith("api/"))


def _json_reply(status: int, value: Any) -> Reply:
    return status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_default), _JSON


def _default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _seldon_error(exc: BaseException) -> Reply:
    """Seldon's error JSON: its own errors, a SeldonMicroserviceException the class raised, or any other error."""
    if isinstance(exc, protocol.SeldonError):
        return _json_reply(exc.status_code, exc.to_dict())
    to_dict = getattr(exc, "to_dict", None)
    status = getattr(exc, "status_code", None)
    if callable(to_dict) and isinstance(status, int):  # seldon_core's SeldonMicroserviceException and subclasses
        try:
            return _json_reply(status, to_dict())
        except Exception:  # a broken to_dict: fall through to the generic form
            pass
    error = protocol.SeldonError(f"{type(exc).__name__}: {exc}", 500, "MICROSERVICE_INTERNAL_ERROR")
    return _json_reply(500, error.to_dict())


class SeldonHttpFrontend(HttpFrontend):
    """The V2 application plus Seldon's routes for one component."""

    def __init__(self, server: Server, component: SeldonComponent, *,
                 max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> None:
        super().__init__(server, max_input_size=max_input_size)
        self.component = component

    async def _dispatch(self, request: HttpRequest) -> Reply:
        path = "/".join(request.parts)
        handler = _MESSAGE_ROUTES.get(path)
        if handler is not None:
            allowed = ("POST",) if path in _POST_ONLY else ("GET", "POST")
            if request.method not in allowed:
                return _json_reply(405, protocol.SeldonError(f"method {request.method} is not allowed on /{path}",
                                                             405).to_dict())
            return await self._message(request, handler)
        if path in ("health/ping", "health/status", "metadata"):
            if request.method not in ("GET", "HEAD"):
                return _json_reply(405, protocol.SeldonError(f"method {request.method} is not allowed on /{path}",
                                                             405).to_dict())
            if path == "health/ping":
                return 200, b"pong", [(b"content-type", b"text/html; charset=utf-8")]
            call = protocol.health_status if path == "health/status" else protocol.metadata
            return await self._run(lambda: _json_reply(200, call(self.component)))
        return await super()._dispatch(request)

    async def _message(self, request: HttpRequest, handler: Callable[[SeldonComponent, Any], Any]) -> Reply:
        content_type = request.headers.get(b"content-type", b"").decode("latin-1")
        query = request.headers.get(QUERY_HEADER, b"").decode("latin-1")

        def answer() -> Reply:
            message = protocol.decode_body(request.body, content_type, query)
            response = handler(self.component, message)
            status = 200
            if isinstance(response, dict):  # a *_raw method may answer with a status of its own
                code = (response.get("status") or {}).get("code") if isinstance(response.get("status"), dict) else None
                if isinstance(code, int) and 100 <= code <= 599:
                    status = code
            return _json_reply(status, response)

        return await self._run(answer)

    async def _run(self, work: Callable[[], Reply]) -> Reply:
        """Run `work` (it calls user code) on the component's executor; any failure is Seldon's error JSON."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.component.executor, work)
        except Exception as exc:
            if not isinstance(exc, protocol.SeldonError):
                log.exception("the Seldon class raised")
            else:
                log.info("bad Seldon request: %s", exc.info)
            return _seldon_error(exc)
