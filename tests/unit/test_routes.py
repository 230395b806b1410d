"""The route table: what it matches, what it refuses, and that the OpenAPI document describes exactly it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import inferd.frontends.http as http_frontend
from inferd.frontends.http.routes import MICROSERVICE_ROUTES, SERVE_ROUTES, Route, RouteTable

DOCUMENT = json.loads((Path(http_frontend.__file__).parent / "openapi.json").read_text())
TABLE = RouteTable(SERVE_ROUTES)


def test_openapi_document_describes_exactly_the_serve_routes() -> None:
    documented = {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
                  if method in ("get", "post", "put", "delete", "patch")}
    routed = {(route.method, route.path) for route in SERVE_ROUTES}
    assert routed - documented == set(), "routes missing from openapi.json"
    assert documented - routed == set(), "documented operations no route serves"


@pytest.mark.parametrize(("method", "path", "handler", "params"), [
    ("POST", "/v2/models/mlp/infer", "model_infer", {"model_name": "mlp"}),
    ("POST", "/v2/models/mlp/versions/3/infer", "model_infer", {"model_name": "mlp", "model_version": "3"}),
    ("GET", "/v2/models/stats", "model_statistics", {}),  # the literal route wins over /v2/models/{model_name}
    ("GET", "/v2/models/stats/stats", "model_statistics", {"model_name": "stats"}),
    ("HEAD", "/v2/health/ready", "server_ready", {}),
    ("GET", "/v2/models/mlp/trace/setting", "trace_settings", {"model_name": "mlp"}),
    ("POST", "/v1/models/mlp:predict", "predict", {"model_name": "mlp"}),
    ("POST", "/v1/models/mlp/versions/2:predict", "predict", {"model_name": "mlp", "model_version": "2"}),
    ("GET", "/v2/models/a:b", "model_metadata", {"model_name": "a:b"}),  # a colon that is no verb
    ("PUT", "/predictions/resnet/1.0", "predict", {"model_name": "resnet", "model_version": "1.0"}),
    ("POST", "/v2/systemsharedmemory/region/r0/register", "register", {"region_name": "r0"}),
    ("GET", "/", "root", {}),  # browsers are sent to the dashboard from there
    ("GET", "/dashboard/dashboard.js", "dashboard_asset", {"asset": "dashboard.js"}),
    ("GET", "/dashboard/api/latency", "latency", {}),
    ("GET", "/nowhere", None, None),
    ("GET", "/v2/models/mlp/infer/extra", None, None),
    ("POST", "/v1/models/mlp:explain", None, None),
])
def test_match(method: str, path: str, handler: str | None, params: dict[str, str] | None) -> None:
    route, found = TABLE.match(method, path)
    if handler is None:
        assert route is None and found == []
    else:
        assert route is not None and route.handler.__name__ == handler
        assert found == params


def test_wrong_method_lists_the_allowed_ones() -> None:
    assert TABLE.match("GET", "/v2/models/mlp/infer") == (None, ["POST"])
    assert TABLE.match("POST", "/v2/models/mlp") == (None, ["GET", "HEAD"])
    assert TABLE.match("DELETE", "/v2/trace/setting") == (None, ["GET", "HEAD", "POST"])
    assert TABLE.match("GET", "/predictions/m") == (None, ["POST", "PUT"])


def test_microservice_table_adds_seldon_routes_to_the_whole_v2_api() -> None:
    table = RouteTable(MICROSERVICE_ROUTES)
    route, _ = table.match("POST", "/api/v1.0/predictions")
    assert route is not None and route.protocol == "seldon"
    assert table.match("GET", "/api/v1.0/predictions") == (None, ["POST"])
    route, _ = table.match("GET", "/predict")  # Seldon's short routes take GET with ?json= too
    assert route is not None and route.handler.__name__ == "message"
    route, params = table.match("POST", "/v2/models/m/infer")
    assert route is not None and params == {"model_name": "m"}


def test_a_route_cannot_be_declared_twice() -> None:
    route = SERVE_ROUTES[0]
    with pytest.raises(ValueError, match="declared twice"):
        RouteTable([route, Route(route.method, route.path, route.handler, "other")])
