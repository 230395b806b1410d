"""Scale to zero on a real `inferd serve` (issue 14): after its idle window a model's instances are unloaded (its
state, reason and the server's RSS show it) while its readiness, metadata and config keep answering 200; then 50
requests sent at once are held while it loads and all answered; a model file broken meanwhile fails all 50 with the
reason; held requests past --model-held-requests get a fast 503 with Retry-After, and --model-load-timeout-secs
bounds the wait."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from observing import metric, scrape
from scaling_models import add_lookup, add_slow_python, lookup_body, process_rss, slow_body
from serving import ServerProcess, start_server

BIG = "lookup_big"  # 48 MB of weights, scales to zero after 3 s (its own parameter)
KEEP = "lookup_keep"  # idle_unload_seconds "0": never, whatever the server's flag says
IDLE_S = 3.0


def _row(server: ServerProcess, name: str) -> dict[str, object]:
    rows = httpx.post(f"{server.base_url}/v2/repository/index", json={}, timeout=10).json()
    return next(r for r in rows if r["name"] == name)


def _wait_reason(server: ServerProcess, name: str, reason: str, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        row = _row(server, name)
        if row.get("reason") == reason:
            return row
        assert time.monotonic() < deadline, f"{name} never got reason {reason!r}: {row}\n{server.log()}"
        time.sleep(0.1)


async def _burst(url: str, body: dict[str, object], count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count)) as client:
        return list(await asyncio.gather(*(client.post(url, json=body) for _ in range(count))))


class _ReadinessWatch:
    """Polls a model's ready, metadata and config endpoints from a thread; remembers every status that was not
    200."""

    def __init__(self, server: ServerProcess, name: str) -> None:
        self.bad: list[tuple[str, int]] = []
        self.checks = 0
        self._stop = threading.Event()
        base = f"{server.base_url}/v2/models/{name}"
        self._urls = [f"{base}/ready", base, f"{base}/config", f"{server.base_url}/v2/health/ready"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                for url in self._urls:
                    status = client.get(url).status_code
                    self.checks += 1
                    if status != 200:
                        self.bad.append((url, status))
                time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    add_lookup(repo, BIG, 48, seed=10, idle_unload_seconds=str(IDLE_S))
    add_lookup(repo, KEEP, 1, seed=20, idle_unload_seconds="0")
    return repo


def test_idle_model_scales_to_zero_and_wakes_for_a_burst(repo: Path, tmp_path: Path) -> None:
    server = start_server(repo, tmp_path / "server.log", "--model-idle-unload-secs", "1")
    watch = _ReadinessWatch(server, BIG)
    try:
        url = f"{server.base_url}/v2/models/{BIG}/infer"
        assert httpx.post(url, json=lookup_body(3), timeout=30).json()["outputs"][0]["data"] == [13.0]
        loaded_rss = process_rss(server.process.pid)
        row = _wait_reason(server, BIG, "scaled to zero")
        assert row["state"] == "READY" and row["memory_bytes"] == 0
        deadline = time.monotonic() + 30  # (ONNX Runtime's optimized graph is saved meanwhile, then freed)
        while process_rss(server.process.pid) > loaded_rss - 30 * 1024 * 1024:  # the 48 MB table goes
            assert time.monotonic() < deadline, f"RSS stayed at {process_rss(server.process.pid)}, {loaded_rss} loaded"
            time.sleep(0.1)
        keep = _row(server, KEEP)  # its own "0" wins over the server's 1 s
        assert keep["state"] == "READY" and keep["reason"] == ""
        samples = scrape(server.metrics_port)
        assert metric(samples, "inferd_model_instances", model=BIG, version="1") == 0

        answers = asyncio.run(_burst(url, lookup_body(5), 50))
        assert [a.status_code for a in answers] == [200] * 50, answers[0].text
        assert {a.json()["outputs"][0]["data"][0] for a in answers} == {15.0}
        samples = scrape(server.metrics_port)
        assert metric(samples, "inferd_model_cold_starts_total", model=BIG) == 1
        assert metric(samples, "inferd_model_cold_start_seconds_count", model=BIG) == 1
        assert httpx.post(url, json=lookup_body(5), timeout=30).status_code == 200  # its idle window starts again
        row = _row(server, BIG)
        assert row["state"] == "READY" and row["reason"] == ""
        assert int(row["memory_bytes"]) > 30 * 1024 * 1024  # measured as it loaded
        samples = scrape(server.metrics_port)
        assert metric(samples, "inferd_model_instances", model=BIG, version="1") == 1
        assert metric(samples, "inferd_model_memory_bytes", model=BIG) > 30 * 1024 * 1024

        # Cold again, then its file is broken: every held request gets the reason, readiness stays true.
        _wait_reason(server, BIG, "scaled to zero")
        (repo / BIG / "1" / "model.onnx").write_bytes(b"not an onnx model")
        answers = asyncio.run(_burst(url, lookup_body(5), 50))
        assert [a.status_code for a in answers] == [503] * 50
        errors = {a.json()["error"] for a in answers}
        assert len(errors) == 1 and "failed to load" in errors.pop()
        assert _row(server, BIG)["state"] == "READY"
    finally:
        watch.stop()
        server.stop()
    assert watch.checks > 20 and watch.bad == []


def test_held_requests_are_bounded_and_the_wait_has_a_timeout(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    add_slow_python(repo, "slow_load", load_s=3.0, predict_s=0.0,
                    config='parameters { key: "idle_unload_seconds" value { string_value: "1" } }')
    server = start_server(repo, tmp_path / "server.log", "--model-held-requests", "4",
                          "--model-load-timeout-secs", "1")
    try:
        url = f"{server.base_url}/v2/models/slow_load/infer"
        assert httpx.post(url, json=slow_body(), timeout=30).status_code == 200
        _wait_reason(server, "slow_load", "scaled to zero")
        answers = asyncio.run(_burst(url, slow_body(), 20))
        statuses = [a.status_code for a in answers]
        assert statuses.count(503) == 20, [a.text for a in answers]
        refused = [a for a in answers if "retry-after" in a.headers and "--model-held-requests" in a.text]
        timed_out = [a for a in answers if "load timed out" in a.json()["error"]]
        assert len(refused) == 16 and len(timed_out) == 4
        # The load goes on; once done, the model answers.
        deadline = time.monotonic() + 30
        while _row(server, "slow_load")["reason"] == "scaled to zero":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.post(url, json=slow_body(2.0), timeout=30).json()["outputs"][0]["data"] == [4.0]
    finally:
        server.stop()


def test_an_ensemble_wakes_its_composing_model(tmp_path: Path) -> None:
    from ensemble_models import WEIGHTS, ensemble, tensor, write_scorer

    repo = tmp_path / "models"
    write_scorer(repo)
    ensemble(repo, "chain", f"""
        max_batch_size: 8
        {tensor("input", "IN", "TYPE_FP32", [4])}
        {tensor("output", "OUT", "TYPE_FP32", [3])}
        ensemble_scheduling {{ step [ {{ model_name: "scorer" model_version: -1
          input_map {{ key: "X" value: "IN" }} output_map {{ key: "Y" value: "OUT" }} }} ] }}
    """)
    server = start_server(repo, tmp_path / "server.log", "--model-idle-unload-secs", "0.5")
    try:
        _wait_reason(server, "scorer", "scaled to zero")
        assert _row(server, "chain")["reason"] == ""  # a graph has no instances: it never scales
        body = {"inputs": [{"name": "IN", "shape": [2, 4], "datatype": "FP32", "data": [1, 0, 0, 0, 0, 1, 0, 0]}]}
        answers = asyncio.run(_burst(f"{server.base_url}/v2/models/chain/infer", body, 10))
        assert [a.status_code for a in answers] == [200] * 10, answers[0].text
        assert answers[0].json()["outputs"][0]["data"] == WEIGHTS[:2].flatten().tolist()
        assert metric(scrape(server.metrics_port), "inferd_model_cold_starts_total", model="scorer") == 1
    finally:
        server.stop()
