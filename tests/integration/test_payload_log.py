"""Payload logging (`--payload-log`): requests and answers reach a real HTTP sink as KServe's logger sends them.

The sink is an http.server started by the test on 127.0.0.1 that keeps every CloudEvent it is posted (its ce-*
headers and body). A real `inferd serve` logs to it; the test checks what someone reading the sink would: the
CloudEvents attributes KServe's logger sets, the request's tensors and the model's answer as bodies, a model's
`payload_log` parameter, the traced request's traceparent, nothing lost under load below the queue bound, and a
sink that is down costing no request its answer while the drops are counted in the metrics.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from clients import simple_data
from models import SIMPLE, SIMPLE_CONFIG, add_simple, simple_model, write_model
from serving import HOST, ServerProcess, free_ports, start_server

RESPONSE_ONLY = "simple_answers"
NOT_LOGGED = "simple_quiet"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"


@dataclass
class Event:
    headers: dict[str, str]
    body: Any


@dataclass
class Sink:
    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay_s: float = 0.0

    def of(self, request_id: str) -> list[Event]:
        with self.lock:
            return [e for e in self.events if e.headers.get("ce-id") == request_id]

    def wait(self, request_id: str, count: int, timeout: float = 20.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(request_id)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"the sink got {len(self.of(request_id))} events for {request_id!r}, not {count}")


def _sink_handler(sink: Sink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real sink

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if sink.delay_s:
                time.sleep(sink.delay_s)
            with sink.lock:
                sink.events.append(Event({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _repository(folder: Path) -> Path:
    repo = folder / "models"
    repo.mkdir()
    add_simple(repo)
    for name, mode in ((RESPONSE_ONLY, "response"), (NOT_LOGGED, "none")):
        config = SIMPLE_CONFIG.replace('name: "simple"', f'name: "{name}"') + \
            f'parameters {{ key: "payload_log" value: {{ string_value: "{mode}" }} }}\n'
        write_model(repo, name, simple_model(), config)
    return repo


@dataclass
class Logged:
    server: ServerProcess
    sink: Sink
    spans: Path


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    folder = tmp_path_factory.mktemp("payload")
    sink = Sink()
    httpd = ThreadingHTTPServer((HOST, 0), _sink_handler(sink))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    spans = folder / "spans.jsonl"
    # Traced only when the caller sends a sampled traceparent (rate 0), spans to a file.
    server = start_server(_repository(folder), folder / "server.log",
                          "--payload-log", f"http://{HOST}:{httpd.server_address[1]}/events",
                          "--payload-log-queue", "1000",
                          "--trace-config", "mode=opentelemetry", "--trace-config", "rate=0",
                          "--trace-config", "opentelemetry,exporter=file",
                          "--trace-config", f"opentelemetry,file={spans}")
    try:
        yield Logged(server, sink, spans)
    finally:
        server.stop()
        httpd.shutdown()


def _infer(server: ServerProcess, model: str, request_id: str, seed: int = 0,
           headers: dict[str, str] | None = None) -> dict[str, Any]:
    a, b = simple_data(1, seed)
    body = {"id": request_id, "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a.ravel().tolist()},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b.ravel().tolist()}]}
    reply = httpx.post(f"{server.base_url}/v2/models/{model}/infer", json=body, headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def _dropped(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"http://{HOST}:{server.metrics_port}/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in
            re.findall(r'^inferd_payload_log_dropped_total\{reason="(\w+)"\} (\S+)$', text, re.MULTILINE)}


def test_request_and_response_arrive_as_kserve_cloudevents(logged: Logged) -> None:
    answer = _infer(logged.server, SIMPLE, "pl-1", seed=3)
    events = logged.sink.wait("pl-1", 2)
    by_type = {e.headers["ce-type"]: e for e in events}
    assert set(by_type) == {REQUEST_TYPE, RESPONSE_TYPE}
    for event in events:
        headers = event.headers
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-source"].startswith("http://")
        assert headers["ce-inferenceservicename"] == SIMPLE
        assert headers["ce-component"] == "predictor"
        assert "ce-namespace" in headers and "ce-endpoint" in headers
        assert headers["content-type"] == "application/json"
        assert "ce-traceparent" not in headers  # not traced
        stamp = datetime.datetime.fromisoformat(headers["ce-time"][:26] + "+00:00")
        assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 60
    assert by_type[REQUEST_TYPE].headers["ce-time"] <= by_type[RESPONSE_TYPE].headers["ce-time"]

    a, b = simple_data(1, 3)
    request = by_type[REQUEST_TYPE].body
    assert request["id"] == "pl-1"
    inputs = {t["name"]: t for t in request["inputs"]}
    assert inputs["INPUT0"]["data"] == a.ravel().tolist() and inputs["INPUT1"]["data"] == b.ravel().tolist()
    assert inputs["INPUT0"]["shape"] == [1, 16] and inputs["INPUT0"]["datatype"] == "INT32"
    response = by_type[RESPONSE_TYPE].body
    assert (response["model_name"], response["model_version"], response["id"]) == (SIMPLE, "1", "pl-1")
    outputs = {t["name"]: t["data"] for t in response["outputs"]}
    assert outputs["OUTPUT0"] == (a + b).ravel().tolist()
    assert outputs["OUTPUT0"] == next(o["data"] for o in answer["outputs"] if o["name"] == "OUTPUT0")


def test_a_models_parameter_picks_what_is_logged(logged: Logged) -> None:
    _infer(logged.server, NOT_LOGGED, "pl-quiet")
    _infer(logged.server, RESPONSE_ONLY, "pl-answers")
    [event] = logged.sink.wait("pl-answers", 1)
    assert event.headers["ce-type"] == RESPONSE_TYPE
    time.sleep(0.5)  # the writer had time to send anything else there was
    assert len(logged.sink.of("pl-answers")) == 1
    assert logged.sink.of("pl-quiet") == []


def test_a_traced_request_carries_its_traceparent(logged: Logged) -> None:
    trace_id = secrets.token_hex(16)
    _infer(logged.server, SIMPLE, "pl-traced", headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    events = logged.sink.wait("pl-traced", 2)
    parents = {e.headers["ce-traceparent"] for e in events}
    assert len(parents) == 1
    version, traced_id, span_id, flags = parents.pop().split("-")
    assert traced_id == trace_id and version == "00" and int(flags, 16) & 1  # the request's span, sampled
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and span_id not in (logged.spans.read_text() if logged.spans.exists() else ""):
        time.sleep(0.1)
    spans = [json.loads(line) for line in logged.spans.read_text().splitlines()]
    [span] = [s for s in spans if s["context"]["span_id"] == f"0x{span_id}"]
    assert span["name"] == SIMPLE and span["attributes"]["request_id"] == "pl-traced"


def test_under_load_nothing_is_dropped_below_the_queue_bound(logged: Logged) -> None:
    logged.sink.delay_s = 0.002  # a sink slower than the server: the queue takes up the difference
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: _infer(logged.server, SIMPLE, f"load-{i}", seed=i), range(300)))
        for i in range(300):
            events = logged.sink.wait(f"load-{i}", 2, timeout=60)
            assert {e.headers["ce-type"] for e in events} == {REQUEST_TYPE, RESPONSE_TYPE}
    finally:
        logged.sink.delay_s = 0.0
    assert sum(_dropped(logged.server).values()) == 0


def test_with_the_sink_down_requests_are_answered_and_drops_counted(tmp_path: Path) -> None:
    [closed_port] = free_ports(1)  # nothing listens there
    server = start_server(_repository(tmp_path), tmp_path / "server.log",
                          "--payload-log", f"http://{HOST}:{closed_port}/", "--payload-log-queue", "10")
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: _infer(server, SIMPLE, f"down-{i}", seed=i), range(100)))
        assert len(answers) == 100
        deadline = time.monotonic() + 20
        dropped = _dropped(server)
        while sum(dropped.values()) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            dropped = _dropped(server)
        assert sum(dropped.values()) == 200, dropped  # every event of every request: counted, by reason
        assert dropped["sink_unreachable"] > 0
        assert set(dropped) == {"queue_full", "sink_unreachable", "sink_error", "shutdown"}
    finally:
        server.stop()
    assert "cannot be reached" in server.log()


def test_a_file_sink_gets_one_cloudevent_a_line(tmp_path: Path) -> None:
    path = tmp_path / "payloads.jsonl"
    server = start_server(_repository(tmp_path), tmp_path / "server.log", "--payload-log", f"file:{path}")
    try:
        _infer(server, SIMPLE, "file-1")
    finally:
        server.stop()  # the queue is written out before the server exits
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["type"], e["id"]) for e in lines] == [(REQUEST_TYPE, "file-1"), (RESPONSE_TYPE, "file-1")]
    assert lines[0]["specversion"] == "1.0" and lines[0]["inferenceservicename"] == SIMPLE
    assert lines[0]["datacontenttype"] == "application/json"
    assert np.array(lines[1]["data"]["outputs"][0]["data"]).shape == (16,)
