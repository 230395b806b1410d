"""Raw ASGI application for the V2 REST protocol.

No framework router: inference is the hot path, and every layer between the socket and the model costs
throughput on small models. Routing is a split of the path; handlers translate wire format and call the Server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ...config import ConfigError
from ...server import Server
from ...types import ErrorKind, InferError
from .openapi import static_reply
from .shm import SHARED_MEMORY_ROUTES, shared_memory_route
from .torchserve import TORCHSERVE_ROUTES, torchserve_route
from .v1 import v1_route
from .v2 import decode_infer_request, encode_infer_response, load_json_object

log = logging.getLogger("inferd.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_MAX_INPUT_SIZE = 64 * 1024 * 1024  # Triton's --http-max-input-size default
# Smaller responses go uncompressed even when the client accepts gzip: compressing them costs more than it saves.
COMPRESS_MIN_SIZE = 1024

_JSON = [(b"content-type", b"application/json")]
# The request headers the handlers read (others are not kept).
WANTED_HEADERS = frozenset((b"content-length", b"content-encoding", b"accept-encoding",
                             b"inference-header-content-length", b"content-type"))
# Where a request's query string (after "?", raw) is kept among its headers: no real header name has a colon.
QUERY_HEADER = b":query"


class HttpRequest:
    """The parts of an HTTP request the handlers need."""

    __slots__ = ("body", "headers", "method", "parts")

    def __init__(self, method: str, parts: list[str], headers: dict[bytes, bytes], body: bytes) -> None:
        self.method = method
        self.parts = parts
        self.headers = headers
        self.body = body


Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
_EMPTY_OK: Reply = (200, b"", [])


def _json_reply(status: int, value: Any) -> Reply:
    return status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), _JSON


def error_reply(status: int, message: str) -> Reply:
    return _json_reply(status, {"error": message})


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in (b"", b"identity"):
        return body
    if encoding == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS  # HTTP "deflate" is the zlib format, as tritonclient sends it
    else:
        raise InferError.invalid(f"unsupported Content-Encoding '{encoding.decode(errors='replace')}'")
    try:
        inflater = zlib.decompressobj(wbits)
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InferError.invalid(f"failed to decompress the request body ({encoding.decode()}): {exc}") from None
    if len(data) > limit:
        raise InferError(ErrorKind.TOO_LARGE, f"decompressed request body exceeds the limit of {limit} bytes")
    return data


def _compress(body: bytes, accept: bytes) -> tuple[bytes, bytes | None]:
    accept = accept.lower()
    if b"gzip" in accept:
        return zlib.compress(body, wbits=16 + zlib.MAX_WBITS), b"gzip"
    if b"deflate" in accept:
        return zlib.compress(body), b"deflate"
    return body, None


class HttpFrontend:
    """The ASGI application. `max_input_size` bounds request bodies (before and after decompression)."""

    def __init__(self, server: Server, *, max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> None:
        self.server = server
        self.max_input_size = max_input_size

    async def handle(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> Reply:
        """Answer one request (the body already read, within the size limit); never raises."""
        try:
            encoding = headers.get(b"content-encoding")
            if encoding:
                body = _decompress(body, encoding, self.max_input_size)
            return await self._dispatch(HttpRequest(method, path.strip("/").split("/"), headers, body))
        except InferError as exc:
            return error_reply(exc.kind.http_status, exc.message)
        except Exception as exc:  # a handler bug is a 500 for this request, never a dead server
            log.exception("unhandled error on %s %s", method, path)
            return error_reply(500, f"internal error: {type(exc).__name__}: {exc}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same application as ASGI, for running under any ASGI server."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k: v for k, v in scope["headers"] if k in WANTED_HEADERS}
        if scope.get("query_string"):
            headers[QUERY_HEADER] = scope["query_string"]
        try:
            body = await self._read_body(headers, receive)
        except InferError as exc:
            status, payload, extra = error_reply(exc.kind.http_status, exc.message)
        else:
            status, payload, extra = await self.handle(scope["method"], scope["path"], headers, body)
        response_headers = [*extra, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        limit = self.max_input_size
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InferError(ErrorKind.TOO_LARGE, f"request body of {int(declared)} bytes exceeds the limit of "
                             f"{limit} bytes (--http-max-input-size)")
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            size = len(body)
            while message.get("more_body", False):
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise InferError.invalid("client disconnected")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
            body = b"".join(chunks)
        else:
            size = len(body)
        if size > limit:
            raise InferError(ErrorKind.TOO_LARGE, f"request body exceeds the limit of {limit} bytes "
                             "(--http-max-input-size)")
        return body

    async def _dispatch(self, request: HttpRequest) -> Reply:
        parts = request.parts
        if not parts or parts[0] != "v2":
            if parts[0] == "v1":  # TF-Serving's REST API (KServe V1)
                status, value = await v1_route(self.server, request.method, parts, request.body)
                return _json_reply(status, value)
            if parts[0] in TORCHSERVE_ROUTES:  # TorchServe's inference API: /predictions/{m}[/{v}], /ping
                reply = await torchserve_route(self.server, request.method, parts, request.headers, request.body)
                if reply is not None:
                    return reply
            static = static_reply(parts)  # /openapi.json and /docs
            if static is None:
                return error_reply(404, "Not Found")
            return self._get(request.method) or static
        if parts[1:] == ["models", "stats"]:
            return self._get(request.method) or _json_reply(200, self.server.statistics())
        if parts[1:] == ["trace", "setting"]:
            return self._trace_setting(request, "")
        if parts[1:] == ["logging"]:
            return self._logging(request)
        if len(parts) >= 3 and parts[1] == "models":
            return await self._model_route(request, parts[2], parts[3:])
        method = request.method
        if len(parts) == 1:
            return self._get(method) or _json_reply(200, self.server.metadata())
        if parts[1] == "health" and len(parts) == 3:
            bad = self._get(method)
            if bad:
                return bad
            if parts[2] == "live":
                return _EMPTY_OK if self.server.live() else (400, b"", [])
            if parts[2] == "ready":
                return _EMPTY_OK if self.server.ready() else (400, b"", [])
        if parts[1] == "repository":
            return await self._repository_route(request, parts[2:])
        if parts[1] in SHARED_MEMORY_ROUTES:
            status, value = shared_memory_route(self.server, method, parts[1], parts[2:], request.body)
            return _EMPTY_OK if value is None else _json_reply(status, value)
        return error_reply(404, "Not Found")

    @staticmethod
    def _get(method: str) -> Reply | None:
        if method in ("GET", "HEAD"):
            return None
        return error_reply(405, f"method {method} is not allowed here")

    @staticmethod
    def _post(method: str) -> Reply | None:
        if method == "POST":
            return None
        return error_reply(405, f"method {method} is not allowed here (use POST)")

    async def _model_route(self, request: HttpRequest, name: str, rest: list[str]) -> Reply:
        if rest == ["trace", "setting"]:
            return self._trace_setting(request, name)
        version = ""
        if rest and rest[0] == "versions":
            if len(rest) < 2:
                return error_reply(404, "Not Found")
            version, rest = rest[1], rest[2:]
        action = rest[0] if rest else ""
        if len(rest) > 1:
            return error_reply(404, "Not Found")
        server = self.server
        if action == "infer":
            bad = self._post(request.method)
            if bad:
                return bad
            return await self._infer(request, name, version)
        bad = self._get(request.method)
        if bad:
            return bad
        if action == "":
            return _json_reply(200, server.model_metadata(name, version))
        if action == "ready":
            return _EMPTY_OK if server.model_ready(name, version) else (400, b"", [])
        if action == "config":
            return _json_reply(200, server.model_config_json(name, version))
        if action == "stats":
            return _json_reply(200, server.statistics(name, version))
        return error_reply(404, "Not Found")

    def _trace_setting(self, request: HttpRequest, model: str) -> Reply:
        if request.method == "POST":
            return _json_reply(200, self.server.update_trace_settings(load_json_object(request.body), model))
        return self._get(request.method) or _json_reply(200, self.server.trace_settings(model))

    def _logging(self, request: HttpRequest) -> Reply:
        if request.method == "POST":
            return _json_reply(200, self.server.update_log_settings(load_json_object(request.body)))
        return self._get(request.method) or _json_reply(200, self.server.log_settings())

    async def _infer(self, request: HttpRequest, name: str, version: str) -> Reply:
        raw_length = request.headers.get(b"inference-header-content-length")
        header_length = None
        if raw_length is not None:
            try:
                header_length = int(raw_length)
            except ValueError:
                raise InferError.invalid("Inference-Header-Content-Length must be an integer") from None
        try:
            infer_request, options = decode_infer_request(request.body, header_length, name, version,
                                                          self.server.limits)
        except InferError:
            self.server.model(name, version)  # an unknown model is the clearer error
            raise
        response = await self.server.infer_request(infer_request)
        body, json_length = encode_infer_response(response, options)
        headers = _JSON if json_length is None else [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(json_length).encode())]
        # Like Triton, only inference responses are compressed (clients such as tritonclient's aio client send
        # Accept-Encoding on every call but only decompress inference responses).
        accept = request.headers.get(b"accept-encoding")
        if accept and len(body) >= COMPRESS_MIN_SIZE:
            body, encoding = _compress(body, accept)
            if encoding:
                headers = [*headers, (b"content-encoding", encoding)]
        return 200, body, headers

    async def _repository_route(self, request: HttpRequest, rest: list[str]) -> Reply:
        bad = self._post(request.method)
        if bad:
            return bad
        server = self.server
        doc = load_json_object(request.body)
        if rest == ["index"]:
            return _json_reply(200, server.repository_index(ready_only=bool(doc.get("ready", False))))
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            name = rest[1]
            params = doc.get("parameters") or {}
            if not isinstance(params, dict):
                return error_reply(400, "'parameters' must be a JSON object")
            if rest[2] == "unload":
                await _in_thread(server.unload, name)
                return _EMPTY_OK
            files: dict[str, bytes] = {}
            for key, value in params.items():
                if key.startswith("file:"):
                    if not isinstance(value, str):
                        return error_reply(400, f"parameter '{key}' must hold the file content in base64")
                    try:
                        files[key[len("file:"):]] = base64.b64decode(value, validate=True)
                    except binascii.Error:
                        return error_reply(400, f"parameter '{key}' is not valid base64")
            config = params.get("config")
            if config is not None and not isinstance(config, (str, dict)):
                return error_reply(400, "parameter 'config' must be a JSON string holding the model configuration")
            try:
                await _in_thread(server.load, name, config, files or None)
            except ConfigError as exc:
                return error_reply(400, str(exc))
            return _EMPTY_OK
        return error_reply(404, "Not Found")


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Model loads take seconds: keep them off the event loop so inference goes on meanwhile."""
    return await asyncio.to_thread(func, *args)
