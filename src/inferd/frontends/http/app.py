"""The HTTP application: the route table (routes.py) in front of the handlers, as a raw ASGI application too.

No framework router: inference is the hot path, and every layer between the socket and the model costs
throughput on small models. Finding a route is one dictionary lookup; handlers translate wire format and ask the
`Server`, whose pipeline runs every inference request.
"""

from __future__ import annotations

import hmac
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ...gateway.config import Principal
from ...gateway.gate import ADMIN_GROUPS, Gateway, admin_only
from ...gateway.routing import SERVING_PREFIX, routed_model, split_serving_path
from ...server import Server
from ...types import VARIANT_HEADER as _VARIANT
from ...types import ErrorKind, InferError, describe_error
from . import seldon, torchserve, v2_api
from .messages import PEER_HEADER, QUERY_HEADER, HttpRequest, Params, Reply, error_reply, infer_error_reply
from .routes import API_GROUPS, INFERENCE, SERVE_ROUTES, Route, RouteTable

VARIANT_HEADER = _VARIANT.encode()
log = logging.getLogger("inferd.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_MAX_INPUT_SIZE = 64 * 1024 * 1024  # Triton's --http-max-input-size default

# The V2 protocol's names of the route protocols, as the pipeline's contexts name them.
_PROTOCOLS = {"v2": "v2-http"}
# Repository index, model list and statistics answer tenants too, showing only their models.
_TENANT_HANDLERS = (v2_api.repository_index, v2_api.model_statistics)
# How a protocol answers for a model it does not have, where that differs from the V2 form.
_MISSING: dict[str, Callable[[str, str], Reply]] = {"torchserve": torchserve.missing_model}
# A model's readiness: an unknown one is simply not ready (400, no body), and so is one the tenant is not granted.
_NOT_READY: Reply = (400, b"", [])


def _with_request_id(reply: Reply, headers: Mapping[bytes, bytes]) -> Reply:
    """An authenticated caller's answer, whatever it is, carries its X-Request-Id back (the id the audit trail
    records the call under): a model it is not granted is answered as a missing one, headers included."""
    request_id = headers.get(b"x-request-id")
    if request_id is None:
        return reply
    status, payload, extra = reply
    return status, payload, [*extra, (b"x-request-id", request_id)]


def _peer(headers: Mapping[bytes, bytes]) -> str:
    peer = headers.get(PEER_HEADER)
    return "" if peer is None else peer.decode("latin-1")


_EVERY_VERSION = (True, None)  # Principal.granted's answer for a model granted whole

# A path that exists but not with this method: each protocol says so in its own error form.
_NOT_ALLOWED: dict[str, Callable[[str, str], Reply]] = {
    "torchserve": lambda method, path: torchserve.not_allowed(),
    "seldon": seldon.not_allowed,
}


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


class HttpFrontend:
    """The application: `routes` (default: `inferd serve`'s table) answered for `server`.

    `max_input_size` bounds request bodies (before and after decompression); `default_model` is the model that
    protocols without a model in their paths (Seldon's microservice routes) call. `restricted` maps API groups
    (routes.API_GROUPS) to the (header, value) their requests must carry, as Triton's `--http-restricted-api`:
    a request without it is answered 403 before its handler runs.
    """

    def __init__(self, server: Server, *, max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
                 routes: Iterable[Route] = SERVE_ROUTES, default_model: str = "",
                 restricted: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.server = server
        self.max_input_size = max_input_size
        self.table = RouteTable(routes)
        self.default_model = default_model
        self.gateway: Gateway | None = server.gateway  # None: authentication is off
        self.restricted = dict(restricted or {})
        unknown = set(self.restricted) - set(API_GROUPS)
        if unknown:
            raise ValueError(f"unknown restricted api {', '.join(sorted(unknown))} (known: {', '.join(API_GROUPS)})")
        self._required = {group: (key.lower().encode("latin-1"), value.encode())
                          for group, (key, value) in self.restricted.items()}
        # `--host-routing` (None: off, and the Host header is never looked at).
        self.hosts = server.host_routing
        self.seldon_feedback = seldon.FeedbackCounts()  # feedback to models without send_feedback

    async def handle(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> Reply:
        """Answer one request (the body already read, within the size limit); never raises."""
        principal = None
        try:
            implied, source = None, ""
            if path.startswith(SERVING_PREFIX):  # KServe's /serving/{namespace}/{name}/...
                split = split_serving_path(path)
                if split is not None:
                    implied, path = split
                    source = "/serving/ path"
            elif self.hosts is not None:
                host = headers.get(b"host")
                implied = self.hosts.model_of(host.decode("latin-1")) if host else None
                source = f"host '{host.decode('latin-1')}'" if host else ""
            route, params = self.table.match(method, path)
            if route is None:
                return self._unrouted(method, path, params)  # type: ignore[arg-type]
            if implied is not None or route.routed:
                routed = self._route_model(route, params, implied, source, headers)  # type: ignore[arg-type]
                if not isinstance(routed, dict):
                    return routed
                params = routed
            if self._required and route.api in self._required:
                key, value = self._required[route.api]
                given = headers.get(key)
                if given is None or not hmac.compare_digest(given, value):
                    return error_reply(403, f"This API is restricted, expecting header '{key.decode('latin-1')}'")
            if self.gateway is not None and path not in self.gateway.config.open_paths:
                found = self._authorize(self.gateway, route, params, headers)  # type: ignore[arg-type]
                if not isinstance(found, Principal):
                    return found
                principal = found
            encoding = headers.get(b"content-encoding")
            if encoding:
                body = _decompress(body, encoding, self.max_input_size)
            request = HttpRequest(method, path, headers, body, route.path, principal)
            reply = await route.handler(self, request, params)  # type: ignore[arg-type]
            context = request.last_context
            if context is not None and context.variant:  # a split name: the variant that served it
                reply = (reply[0], reply[1], [*reply[2], (VARIANT_HEADER, context.variant.encode())])
            return reply if principal is None else _with_request_id(reply, headers)
        except InferError as exc:
            reply = infer_error_reply(exc)
            return reply if principal is None else _with_request_id(reply, headers)
        except Exception as exc:  # a handler bug is a 500 for this request, never a dead server
            log.exception("unhandled error on %s %s", method, path)
            return error_reply(500, f"internal error: {describe_error(exc)}")

    def _route_model(self, route: Route, params: Params, implied: str | None, source: str,
                     headers: dict[bytes, bytes]) -> Params | Reply:
        """The route's parameters with the model the request's routing names (gateway/routing.py). A host or
        /serving/ prefix naming a model: every route is that model's (404 when there is none), and a path naming
        another is a 400. A path with no model (`routed` routes): the Seldon-Model header's, else the default
        model. An error is answered in the route's protocol's form."""
        named = params.get("model_name", "")
        try:
            if implied is None:
                header = headers.get(b"seldon-model")
                model = header.decode("latin-1").strip() if header else self.default_model
                if not model and route.routed:
                    raise InferError.invalid(f"{route.path} names no model: name it by the Seldon-Model header, "
                                             "or by the host (--host-routing), or use a path with the model's name")
            elif self.server.version_states(implied) is None:
                raise InferError.not_found(f"Request for unknown model: '{implied}' (named by the {source}) is not "
                                           "found")
            else:
                model = routed_model(named, implied, source)
        except InferError as exc:
            if route.protocol == "seldon":
                return seldon.engine_error_reply(exc)
            missing = _MISSING.get(route.protocol)
            if missing is not None and exc.kind is ErrorKind.NOT_FOUND:
                return missing(implied or "", "")
            return infer_error_reply(exc)
        if not (route.routed or named) or not model:
            return params  # a route of no model (health, server metadata), or a routed one left to its handler
        return {**params, "model_name": model}

    def _authorize(self, gateway: Gateway, route: Route, params: Params, headers: dict[bytes, bytes]
                   ) -> Principal | Reply:
        """Who calls (401 without a valid key), and whether the route is theirs: admin endpoints refuse tenant
        keys (403); a model the tenant is not granted is answered as a missing one, in its protocol's form."""
        try:
            principal = gateway.identify_http(headers)
        except InferError as exc:
            if route.api == INFERENCE:
                gateway.refused(_PROTOCOLS.get(route.protocol, route.protocol), route.path,
                                params.get("model_name", self.default_model), exc, headers.get(b"x-request-id"),
                                _peer(headers))
            return infer_error_reply(exc)
        if principal.admin:
            return principal
        if route.api in ADMIN_GROUPS and route.handler not in _TENANT_HANDLERS:
            return _with_request_id(infer_error_reply(admin_only(f"{route.method} {route.path}")), headers)
        name = params.get("model_name")
        if name is not None and principal.granted(name) != _EVERY_VERSION:
            version = params.get("model_version", "")
            if route.protocol == "torchserve":
                version = torchserve.version_number(version)  # "1.0" is version 1
            try:
                Gateway.check_model(principal, name, version)
            except InferError as exc:
                if route.api == INFERENCE:  # refused before the pipeline: counted and audited here
                    gateway.refused(_PROTOCOLS.get(route.protocol, route.protocol), route.path, name, exc,
                                    headers.get(b"x-request-id"), _peer(headers), tenant=principal.name,
                                    version=version)
                if route.handler is v2_api.model_ready:
                    return _with_request_id(_NOT_READY, headers)
                missing = _MISSING.get(route.protocol)
                if missing is None:
                    return _with_request_id(infer_error_reply(exc), headers)
                # A hidden model is missing as a whole; a hidden version of a model it sees, that version.
                return _with_request_id(missing(name, params.get("model_version", "") if principal.sees(name)
                                                else ""), headers)
        return principal

    def _unrouted(self, method: str, path: str, allowed: list[str]) -> Reply:
        if not allowed:
            return error_reply(404, "Not Found")
        route, _ = self.table.match(allowed[0], path)
        special = _NOT_ALLOWED.get(route.protocol) if route is not None else None
        if special is not None:
            return special(method, path)
        use = "" if "GET" in allowed else f" (use {' or '.join(allowed)})"
        status, body, headers = error_reply(405, f"method {method} is not allowed here{use}")
        return status, body, [*headers, (b"allow", ", ".join(allowed).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The same application as ASGI, for running under any ASGI server."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
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
