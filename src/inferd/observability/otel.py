"""Mode opentelemetry of the trace extension: each sampled request is an OpenTelemetry span.

Loaded only when `--trace-config mode=opentelemetry` is given, so the OpenTelemetry SDK is an optional extra
(`pip install 'inferd[otel]'`). The span of a request starts when the request reaches its model (the `account`
stage) and ends with it; its children are made at the end from the timestamps the scheduler marked (queue,
compute, and compute's input / infer / output), with Triton's timestamp names as the span's events. A graph
step's span is a child of the graph request's span; a remote graph node's call is a client span whose W3C
`traceparent` goes along with the call.

Settings are Triton's (`opentelemetry,url=`, `resource=`, `bsp_*=`) with the standard `OTEL_*` variables for
what they do not set (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT / _PROTOCOL / _HEADERS, OTEL_RESOURCE_ATTRIBUTES,
OTEL_SERVICE_NAME, OTEL_BSP_*, OTEL_TRACES_EXPORTER); the flags win over the variables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from .._version import __version__

try:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON
    from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the message is what a user without the extra sees
    raise ValueError("--trace-config mode=opentelemetry needs OpenTelemetry, which is not installed: "
                     "pip install 'inferd[otel]'") from None

if TYPE_CHECKING:
    from .tracing import Trace

__all__ = ["OtelTracing"]

log = logging.getLogger("inferd.trace")

DEFAULT_SERVICE_NAME = "inferd"
# The children of a request's span: name, first and last timestamp (Triton's names).
_CHILDREN = (("queue", "QUEUE_START", "COMPUTE_START"), ("compute", "COMPUTE_START", "COMPUTE_END"))
_COMPUTE_PARTS = (("compute_input", "COMPUTE_START", "COMPUTE_INPUT_END"),
                  ("compute_infer", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START"),
                  ("compute_output", "COMPUTE_OUTPUT_START", "COMPUTE_END"))
_PROPAGATOR = TraceContextTextMapPropagator()


class _HeaderGetter(Getter[Callable[[str], "str | None"]]):
    """Reads a W3C header through the request's header function (HTTP headers, gRPC metadata)."""

    def get(self, carrier: Callable[[str], str | None], key: str) -> list[str] | None:
        value = carrier(key)
        return None if value is None else [value]

    def keys(self, carrier: Callable[[str], str | None]) -> list[str]:
        return []


_GETTER = _HeaderGetter()


