"""The one route table: every HTTP route of every protocol, declared as (method, path pattern, handler, protocol,
API group).

`RouteTable` answers a path with its route and parameters — for the hot paths one dictionary lookup keyed by the
path's literal segments — and tells a path nobody serves (404) from a method a path does not take (405, with
`Allow`). The OpenAPI document is checked against these tables by the test suite: a route cannot exist unless
it is documented. A segment may end in a literal after a colon, as TF-Serving's `{model_name}:predict`. Each route
belongs to one of Triton's API groups (`API_GROUPS`), which `--http-restricted-api` puts behind a header.
"""

from __future__ import annotations

import operator
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import dashboard, docs, seldon, shm, torchserve, v1, v2_api
from .messages import HttpRequest, Params, Reply

if TYPE_CHECKING:
    from .app import HttpFrontend

__all__ = ["API_GROUPS", "MICROSERVICE_ROUTES", "SERVE_ROUTES", "Route", "RouteTable"]

# Triton's endpoint groups (`--http-restricted-api`, `--grpc-restricted-protocol`): every route is in one.
HEALTH, METADATA, INFERENCE, SHM, CONFIG, REPOSITORY, STATISTICS, TRACE, LOGGING = API_GROUPS = (
    "health", "metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics", "trace",
    "logging")

MEMO_SIZE = 4096  # (method, path) answers kept before the memo starts over

