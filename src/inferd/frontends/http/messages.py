"""What HTTP handlers take and give: the request as read off the wire, and a reply (status, body, headers)."""

from __future__ import annotations

from typing import Any

import orjson

from ...pipeline.call import RequestContext
from ...types import ErrorKind, InferError

__all__ = ["EMPTY_OK", "JSON", "PEER_HEADER", "QUERY_HEADER", "HttpRequest", "Params", "Reply", "error_headers",
           "error_reply", "infer_error_reply", "json_reply"]

# (status, body, extra headers); the server adds content-length, date and connection.
Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
# A route's path parameters by name ("model_name" -> "simple").
Params = dict[str, str]

JSON = [(b"content-type", b"application/json")]
EMPTY_OK: Reply = (200, b"", [])
# Where a request's query string (after "?", raw) and the client's address ("host:port") are kept among its
# headers: no real header name has a colon.
QUERY_HEADER = b":query"
PEER_HEADER = b":peer"


class HttpRequest:
    """The parts of an HTTP request the handlers need. `headers` are keyed by lower-case name."""

    __slots__ = ("body", "headers", "last_context", "method", "path", "principal", "route")

    def __init__(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes, route: str = "",
                 principal: Any = None) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.route = route  # the route's pattern ("/v2/models/{model_name}/infer")
        self.principal = principal  # who the gateway found the caller to be (None: authentication is off)
        self.last_context: RequestContext | None = None  # what the pipeline learnt about the call (its variant)

    def context(self, protocol: str) -> RequestContext:
        """The pipeline's view of where this request came from."""
        peer = self.headers.get(PEER_HEADER)
        context = self.last_context = RequestContext(protocol, self.headers,
                                                     peer="" if peer is None else peer.decode("latin-1"),
                                                     endpoint=self.route, principal=self.principal)
        return context


def json_reply(status: int, value: Any) -> Reply:
    return status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), JSON


def error_reply(status: int, message: str) -> Reply:
    """The V2 protocol's error form: `{"error": "..."}` with the HTTP status."""
    return json_reply(status, {"error": message})


def error_headers(error: InferError) -> list[tuple[bytes, bytes]]:
    """What an error's answer carries besides its body: how to authenticate (401), when to retry (429)."""
    if error.kind is ErrorKind.UNAUTHENTICATED:
        return [(b"www-authenticate", b'Bearer realm="inferd"')]
    if error.retry_after is not None:
        return [(b"retry-after", str(error.retry_after).encode())]
    return []


def infer_error_reply(error: InferError) -> Reply:
    """An InferError in the V2 form, with its status and headers."""
    status, body, headers = error_reply(error.kind.http_status, error.message)
    extra = error_headers(error)
    return (status, body, [*headers, *extra]) if extra else (status, body, headers)
