"""The HTTP API described for people and tools: `/openapi.json` (OpenAPI 3) and a browsable page at `/docs`.

Both are files of the package, read once on first use. The page is self-contained (no CDN): it fetches
`/openapi.json` and lists the operations with their parameters, bodies and responses.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

_FILES = {"openapi.json": ("openapi.json", b"application/json"), "docs": ("docs.html", b"text/html; charset=utf-8")}


@cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def openapi_document() -> bytes:
    return _read("openapi.json")


def static_reply(parts: list[str]) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
    """The reply for `/openapi.json` or `/docs`; None for any other path."""
    if len(parts) != 1 or parts[0] not in _FILES:
        return None
    name, content_type = _FILES[parts[0]]
    return 200, _read(name), [(b"content-type", content_type)]