Handler = Callable[["HttpFrontend", HttpRequest, Params], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str  # GET routes answer HEAD as well
    path: str  # "/v2/models/{model_name}/infer"
    handler: Handler
    protocol: str  # which API it belongs to: "v2", "v1", "torchserve", "seldon", "docs", "dashboard"
    api: str = ""  # its API group (one of API_GROUPS), what a restriction names
    # The path names no model: the request's routing does (the host, a /serving/ prefix, the Seldon-Model header;
    # see gateway/routing.py), and the handler finds it as the `model_name` parameter.
    routed: bool = False

    def segments(self) -> list[str]:
        """The pattern's segments; `{name}:verb` is two: the parameter and the literal ":verb"."""
        out: list[str] = []
        for segment in self.path.strip("/").split("/"):
            head, colon, verb = segment.partition("}:")
            out.extend([head + "}", ":" + verb] if colon else [segment])
        return out


V2, V1, TS, SELDON, DOCS = "v2", "v1", "torchserve", "seldon", "docs"
DASHBOARD = "dashboard"

_MODEL = "/v2/models/{model_name}"
_VERSION = "/v2/models/{model_name}/versions/{model_version}"
_V1_MODEL = "/v1/models/{model_name}"
_V1_VERSION = "/v1/models/{model_name}/versions/{model_version}"

# `inferd serve`: the V2 API with Triton's extensions, TF-Serving's REST API (KServe V1), TorchServe's inference
# API, and the API's own description.
SERVE_ROUTES: list[Route] = [
    Route("GET", "/v2", v2_api.server_metadata, V2, METADATA),
    Route("GET", "/v2/health/live", v2_api.server_live, V2, HEALTH),
    Route("GET", "/v2/health/ready", v2_api.server_ready, V2, HEALTH),
    *(r for base in (_MODEL, _VERSION) for r in (
        Route("GET", base, v2_api.model_metadata, V2, METADATA),
        Route("GET", f"{base}/ready", v2_api.model_ready, V2, HEALTH),
        Route("GET", f"{base}/config", v2_api.model_config, V2, CONFIG),
        Route("GET", f"{base}/stats", v2_api.model_statistics, V2, STATISTICS),
        Route("POST", f"{base}/infer", v2_api.model_infer, V2, INFERENCE),
    )),
    Route("POST", "/v2/infer", v2_api.model_infer, V2, INFERENCE, routed=True),
    Route("GET", "/v2/models/stats", v2_api.model_statistics, V2, STATISTICS),
    Route("GET", "/v2/usage", v2_api.usage, V2, STATISTICS),
    Route("POST", "/v2/repository/index", v2_api.repository_index, V2, REPOSITORY),
    Route("POST", "/v2/repository/models/{model_name}/load", v2_api.repository_load, V2, REPOSITORY),
    Route("POST", "/v2/repository/models/{model_name}/unload", v2_api.repository_unload, V2, REPOSITORY),
    Route("GET", "/v2/trace/setting", v2_api.trace_settings, V2, TRACE),
    Route("POST", "/v2/trace/setting", v2_api.update_trace_settings, V2, TRACE),
    Route("GET", f"{_MODEL}/trace/setting", v2_api.trace_settings, V2, TRACE),
    Route("POST", f"{_MODEL}/trace/setting", v2_api.update_trace_settings, V2, TRACE),
    Route("GET", "/v2/logging", v2_api.log_settings, V2, LOGGING),
    Route("POST", "/v2/logging", v2_api.update_log_settings, V2, LOGGING),
    *(r for kind in ("systemsharedmemory", "cudasharedmemory") for r in (
        Route("GET", f"/v2/{kind}/status", shm.status, V2, SHM),
        Route("GET", f"/v2/{kind}/region/{{region_name}}/status", shm.status, V2, SHM),
        Route("POST", f"/v2/{kind}/region/{{region_name}}/register", shm.register, V2, SHM),
        Route("POST", f"/v2/{kind}/unregister", shm.unregister, V2, SHM),
        Route("POST", f"/v2/{kind}/region/{{region_name}}/unregister", shm.unregister, V2, SHM),
    )),
    *(r for base in (_V1_MODEL, _V1_VERSION) for r in (
        Route("GET", base, v1.model_status, V1, HEALTH),
        Route("GET", f"{base}/metadata", v1.model_metadata, V1, METADATA),
        Route("POST", f"{base}:predict", v1.predict, V1, INFERENCE),
        Route("POST", f"{base}:classify", v1.classify_or_regress, V1, INFERENCE),
        Route("POST", f"{base}:regress", v1.classify_or_regress, V1, INFERENCE),
    )),
    Route("POST", "/predictions/{model_name}", torchserve.predict, TS, INFERENCE),
    Route("PUT", "/predictions/{model_name}", torchserve.predict, TS, INFERENCE),
    Route("POST", "/predictions/{model_name}/{model_version}", torchserve.predict, TS, INFERENCE),
    Route("PUT", "/predictions/{model_name}/{model_version}", torchserve.predict, TS, INFERENCE),
    Route("GET", "/ping", torchserve.ping, TS, HEALTH),
    *(Route("POST", f"/api/{version}/{call}", seldon.prediction, SELDON, INFERENCE, routed=True)
      for version in ("v1.0", "v0.1") for call in ("predictions", "feedback")),
    *(Route("POST", f"/seldon/{{namespace}}/{{model_name}}/api/v1.0/{call}", seldon.prediction, SELDON, INFERENCE)
      for call in ("predictions", "feedback")),
    Route("GET", "/openapi.json", docs.openapi_json, DOCS, METADATA),
    Route("GET", "/docs", docs.docs_page, DOCS, METADATA),
    # The web dashboard (ui/): its page and files, `/` sending browsers there, its latency histogram.
    Route("GET", "/", dashboard.root, DASHBOARD, METADATA),
    Route("GET", "/dashboard", dashboard.dashboard_page, DASHBOARD, METADATA),
    Route("GET", "/dashboard/{asset}", dashboard.dashboard_asset, DASHBOARD, METADATA),
    Route("GET", "/dashboard/api/latency", dashboard.latency, DASHBOARD, STATISTICS),
]

# `inferd microservice`: Seldon Core's microservice routes (every route whatever the service type, as Seldon's
# wrapper; the short ones take GET with ?json= too; `/api/...` as the wrapper answers them, for its one class),
# then the rest of `inferd serve`'s.
_MICROSERVICE_OWN: list[Route] = [
    *(Route(method, path, seldon.message, SELDON, INFERENCE)
      for path in ("/predict", "/transform-input", "/transform-output", "/route", "/aggregate", "/send-feedback")
      for method in ("GET", "POST")),
    *(Route("POST", path, seldon.message, SELDON, INFERENCE)
      for path in ("/api/v1.0/predictions", "/api/v0.1/predictions", "/api/v1.0/feedback", "/api/v0.1/feedback")),
    Route("GET", "/health/ping", seldon.ping, SELDON, HEALTH),
    Route("GET", "/health/status", seldon.health_status, SELDON, HEALTH),
    Route("GET", "/metadata", seldon.metadata, SELDON, METADATA),
]
MICROSERVICE_ROUTES: list[Route] = [
    *_MICROSERVICE_OWN,
    *(r for r in SERVE_ROUTES if (r.method, r.path) not in {(o.method, o.path) for o in _MICROSERVICE_OWN}),
]


class _PathGroup:
    """The routes of one path pattern, by method."""

    __slots__ = ("by_method", "params", "pattern")

    def __init__(self, pattern: str, params: tuple[tuple[str, int], ...]) -> None:
        self.pattern = pattern
        self.params = params  # (name, segment index)
        self.by_method: dict[str, Route] = {}


class RouteTable:
    """Routes indexed by segment count, then by which segments are literal, then by those literals."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: list[Route] = list(routes)
        index: dict[int, dict[tuple[int, ...], dict[Any, _PathGroup]]] = {}
        for route in self.routes:
            segments = route.segments()
            mask = tuple(i for i, s in enumerate(segments) if not s.startswith("{"))
            literals = tuple(segments[i] for i in mask)
            key: Any = literals[0] if len(literals) == 1 else literals
            groups = index.setdefault(len(segments), {}).setdefault(mask, {})
            group = groups.get(key)
            if group is None:
                params = tuple((s[1:-1], i) for i, s in enumerate(segments) if s.startswith("{"))
                group = groups[key] = _PathGroup(route.path, params)
            if route.method in group.by_method:
                raise ValueError(f"route {route.method} {route.path} is declared twice")
            group.by_method[route.method] = route
        self._memo: dict[tuple[str, str], tuple[Route | None, Params | list[str]]] = {}
        # Per segment count, the literal masks, most literal segments first (/v2/models/stats before
        # /v2/models/{model_name}), each with the getter that picks its literals out of a split path.
        self._index: dict[int, list[tuple[Callable[[Sequence[str]], Any], dict[Any, _PathGroup]]]] = {
            count: [(operator.itemgetter(*mask), groups)
                    for mask, groups in sorted(masks.items(), key=lambda item: -len(item[0])) if mask]
            for count, masks in index.items()}

    def match(self, method: str, path: str) -> tuple[Route | None, Params | list[str]]:
        """(route, its parameters) for a request; (None, allowed methods) when the path exists but not the
        method; (None, []) when no route has the path.

        Answers for the paths seen lately are kept (a server sees few distinct ones: its models' routes), so the
        hot path is one dictionary lookup; the memo is bounded, as clients choose the paths. Callers must not
        change the parameters they get."""
        key = (method, path)
        found = self._memo.get(key)
        if found is not None:
            return found
        found = self._match(method, path)
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = found
        return found

    def _match(self, method: str, path: str) -> tuple[Route | None, Params | list[str]]:
        parts = path.strip("/").split("/")
        group = None
        unknown_verb = False
        if ":" in parts[-1]:  # `{model_name}:predict` first; a name that merely holds a colon after
            head, _, verb = parts[-1].rpartition(":")
            split = [*parts[:-1], head, ":" + verb]
            group = self._find(split)
            if group is not None:
                parts = split
            unknown_verb = group is None
        if group is None:
            group = self._find(parts)
        if group is None:
            return None, []
        route = group.by_method.get("GET" if method == "HEAD" else method)
        if route is None:
            if unknown_verb:  # `m:explain`: an unknown verb, not a wrong method of the model's status
                return None, []
            allowed = sorted(group.by_method)
            return None, ["GET", "HEAD", *allowed[1:]] if allowed[0] == "GET" else allowed
        return route, {name: parts[i] for name, i in group.params}

    def _find(self, parts: list[str]) -> _PathGroup | None:
        for pick, groups in self._index.get(len(parts), ()):
            group = groups.get(pick(parts))
            if group is not None:
                return group
        return None
