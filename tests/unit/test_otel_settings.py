"""Mode opentelemetry's settings: which exporter, endpoint and resource `--trace-config` and the OTEL_* variables
give, and the spans a traced request becomes (written by the file exporter, read back)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from inferd.observability import Tracer
from inferd.observability.otel import OtelTracing
from inferd.observability.tracing import outgoing_headers, parse_trace_config


def _tracing(*entries: str) -> OtelTracing:
    return OtelTracing(parse_trace_config(["mode=opentelemetry", *entries]).otel)


def test_exporters_and_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    http = _tracing("opentelemetry,url=127.0.0.1:4318/v1/traces")
    assert isinstance(http.exporter, HttpExporter) and http.exporter._endpoint == "http://127.0.0.1:4318/v1/traces"
    http.close()
    grpc = _tracing("opentelemetry,protocol=grpc", "opentelemetry,url=http://127.0.0.1:4317")
    assert isinstance(grpc.exporter, GrpcExporter)
    grpc.close()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # the variable, where no flag says otherwise
    console = _tracing()
    assert isinstance(console.exporter, ConsoleSpanExporter)
    console.close()
    with pytest.raises(ValueError, match="opentelemetry,file=PATH"):
        _tracing("opentelemetry,exporter=file")


def test_resource_flags_win_over_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=ml,region=eu")
    tracing = _tracing("opentelemetry,resource=region=us", "opentelemetry,exporter=console")
    attributes = tracing.provider.resource.attributes
    assert (attributes["service.name"], attributes["team"], attributes["region"]) == ("inferd", "ml", "us")
    tracing.close()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scoring")
    tracing = _tracing("opentelemetry,exporter=console")
    assert tracing.provider.resource.attributes["service.name"] == "scoring"
    tracing.close()


def test_a_traced_request_and_its_graph_step_become_spans(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    tracer = Tracer(parse_trace_config(["mode=opentelemetry", "rate=1", "opentelemetry,exporter=file",
                                        f"opentelemetry,file={path}"]))
    start = time.perf_counter_ns()
    outer = tracer.begin("graph", 1, "r1", start, protocol="v2-http")
    assert outer is not None and outer.traceparent.startswith("00-")
    inner = tracer.begin("step", 1, "r1", start + 10, protocol="graph")  # runs inside the graph request
    assert inner is not None and inner.parent is outer
    inner.computed(start + 20, start + 30, start + 40, start + 50, start + 60, {}, {})
    with outgoing_headers("remote far", "http://far/api") as headers:  # a remote node's call, made by the step
        assert headers["traceparent"].split("-")[1] == outer.traceparent.split("-")[1]
    tracer.end(inner, start + 70)
    tracer.end(outer, start + 80, ValueError("boom"))
    other = tracer.begin("other", 1, "r2", start)
    assert other is not None and other.parent is None  # the next request has no parent: a root again
    tracer.end(other, start + 90)
    tracer.close()
    spans = {s["name"]: s for s in map(json.loads, path.read_text().splitlines())}
    assert {"graph", "step", "queue", "compute", "compute_input", "compute_infer", "compute_output",
            "remote far"} <= set(spans)
    assert spans["step"]["parent_id"] == spans["graph"]["context"]["span_id"]
    assert spans["remote far"]["parent_id"] == spans["step"]["context"]["span_id"]
    assert spans["compute_infer"]["parent_id"] == spans["compute"]["context"]["span_id"]
    assert spans["graph"]["status"]["status_code"] == "ERROR"


def test_otlp_over_grpc_reaches_a_real_receiver() -> None:
    """protocol=grpc: spans arrive at a gRPC TraceService on 127.0.0.1 (the collector's OTLP/gRPC port)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    names: list[str] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            names.extend(s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        tracer = Tracer(parse_trace_config(["mode=opentelemetry", "rate=1", "opentelemetry,protocol=grpc",
                                            f"opentelemetry,url=http://127.0.0.1:{port}"]))
        trace = tracer.begin("grpc-exported", 1, "g1", time.perf_counter_ns())
        assert trace is not None
        tracer.end(trace, time.perf_counter_ns())
        tracer.close()  # flushes the batch processor
    finally:
        server.stop(None)
    assert names == ["grpc-exported"]
