"""OpenTelemetry tracing (`--trace-config mode=opentelemetry`): spans reach a real OTLP/HTTP receiver.

The test starts its own receiver on 127.0.0.1 (an http.server that decodes `ExportTraceServiceRequest` with the
opentelemetry-proto classes) and a stand-in remote Seldon node (an http.server that answers predictions and keeps
the headers it got), then a real `inferd serve` exporting to the receiver. What a user checks in Jaeger is
checked here: a request's span continues the caller's W3C trace (HTTP header, gRPC metadata), has queue and compute
children, an ensemble step's span is a child of the ensemble's, and a remote graph node gets a `traceparent` that
names the client span of the call.
"""

from __future__ import annotations

import gzip
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from clients import simple_data
from ensemble_models import ensemble, write_scorer
from models import SIMPLE, add_simple
from serving import HOST, INFERD, ServerProcess, start_server

SCORER_ENSEMBLE = """
max_batch_size: 8
input [ { name: "X" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] } ]
ensemble_scheduling {
  step [ { model_name: "scorer" model_version: -1
           input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" } } ]
}
"""


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[str]
    status: int


@dataclass
class Receiver:
    """What the OTLP receiver got: spans, and the resource attributes they came with."""

    spans: list[Span] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no such span arrived; got {[s.name for s in self.spans]}")


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _receiver_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            export = ExportTraceServiceRequest.FromString(body)
            with receiver.lock:
                for resource_spans in export.resource_spans:
                    receiver.resources.append({a.key: _value(a.value) for a in resource_spans.resource.attributes})
                    for scope in resource_spans.scope_spans:
                        receiver.spans += [Span(s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                                                s.kind, {a.key: _value(a.value) for a in s.attributes},
                                                [e.name for e in s.events], s.status.code) for s in scope.spans]
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _remote_node_handler(seen: list[dict[str, str]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """A remote Seldon node: answers a prediction with its input, keeps the headers."""

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _serve_http(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer((HOST, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@dataclass
class Traced:
    server: ServerProcess
    receiver: Receiver
    remote_headers: list[dict[str, str]]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    folder = tmp_path_factory.mktemp("otel")
    receiver = Receiver()
    collector = _serve_http(_receiver_handler(receiver))
    remote_headers: list[dict[str, str]] = []
    remote = _serve_http(_remote_node_handler(remote_headers))
    repo = folder / "models"
    repo.mkdir()
    add_simple(repo)
    write_scorer(repo)
    ensemble(repo, "scored", SCORER_ENSEMBLE)
    deployment = folder / "far.yaml"
    deployment.write_text(f"""
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {{name: far}}
spec:
  predictors:
  - name: default
    graph:
      name: echo
      type: MODEL
      endpoint: {{service_host: {HOST}, service_port: {remote.server_address[1]}, type: REST}}
""")
    server = start_server(repo, folder / "server.log", "--deployment", str(deployment),
                          "--trace-config", "mode=opentelemetry",
                          "--trace-config", f"opentelemetry,url={HOST}:{collector.server_address[1]}/v1/traces",
                          "--trace-config", "opentelemetry,resource=deployment.environment=test",
                          "--trace-config", "opentelemetry,bsp_schedule_delay=50",
                          "--trace-config", "rate=1")
    try:
        yield Traced(server, receiver, remote_headers)
    finally:
        server.stop()
        collector.shutdown()
        remote.shutdown()


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _children(receiver: Receiver, parent: Span) -> dict[str, Span]:
    return {s.name: s for s in receiver.spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id}


def test_a_request_span_continues_the_callers_trace_with_queue_and_compute_children(traced: Traced) -> None:
    traceparent, trace_id, caller_span = _traceparent()
    a, b = simple_data(1)
    body = {"id": "otel-http", "inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a.ravel().tolist()},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b.ravel().tolist()}]}
    reply = httpx.post(f"{traced.server.base_url}/v2/models/{SIMPLE}/infer", json=body,
                       headers={"traceparent": traceparent, "tracestate": "vendor=1"}, timeout=30)
    assert reply.status_code == 200, reply.text

    receiver = traced.receiver
    [span] = receiver.wait_for(lambda s: s.attributes.get("request_id") == "otel-http")
    assert (span.name, span.trace_id, span.parent_id) == (SIMPLE, trace_id, caller_span)
    assert span.kind == 2  # SPAN_KIND_SERVER
    assert span.attributes["model_name"] == SIMPLE and span.attributes["model_version"] == 1
    assert span.attributes["inferd.protocol"] == "v2-http"
    assert span.events == ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
                           "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END"]
    receiver.wait_for(lambda s: s.name == "compute_output" and s.trace_id == trace_id)
    children = _children(receiver, span)
    assert set(children) == {"queue", "compute"}
    assert set(_children(receiver, children["compute"])) == {"compute_input", "compute_infer", "compute_output"}
    resource = receiver.resources[-1]
    assert resource["service.name"] == "inferd" and resource["deployment.environment"] == "test"


def test_an_ensemble_steps_span_is_a_child_of_the_ensembles_and_grpc_metadata_propagates(traced: Traced) -> None:
    traceparent, trace_id, caller_span = _traceparent()
    client = grpcclient.InferenceServerClient(traced.server.grpc_url)
    x = grpcclient.InferInput("X", [2, 4], "FP32")
    x.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
    client.infer("scored", [x], request_id="otel-grpc", headers={"traceparent": traceparent})

    receiver = traced.receiver
    [outer] = receiver.wait_for(lambda s: s.attributes.get("request_id") == "otel-grpc")
    assert (outer.name, outer.trace_id, outer.parent_id) == ("scored", trace_id, caller_span)
    assert outer.attributes["inferd.protocol"] == "v2-grpc"
    [step] = receiver.wait_for(lambda s: s.name == "scorer" and s.trace_id == trace_id)
    assert step.parent_id == outer.span_id
    assert step.kind == 1  # SPAN_KIND_INTERNAL
    assert step.attributes["inferd.protocol"] == "graph"
    receiver.wait_for(lambda s: s.name == "compute" and s.parent_id == step.span_id)


def test_a_remote_graph_node_gets_the_traceparent_of_its_call(traced: Traced) -> None:
    reply = httpx.post(f"{traced.server.base_url}/seldon/default/far/api/v1.0/predictions",
                       json={"data": {"ndarray": [[1.0, 2.0]]}}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert traced.remote_headers, "the remote node was not called"
    version, trace_id, parent_span, flags = traced.remote_headers[-1]["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled

    receiver = traced.receiver
    [call] = receiver.wait_for(lambda s: s.span_id == parent_span)
    assert call.name == "remote echo" and call.trace_id == trace_id
    assert call.kind == 3  # SPAN_KIND_CLIENT
    assert call.attributes["url.full"].endswith("/api/v1.0/predictions")
    [graph] = receiver.wait_for(lambda s: s.span_id == call.parent_id)
    assert graph.trace_id == trace_id and graph.parent_id == ""  # the graph request began the trace


def test_without_the_extra_the_mode_fails_with_one_line(tmp_path: Path) -> None:
    """A Python without OpenTelemetry (its import blocked) gets one line naming the extra."""
    script = ("import sys; sys.modules['opentelemetry'] = None; from inferd.cli import main; "
              "sys.exit(main(['serve', '--model-repository', sys.argv[1], '--http-port', '0', '--grpc-port', '0', "
              "'--metrics-port', '0', '--trace-config', 'mode=opentelemetry']))")
    (tmp_path / "models").mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "models")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line or "inferd[otel]" in line]
    assert len(errors) == 1 and "pip install 'inferd[otel]'" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert INFERD.exists()