class OtelTracing:
    """The SDK's tracer provider with one batch span processor and the chosen exporter."""

    def __init__(self, options: Sequence[tuple[str, str]]) -> None:
        settings: dict[str, str] = {}
        resources: dict[str, str] = {}
        for key, value in options:
            if key == "resource":
                name, _, text = value.partition("=")
                resources[name.strip()] = text.strip()
            else:
                settings[key] = value
        self._file: IO[str] | None = None
        self.exporter = self._exporter(settings)
        processor = BatchSpanProcessor(self.exporter, max_queue_size=_number(settings, "bsp_max_queue_size"),
                                       schedule_delay_millis=_number(settings, "bsp_schedule_delay"),
                                       max_export_batch_size=_number(settings, "bsp_max_export_batch_size"))
        self.provider = TracerProvider(resource=_resource(resources), sampler=ALWAYS_ON)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("inferd", __version__)
        # Span times are wall-clock nanoseconds; the pipeline's timestamps are perf_counter's (Triton's steady
        # clock): one offset, taken once, turns the latter into the former.
        self._offset = time.time_ns() - time.perf_counter_ns()

    def _exporter(self, settings: Mapping[str, str]) -> SpanExporter:
        kind = settings.get("exporter") or os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")[0].strip()
        if kind == "console":
            return ConsoleSpanExporter()
        if kind == "file":
            path = settings.get("file")
            if not path:
                raise ValueError("--trace-config opentelemetry,exporter=file needs opentelemetry,file=PATH")
            self._file = open(path, "a", encoding="utf-8")  # closed in close()
            return ConsoleSpanExporter(out=self._file, formatter=span_json)
        if kind != "otlp":
            raise ValueError(f"OpenTelemetry exporter '{kind}' is not available: expect otlp, console or file")
        protocol = settings.get("protocol") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") \
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
        url = settings.get("url")
        if protocol == "grpc":
            return _grpc_exporter(url)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ValueError("the OTLP/HTTP span exporter is not installed: pip install 'inferd[otel]'") from None
        return OTLPSpanExporter(endpoint=_http_url(url) if url else None)

    # ---- the request path (sampled requests only) ----

    def start(self, trace: Trace, header: Callable[[str], str | None] | None) -> None:
        """Begin the request's span: a child of its graph request's, else of the caller's W3C traceparent."""
        parent = trace.parent
        if parent is not None and parent.otel_span is not None:
            context: Context | None = set_span_in_context(parent.otel_span)
            kind = SpanKind.INTERNAL
        else:
            context = _PROPAGATOR.extract(header, context=Context(), getter=_GETTER) if header is not None \
                else Context()
            kind = SpanKind.SERVER
        attributes: dict[str, Any] = {"model_name": trace.model_name, "model_version": trace.model_version,
                                      "request_id": trace.request_id}
        if trace.protocol:
            attributes["inferd.protocol"] = trace.protocol
        if parent is not None:
            attributes["parent_id"] = parent.id
        trace.otel_span = self.tracer.start_span(trace.model_name, context=context, kind=kind, attributes=attributes,
                                            start_time=trace.timestamps[0][1] + self._offset)
        trace.otel = self

    def finish(self, trace: Trace, error: BaseException | None) -> None:
        """End the request's span, with its queue and compute children and its timestamps as events."""
        span = trace.otel_span
        offset = self._offset
        marks = dict(trace.timestamps)
        context = set_span_in_context(span)
        for name, ns in trace.timestamps:
            span.add_event(name, timestamp=ns + offset)
        for name, first, last in _CHILDREN:
            if first in marks and last in marks:
                child = self.tracer.start_span(name, context=context, start_time=marks[first] + offset)
                if name == "compute":
                    inner = set_span_in_context(child)
                    for part, start, end in _COMPUTE_PARTS:
                        if start in marks and end in marks:
                            self.tracer.start_span(part, context=inner, start_time=marks[start] + offset) \
                                .end(end_time=marks[end] + offset)
                child.end(end_time=marks[last] + offset)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, getattr(error, "message", None) or str(error) or
                                   type(error).__name__))
        span.end(end_time=marks.get("REQUEST_END", time.perf_counter_ns()) + offset)

    @staticmethod
    def traceparent(trace: Trace) -> str:
        context = trace.otel_span.get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    @contextlib.contextmanager
    def remote_call(self, trace: Trace, name: str, url: str) -> Iterator[dict[str, str]]:
        """A client span around a call to another server; yields the headers that carry it on."""
        span = self.tracer.start_span(name, context=set_span_in_context(trace.otel_span), kind=SpanKind.CLIENT,
                                      attributes={"url.full": url})
        headers: dict[str, str] = {}
        _PROPAGATOR.inject(headers, context=set_span_in_context(span))
        try:
            yield headers
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
            raise
        finally:
            span.end()

    def close(self) -> None:
        self.provider.shutdown()  # flushes the batch processor, then shuts the exporter down
        if self._file is not None:
            self._file.close()
            self._file = None


def _number(settings: Mapping[str, str], key: str) -> int | None:
    value = settings.get(key)
    return int(value) if value else None  # None: the SDK reads OTEL_BSP_* or uses its default


def _http_url(url: str) -> str:
    """Triton's `url=HOST:PORT/v1/traces` (no scheme) as a URL."""
    return url if "://" in url else f"http://{url}"


def _grpc_exporter(url: str | None) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ValueError("OTLP over gRPC needs its exporter: pip install opentelemetry-exporter-otlp-proto-grpc") \
            from None
    if not url:
        return OTLPSpanExporter()
    return OTLPSpanExporter(endpoint=url, insecure=not url.startswith("https://"))


def _resource(given: Mapping[str, str]) -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, then `resource=` settings over them; service.name defaults
    to inferd (not the SDK's unknown_service)."""
    base = Resource.create()
    attributes = dict(given)
    if str(base.attributes.get("service.name", "")).startswith("unknown_service") and "service.name" not in given:
        attributes["service.name"] = DEFAULT_SERVICE_NAME
    return base.merge(Resource(attributes))


def span_json(span: ReadableSpan) -> str:
    """One span as a JSON line (the file exporter's form)."""
    return span.to_json(indent=None) + "\n"
