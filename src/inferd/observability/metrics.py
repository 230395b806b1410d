"""Prometheus metrics with Triton's names and labels, computed from the statistics when scraped.

Nothing here runs on the request path: a scrape reads the per-model counters that requests already keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

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


def build_registry(source: Callable[[], Iterable[ModelStatistics]]) -> CollectorRegistry:
    """A registry with the model metrics and the process's CPU and memory."""
    from prometheus_client import PLATFORM_COLLECTOR, PROCESS_COLLECTOR

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ModelMetricsCollector(source))
    registry.register(PROCESS_COLLECTOR)
    registry.register(PLATFORM_COLLECTOR)
    return registry


def start_metrics_server(source: Callable[[], Iterable[ModelStatistics]], address: str, port: int) -> WSGIServer:
    """Serve `/metrics` on its own thread (prometheus-client's WSGI server); returns the server to shut down."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=address, registry=build_registry(source))
    return server
