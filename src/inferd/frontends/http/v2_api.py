"""The V2 API's handlers (health, metadata, inference, statistics, repository, trace and log settings).

Each translates the wire form and asks the `Server`; the codec for inference bodies is `v2.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ...config import ConfigError
from ...gateway.usage import usage_rows
from ...types import InferenceResponse, InferError
from .messages import EMPTY_OK, JSON, QUERY_HEADER, HttpRequest, Params, Reply, error_reply, json_reply
from .v2 import OutputOptions, decode_infer_request, encode_infer_response, load_json_object

if TYPE_CHECKING:
    from .app import HttpFrontend

# Smaller responses go uncompressed even when the client accepts gzip: compressing them costs more than it saves.
COMPRESS_MIN_SIZE = 1024
_NOT_READY: Reply = (400, b"", [])


async def server_metadata(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return json_reply(200, app.server.metadata())


async def server_live(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return EMPTY_OK if app.server.live() else _NOT_READY


async def server_ready(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return EMPTY_OK if app.server.ready() else _NOT_READY


async def model_metadata(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    name = params["model_name"]
    doc = app.server.model_metadata(name, params.get("model_version", ""))
    principal = request.principal
    if principal is not None and not principal.admin:  # a tenant granted some versions sees those only
        doc["versions"] = [v for v in doc.get("versions", []) if principal.sees_version(name, v)]
    return json_reply(200, doc)


async def model_ready(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    ready = app.server.model_ready(params["model_name"], params.get("model_version", ""))
    return EMPTY_OK if ready else _NOT_READY


async def model_config(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return json_reply(200, app.server.model_config_json(params["model_name"], params.get("model_version", "")))


async def model_statistics(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    stats = app.server.statistics(params.get("model_name", ""), params.get("model_version", ""))
    principal = request.principal
    if principal is not None and not principal.admin:  # a tenant sees only its own models
        stats["model_stats"] = [s for s in stats["model_stats"] if principal.sees_version(s["name"], s["version"])]
    return json_reply(200, stats)


async def usage(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    """`GET /v2/usage?tenant=&model=&since=&until=&group_by=`: the audit trail's totals (usage.py)."""
    gateway = app.server.gateway
    query = parse_qs(request.headers.get(QUERY_HEADER, b"").decode("latin-1"))
    rows = await asyncio.to_thread(usage_rows, gateway, request.principal, {k: v[-1] for k, v in query.items()})
    return json_reply(200, rows)


async def model_infer(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    server = app.server
    name = params["model_name"]
    version = params.get("model_version", "")
    headers = request.headers
    started = time.perf_counter()
    try:
        raw_length = headers.get(b"inference-header-content-length")
        header_length = None
        if raw_length is not None:
            try:
                header_length = int(raw_length)
            except ValueError:
                raise InferError.invalid("Inference-Header-Content-Length must be an integer") from None
        try:
            infer_request, options = decode_infer_request(request.body, header_length, name, version, server.limits)
        except InferError:
            server.model(name, version)  # an unknown model is the clearer error
            raise
    except InferError as exc:  # answered before the pipeline: audited here
        gateway = server.gateway
        if gateway is not None:
            principal = request.principal
            gateway.refused("v2-http", request.route, name, exc, headers.get(b"x-request-id"),
                            request.context("v2-http").peer, tenant=None if principal is None else principal.name,
                            version=version, latency_ms=(time.perf_counter() - started) * 1000)
        raise
    response = await server.infer_request(infer_request, request.context("v2-http"))
    return infer_reply(response, options, headers.get(b"accept-encoding"))


def infer_reply(response: InferenceResponse, options: OutputOptions, accept: bytes | None) -> Reply:
    """The 200 answer to an inference request (also what an HTTP worker process sends, frontends/workers.py)."""
    body, json_length = encode_infer_response(response, options)
    reply_headers = JSON if json_length is None else [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(json_length).encode())]
    # Like Triton, only inference responses are compressed (clients such as tritonclient's aio client send
    # Accept-Encoding on every call but only decompress inference responses).
    if accept and len(body) >= COMPRESS_MIN_SIZE:
        body, encoding = _compress(body, accept)
        if encoding:
            reply_headers = [*reply_headers, (b"content-encoding", encoding)]
    return 200, body, reply_headers


def _compress(body: bytes, accept: bytes) -> tuple[bytes, bytes | None]:
    accept = accept.lower()
    if b"gzip" in accept:
        return zlib.compress(body, wbits=16 + zlib.MAX_WBITS), b"gzip"
    if b"deflate" in accept:
        return zlib.compress(body), b"deflate"
    return body, None


# ---- trace and log settings ----

async def trace_settings(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return json_reply(200, app.server.trace_settings(params.get("model_name", "")))


async def update_trace_settings(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    settings = load_json_object(request.body)
    return json_reply(200, app.server.update_trace_settings(settings, params.get("model_name", "")))


async def log_settings(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return json_reply(200, app.server.log_settings())


async def update_log_settings(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return json_reply(200, app.server.update_log_settings(load_json_object(request.body)))


# ---- model repository ----

async def repository_index(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    doc = load_json_object(request.body)
    # Scans the repository on disk: off the event loop.
    rows = await _in_thread(app.server.repository_index, bool(doc.get("ready", False)))
    principal = request.principal
    if principal is not None and not principal.admin:  # a tenant sees only its own models
        rows = [row for row in rows if principal.sees_version(row["name"], row.get("version", ""))]
    return json_reply(200, rows)


async def repository_unload(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    doc = load_json_object(request.body)
    if not isinstance(doc.get("parameters") or {}, dict):
        return error_reply(400, "'parameters' must be a JSON object")
    await _in_thread(app.server.unload, params["model_name"])
    return EMPTY_OK


async def repository_load(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    doc = load_json_object(request.body)
    values = doc.get("parameters") or {}
    if not isinstance(values, dict):
        return error_reply(400, "'parameters' must be a JSON object")
    files: dict[str, bytes] = {}
    for key, value in values.items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                return error_reply(400, f"parameter '{key}' must hold the file content in base64")
            try:
                files[key[len("file:"):]] = base64.b64decode(value, validate=True)
            except binascii.Error:
                return error_reply(400, f"parameter '{key}' is not valid base64")
    config = values.get("config")
    if config is not None and not isinstance(config, (str, dict)):
        return error_reply(400, "parameter 'config' must be a JSON string holding the model configuration")
    try:
        await _in_thread(app.server.load, params["model_name"], config, files or None)
    except ConfigError as exc:
        return error_reply(400, str(exc))
    return EMPTY_OK


async def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Model loads take seconds: keep them off the event loop so inference goes on meanwhile."""
    return await asyncio.to_thread(func, *args)
