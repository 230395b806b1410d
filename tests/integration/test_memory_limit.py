"""Memory-aware serving on a real `inferd serve` (issue 14): under --model-memory-limit, loading a model past the
limit evicts the least recently used idle model — never one with a request in flight (a slow request holds one
while others load), never a pinned one; each model's measured memory is in the repository index and the metrics,
and their sum stays under the limit; a model larger than the limit is UNAVAILABLE with the reason."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from models import SLOW, SLOW_CONFIG, slow_model, write_model
from observing import metric, scrape
from scaling_models import add_lookup, lookup_body
from serving import ServerProcess, start_server

LIMIT = 115 * 1024 * 1024  # room for two 40 MB tables, the pinned one and the slow model; not for three tables
A, B, C = "table_a", "table_b", "table_c"  # 40 MB each
PINNED = "table_pinned"  # 8 MB, pinned
HUGE = "table_huge"  # 160 MB: larger than the limit


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    for seed, name in enumerate((A, B, C)):
        add_lookup(repo, name, 40, seed=100 * (seed + 1))
    add_lookup(repo, PINNED, 8, seed=7, pinned="true")
    add_lookup(repo, HUGE, 160, seed=9)
    write_model(repo, SLOW, slow_model(), SLOW_CONFIG)
    return repo


def _rows(server: ServerProcess) -> dict[str, dict[str, object]]:
    rows = httpx.post(f"{server.base_url}/v2/repository/index", json={}, timeout=10).json()
    return {row["name"]: row for row in rows}


def _resident(rows: dict[str, dict[str, object]]) -> set[str]:
    return {name for name, row in rows.items() if int(row.get("memory_bytes", 0)) > 0}


def _infer(server: ServerProcess, name: str, index: int = 1) -> float:
    answer = httpx.post(f"{server.base_url}/v2/models/{name}/infer", json=lookup_body(index), timeout=60)
    assert answer.status_code == 200, answer.text
    return float(answer.json()["outputs"][0]["data"][0])


def _slow_request(server: ServerProcess, trips: int, answers: list[int]) -> threading.Thread:
    body = {"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                       {"name": "DELAY", "shape": [1], "datatype": "INT64", "data": [trips]}]}

    def call() -> None:
        answers.append(httpx.post(f"{server.base_url}/v2/models/{SLOW}/infer", json=body, timeout=120).status_code)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def _wait_pending(server: ServerProcess, name: str) -> None:
    deadline = time.monotonic() + 30
    while metric(scrape(server.metrics_port), "nv_inference_pending_request_count", model=name, version="1") < 1:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.02)


def test_least_recently_used_idle_model_is_evicted(repo: Path, tmp_path: Path) -> None:
    server = start_server(repo, tmp_path / "server.log", "--model-memory-limit", str(LIMIT))
    try:
        rows = _rows(server)
        huge = rows[HUGE]
        assert huge["state"] == "UNAVAILABLE" and "more than --model-memory-limit" in str(huge["reason"])
        assert all(rows[n]["state"] == "READY" for n in (A, B, C, PINNED, SLOW))
        answers: list[int] = []
        slow = _slow_request(server, 12000, answers)  # about 6 s; its model is the least recently used from now on
        _wait_pending(server, SLOW)
        assert _infer(server, A, 1) == 101.0
        assert _infer(server, B, 2) == 202.0
        rows = _rows(server)
        assert {A, B, PINNED, SLOW} <= _resident(rows)
        assert _infer(server, C, 3) == 303.0  # no room for a third table: the LRU idle one (A) goes
        rows = _rows(server)
        assert _resident(rows) == {B, C, PINNED, SLOW}, rows
        assert rows[A]["state"] == "READY" and "evicted" in str(rows[A]["reason"])
        assert sum(int(r.get("memory_bytes", 0)) for r in rows.values()) <= LIMIT
        assert _infer(server, A, 4) == 104.0  # held while it loads again; B (now the LRU idle one) goes
        rows = _rows(server)
        assert _resident(rows) == {A, C, PINNED, SLOW}, rows
        assert rows[SLOW]["reason"] == ""  # busy all along: never evicted
        assert slow.is_alive(), "the slow request ended before the last load: nothing was tested"
        slow.join(timeout=60)
        assert answers == [200]
        samples = scrape(server.metrics_port)
        assert metric(samples, "inferd_model_evictions_total", model=A) >= 1
        assert metric(samples, "inferd_model_evictions_total", model=B) >= 1
        assert metric(samples, "inferd_model_memory_bytes", model=B) == 0
        assert metric(samples, "inferd_model_memory_bytes", model=C) > 30 * 1024 * 1024
        assert metric(samples, "inferd_model_memory_bytes", model=PINNED) > 0
        assert httpx.get(f"{server.base_url}/v2/models/{B}/ready", timeout=10).status_code == 200
    finally:
        server.stop()
