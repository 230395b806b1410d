"""The dashboard's routes: the page and its files (package data of `inferd.ui`), `/` sending browsers to it, and
the latency histograms its p50 / p99 charts are computed from.

A request for `/` that accepts HTML (a browser) is redirected to the dashboard; an API client asking `/` gets a
404, as before, now saying where the API is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...ui import ASSETS, PAGE, latency_report, read_asset
from .messages import HttpRequest, Params, Reply, error_reply, json_reply

if TYPE_CHECKING:
    from .app import HttpFrontend

# The page is the server's own: no framing by other sites, no scripts but its own.
_PAGE_HEADERS = [(b"x-frame-options", b"DENY"),
                 (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; "
                  b"style-src 'self'; script-src 'self'; frame-ancestors 'none'")]
_ROOT_404 = "Not Found: the API is under /v2 (described at /openapi.json); browsers asking / are sent to /dashboard"


async def dashboard_page(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return 200, read_asset(PAGE), [(b"content-type", ASSETS[PAGE].encode()), *_PAGE_HEADERS]


async def dashboard_asset(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    name = params["asset"]
    if name == PAGE or name not in ASSETS:
        return error_reply(404, "Not Found")
    return 200, read_asset(name), [(b"content-type", ASSETS[name].encode()), (b"cache-control", b"no-cache")]


async def root(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    """`/`: a browser (it accepts text/html) is sent to the dashboard, by a relative location so a proxy's path
    prefix is kept; anyone else gets a 404 that says where the API is."""
    if b"text/html" in request.headers.get(b"accept", b"").lower():
        return 302, b"", [(b"location", b"dashboard")]
    return error_reply(404, _ROOT_404)


async def latency(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    """Every loaded version's latency histogram; a tenant sees its own models only, as with the statistics."""
    principal = request.principal
    statistics = app.server.model_statistics()
    if principal is not None and not principal.admin:
        statistics = [s for s in statistics if principal.sees_version(s.name, s.version)]
    return json_reply(200, latency_report(statistics))
