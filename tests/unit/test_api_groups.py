"""Triton's restricted API groups: every HTTP route and every RPC has one, the flags parse as Triton's, a restricted
group needs its header, and a repository API open to the network is warned about (issue 17, finding 1)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2

from inferd import Server
from inferd.cli import parse_restrictions
from inferd.frontends.grpc.interceptors import RPC_API
from inferd.frontends.http.app import HttpFrontend
from inferd.frontends.http.routes import API_GROUPS, MICROSERVICE_ROUTES, SERVE_ROUTES
from inferd.frontends.runner import Endpoint, _warn_if_repository_open, is_loopback


def test_every_route_has_an_api_group() -> None:
    assert [f"{r.method} {r.path}" for r in MICROSERVICE_ROUTES if r.api not in API_GROUPS] == []
    assert {r.api for r in SERVE_ROUTES} == set(API_GROUPS)
    groups = {(r.method, r.path): r.api for r in MICROSERVICE_ROUTES}
    assert groups[("POST", "/v2/repository/models/{model_name}/load")] == "model-repository"
    assert groups[("POST", "/predictions/{model_name}")] == "inference"
    assert groups[("GET", "/ping")] == "health"
    assert groups[("POST", "/api/v1.0/predictions")] == "inference"
    assert groups[("GET", "/health/status")] == "health"
    assert groups[("GET", "/openapi.json")] == "metadata"


def test_every_rpc_has_an_api_group() -> None:
    methods = {f"/{service.full_name}/{method.name}"
               for module in (service_pb2, health_pb2) for service in module.DESCRIPTOR.services_by_name.values()
               for method in service.methods}
    assert set(RPC_API) == methods
    assert set(RPC_API.values()) == set(API_GROUPS)


def test_restriction_flags_parse_as_triton_does() -> None:
    assert parse_restrictions(["model-repository,shared-memory:Admin-Key=s3cret", "inference:k=a=b"]) == {
        "model-repository": ("admin-key", "s3cret"), "shared-memory": ("admin-key", "s3cret"),
        "inference": ("k", "a=b")}
    with pytest.raises(ValueError, match="api 'health' can not be specified in multiple config groups"):
        parse_restrictions(["model-repository,health:k1=v1", "metadata,health:k2=v2"])
    with pytest.raises(ValueError, match="unknown restricted api 'model-reposit'"):
        parse_restrictions(["model-reposit,health:k1=v1"])
    with pytest.raises(ValueError, match="unknown restricted protocol 'x'"):
        parse_restrictions(["x:k=v"], "protocol")
    for wrong in ("health", "health:k", ":k=v", "health:=v"):
        with pytest.raises(ValueError, match="is not of the form"):
            parse_restrictions([wrong])


def test_http_restricted_group_needs_its_header(tmp_path: Path) -> None:
    with Server(tmp_path, model_control_mode="explicit") as server:
        frontend = HttpFrontend(server, restricted={"model-repository": ("admin-key", "v"), "health": ("h", "")})

        def status(method: str, path: str, headers: dict[bytes, bytes]) -> tuple[int, bytes]:
            reply = asyncio.run(frontend.handle(method, path, headers, b"{}"))
            return reply[0], reply[1]

        code, body = status("POST", "/v2/repository/index", {})
        assert code == 403 and b"This API is restricted, expecting header 'admin-key'" in body
        assert status("POST", "/v2/repository/index", {b"admin-key": b"wrong"})[0] == 403
        assert status("POST", "/v2/repository/index", {b"admin-key": b"v"}) == (200, b"[]")
        assert status("GET", "/v2", {})[0] == 200  # metadata: not restricted
        assert status("GET", "/v2/health/live", {})[0] == 403  # an empty value is still a header to send
        assert status("GET", "/v2/health/live", {b"h": b""})[0] == 200
        assert status("GET", "/v2/nothing", {})[0] == 404
        with pytest.raises(ValueError, match="unknown restricted api"):
            HttpFrontend(server, restricted={"repository": ("k", "v")})


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.1.2.3")
    assert not is_loopback("example.org")


def test_open_repository_api_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def warnings() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        caplog.clear()
        return lines

    with Server(tmp_path, model_control_mode="explicit") as server:
        caplog.set_level(logging.WARNING, logger="inferd")
        open_http = (HttpFrontend(server), Endpoint("0.0.0.0", 8000))
        _warn_if_repository_open(server, open_http, Endpoint("0.0.0.0", 8001), {})
        [line] = warnings()
        assert "HTTP at 0.0.0.0:8000 and gRPC at 0.0.0.0:8001" in line
        assert "--http-restricted-api=model-repository:KEY=VALUE" in line and "127.0.0.1" in line
        # Restricted, or on loopback: nothing to say.
        restricted = HttpFrontend(server, restricted={"model-repository": ("k", "v")})
        _warn_if_repository_open(server, (restricted, Endpoint("0.0.0.0", 8000)), Endpoint("0.0.0.0", 8001),
                                 {"model-repository": ("k", "v")})
        _warn_if_repository_open(server, (HttpFrontend(server), Endpoint("127.0.0.1", 8000)),
                                 Endpoint("::1", 8001), {})
        assert warnings() == []
        # Only gRPC open.
        _warn_if_repository_open(server, (restricted, Endpoint("0.0.0.0", 8000)), Endpoint("0.0.0.0", 8001), {})
        [line] = warnings()
        assert "gRPC at 0.0.0.0:8001" in line and "HTTP at" not in line
    with Server(tmp_path) as server:  # loads are refused outside explicit mode
        _warn_if_repository_open(server, (HttpFrontend(server), Endpoint("0.0.0.0", 8000)), None, {})
        assert warnings() == []
