"""Prometheus metrics with Triton's names and labels, computed from the statistics when scraped.

Nothing here runs on the request path: a scrape reads the per-model counters that requests already keep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from .statistics import LATENCY_BUCKETS_US, FailureReason, ModelStatistics

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_COUNTERS: tuple[tuple[str, str, Callable[[ModelStatistics], float]], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_count", "Number of inferences performed (a batch of N counts N)", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (a batch counts 1)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output.ns // 1000),
)


# Triton's response-cache metrics, shown for the models that use the cache (durations in microseconds).
_CACHE_COUNTERS: tuple[tuple[str, str, Callable[[ModelStatistics], float]], ...] = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", lambda s: s.cache_hit.count),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model", lambda s: s.cache_miss.count),
    ("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds",
     lambda s: s.cache_hit.ns // 1000),
    ("nv_cache_miss_duration_per_model", "Total cache miss (lookup and insertion) duration per model, in "
     "microseconds", lambda s: s.cache_miss.ns // 1000),
)


class ModelMetricsCollector(Collector):
    """Yields Triton's per-model metrics for the model versions `source()` returns at scrape time."""

    def __init__(self, source: Callable[[], Iterable[ModelStatistics]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        models = list(self.source())
        for name, doc, read in _COUNTERS:
            metric = Metric(name, doc, "counter")
            for s in models:
                metric.add_sample(name, {"model": s.name, "version": s.version}, float(read(s)))
            yield metric
        caching = [s for s in models if s.caching]
        if caching:
            for name, doc, read in _CACHE_COUNTERS:
                metric = Metric(name, doc, "counter")
                for s in caching:
                    metric.add_sample(name, {"model": s.name, "version": s.version}, float(read(s)))
                yield metric
        failure = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                         "counter")
        for s in models:
            for reason in FailureReason:
                failure.add_sample("nv_inference_request_failure",
                                   {"model": s.name, "version": s.version, "reason": reason.value},
                                   float(s.failures[reason]))
        yield failure
        pending = Metric("nv_inference_pending_request_count",
                         "Instantaneous number of pending requests awaiting execution per-model.", "gauge")
        for s in models:
            pending.add_sample("nv_inference_pending_request_count", {"model": s.name, "version": s.version},
                               float(s.pending))
        yield pending
        yield self._latency(models)
        yield self._batch_sizes(models)

    @staticmethod
    def _latency(models: list[ModelStatistics]) -> Metric:
        name = "inferd_request_latency_us"
        metric = Metric(name, "Latency of successful inference requests in microseconds", "histogram")
        for s in models:
            labels = {"model": s.name, "version": s.version}
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS_US, s.latency_buckets, strict=False):
                cumulative += count
                metric.add_sample(name + "_bucket", {**labels, "le": str(float(bound))}, float(cumulative))
            cumulative += s.latency_buckets[-1]
            metric.add_sample(name + "_bucket", {**labels, "le": "+Inf"}, float(cumulative))
            metric.add_sample(name + "_count", labels, float(cumulative))
            metric.add_sample(name + "_sum", labels, s.latency_sum_us)
        return metric

    @staticmethod
    def _batch_sizes(models: list[ModelStatistics]) -> Metric:
        name = "inferd_batch_size"
        metric = Metric(name, "Size of the batches the model executed", "histogram")
        for s in models:
            labels = {"model": s.name, "version": s.version}
            sizes = {size: b.compute_infer.count for size, b in list(s.batches.items())}
            for bound in BATCH_SIZE_BUCKETS:
                count = sum(n for size, n in sizes.items() if size <= bound)
                metric.add_sample(name + "_bucket", {**labels, "le": str(float(bound))}, float(count))
            metric.add_sample(name + "_bucket", {**labels, "le": "+Inf"}, float(sum(sizes.values())))
            metric.add_sample(name + "_count", labels, float(sum(sizes.values())))
            metric.add_sample(name + "_sum", labels, float(sum(size * n for size, n in sizes.items())))
        return metric


def build_registry(source: Callable[[], Iterable[ModelStatistics]],
                   extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry with the model metrics, the process's CPU and memory, and `extra` collectors (e.g. Seldon's
    custom metrics in `inferd microservice`)."""
    from prometheus_client import PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelMetricsCollector(source))
    registry.register(PROCESS_COLLECTOR)
    registry.register(PLATFORM_COLLECTOR)
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text format (0.0.4), with each family declared under its samples' own name.

    prometheus-client's writer declares every counter as `<name>_total`; Triton's counters have no suffix
    (`nv_inference_request_success`), and Prometheus matches HELP/TYPE to samples by name.
    """
    lines: list[str] = []
    for metric in registry.collect():
        name = metric.name
        if metric.type == "counter" and metric.samples and all(s.name == name + "_total" for s in metric.samples):
            name += "_total"
        doc = metric.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {metric.type if metric.type != 'unknown' else 'untyped'}")
        for sample in metric.samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {floatToGoString(sample.value)}" if labels
                         else f"{sample.name} {floatToGoString(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _MetricsHandler(BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = render(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes are not worth a log line each
        pass


def start_metrics_server(source: Callable[[], Iterable[ModelStatistics]], address: str,
                         port: int, extra: Iterable[Collector] = ()) -> ThreadingHTTPServer:
    """Serve `/metrics` on its own thread; returns the server (call `shutdown()` to stop it)."""
    handler = type("MetricsHandler", (_MetricsHandler,), {"registry": build_registry(source, extra)})
    server = ThreadingHTTPServer((address, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="inferd-metrics", daemon=True).start()
    return server
