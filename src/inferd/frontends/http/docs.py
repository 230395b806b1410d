"""The HTTP API described for people and tools: `/openapi.json` (OpenAPI 3) and a browsable page at `/docs`.

Both are files of the package, read once on first use. The page is self-contained (no CDN): it fetches
`/openapi.json` and lists the operations with their parameters, bodies and responses. The test suite checks
the document against the route table (routes.py), so the two cannot drift apart.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from .messages import HttpRequest, Params, Reply

if TYPE_CHECKING:
    from .app import HttpFrontend


@cache
def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def openapi_document() -> bytes:
    return _read("openapi.json")


async def openapi_json(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return 200, _read("openapi.json"), [(b"content-type", b"application/json")]


async def docs_page(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    path = request.path.split("?", 1)[0]
    if path.endswith("/"):
        # The page fetches `openapi.json` relative to itself (so it works behind a proxy's path prefix): from
        # `/docs/` that would be `/docs/openapi.json`. Send the browser to `/docs` instead, by a relative
        # location (`../docs` from `/docs/`), which keeps any prefix too.
        trimmed = path.rstrip("/")
        location = "../" * (len(path) - len(trimmed)) + trimmed.rsplit("/", 1)[-1]
        return 301, b"", [(b"location", location.encode("latin-1", "replace"))]
    return 200, _read("docs.html"), [(b"content-type", b"text/html; charset=utf-8")]
