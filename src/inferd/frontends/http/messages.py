"""What HTTP handlers take and give: the request as read off the wire, and a reply (status, body, headers)."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["EMPTY_OK", "JSON", "QUERY_HEADER", "HttpRequest", "Params", "Reply", "error_reply", "json_reply"]

# (status, body, extra headers); the server adds content-length, date and connection.
Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]
# A route's path parameters by name ("model_name" -> "simple").
Params = dict[str, str]

JSON = [(b"content-type", b"application/json")]
EMPTY_OK: Reply = (200, b"", [])
# Where a request's query string (after "?", raw) is kept among its headers: no real header name has a colon.
QUERY_HEADER = b":query"


class HttpRequest:
    """The parts of an HTTP request the handlers need. `headers` are keyed by lower-case name."""

    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[bytes, bytes], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body


def json_reply(status: int, value: Any) -> Reply:
    return status, orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), JSON


def error_reply(status: int, message: str) -> Reply:
    """The V2 protocol's error form: `{"error": "..."}` with the HTTP status."""
    return json_reply(status, {"error": message})
