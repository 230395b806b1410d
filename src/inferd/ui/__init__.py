"""The web dashboard: one page (dashboard.html), its script and its style sheet, served at `/dashboard`.

No build step and no CDN: the files are package data, written by hand (the charts are drawn on canvases by the
script). The page reads only the server's public HTTP API — the repository index, `/v2/models/stats`, model
metadata and config, the load / unload calls, inference — and the latency histograms at `/dashboard/api/latency`
(the counts `/metrics` exports); with authentication on it sends the key the user types, so it can never see more
than that key could through the API.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from ..observability.statistics import LATENCY_BUCKETS_US, ModelStatistics

__all__ = ["ASSETS", "PAGE", "latency_report", "read_asset"]

PAGE = "dashboard.html"
ASSETS = {
    PAGE: "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@cache
def read_asset(name: str) -> bytes:
    """One of the dashboard's files (read once)."""
    return resources.files(__package__).joinpath(name).read_bytes()


def latency_report(statistics: Iterable[ModelStatistics]) -> dict[str, Any]:
    """Each version's latency histogram of successful requests: cumulative counts per bucket (`bounds_us`: the
    buckets' upper bounds; the last count is everything slower), as `nv_inference_request_duration_us`."""
    models = sorted(({"name": s.name, "version": s.version, "counts": list(s.latency_buckets)} for s in statistics),
                    key=lambda m: (m["name"], m["version"]))
    return {"bounds_us": list(LATENCY_BUCKETS_US), "model_latency": models}
