"""Structured access logs (`--log-format json`): a real `inferd serve` with API keys writes one JSON line per
request to its log file — what someone shipping the log to Loki or Elasticsearch would query: model, version,
protocol, status, latency, batch size and the tenant — and every other log line is JSON too."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from clients import simple_data, simple_inputs
from models import SIMPLE, add_simple
from serving import ServerProcess, start_server

KEY = "acme-access-key"
ADMIN = {"Authorization": "Bearer access-admin-key"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path_factory.mktemp("access")
    repo = folder / "models"
    repo.mkdir()
    add_simple(repo)
    auth = folder / "auth.json"
    auth.write_text(json.dumps({"admin_keys": ["access-admin-key"],
                                "tenants": [{"name": "acme", "keys": [KEY], "models": [SIMPLE]}]}))
    log_file = folder / "inferd.log"
    server = start_server(repo, folder / "server.out", "--log-format", "json", "--log-file", str(log_file),
                          "--auth-config", str(auth), "--state-dir", str(folder / "state"))
    yield server, log_file
    server.stop()


def _lines(log_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]


def _access(log_file: Path, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in _lines(log_file)
                 if line["logger"] == "inferd.access" and line.get("request_id") == request_id]
        if found:
            assert len(found) == 1
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access line for {request_id!r}")


def _v2_body(request_id: str, rows: int) -> dict[str, Any]:
    a, b = simple_data(rows)
    return {"id": request_id, "inputs": [
        {"name": "INPUT0", "shape": [rows, 16], "datatype": "INT32", "data": a.ravel().tolist()},
        {"name": "INPUT1", "shape": [rows, 16], "datatype": "INT32", "data": b.ravel().tolist()}]}


def test_an_answered_http_request_has_one_line_with_its_tenant(served: tuple[ServerProcess, Path]) -> None:
    server, log_file = served
    reply = httpx.post(f"{server.base_url}/v2/models/{SIMPLE}/infer", json=_v2_body("acc-http", 1),
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    line = _access(log_file, "acc-http")
    assert (line["level"], line["model"], line["version"], line["protocol"]) == ("INFO", SIMPLE, "1", "v2-http")
    assert (line["status"], line["batch_size"], line["tenant"]) == (200, 1, "acme")
    assert 0 < line["latency_ms"] < 30_000
    assert line["time"].endswith("Z") and "error" not in line


def test_a_grpc_batch_counts_its_rows(served: tuple[ServerProcess, Path]) -> None:
    server, log_file = served
    client = grpcclient.InferenceServerClient(server.grpc_url)
    a, b = simple_data(3)
    client.infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id="acc-grpc",
                 headers={"authorization": f"Bearer {KEY}"})
    line = _access(log_file, "acc-grpc")
    assert (line["protocol"], line["status"], line["batch_size"], line["tenant"]) == ("v2-grpc", 200, 3, "acme")


def test_refused_requests_have_their_status_and_error(served: tuple[ServerProcess, Path]) -> None:
    server, log_file = served
    body = _v2_body("acc-bad", 1)
    body["inputs"][0]["datatype"] = "FP32"  # the model takes INT32: the core refuses it
    reply = httpx.post(f"{server.base_url}/v2/models/{SIMPLE}/infer", json=body,
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert reply.status_code == 400
    line = _access(log_file, "acc-bad")
    assert (line["model"], line["status"], line["tenant"]) == (SIMPLE, 400, "acme") and line["error"]

    # (A key or a grant the front door refuses never reaches the pipeline: the audit trail has those calls.)
    reply = httpx.post(f"{server.base_url}/v2/models/{SIMPLE}/versions/7/infer", json=_v2_body("acc-missing", 1),
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert reply.status_code == 404
    line = _access(log_file, "acc-missing")
    assert (line["model"], line["version"], line["status"], line["tenant"]) == (SIMPLE, "7", 404, "acme")
    assert line["error"]


def test_every_log_line_is_json_and_the_api_keeps_the_format(served: tuple[ServerProcess, Path]) -> None:
    server, log_file = served
    lines = _lines(log_file)  # json.loads of every line: a line that is not JSON fails here
    assert any("ready" in line["message"] for line in lines if line["logger"] != "inferd.access")
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    reply = httpx.post(f"{server.base_url}/v2/logging", json={"log_format": "default"}, headers=ADMIN, timeout=10)
    assert reply.status_code == 400 and "--log-format json" in reply.text
    assert httpx.get(f"{server.base_url}/v2/logging", headers=ADMIN, timeout=10).json()["log_format"] == "json"
    assert np.all([isinstance(line["time"], str) for line in lines])
