"""The scaler's Prometheus metrics: cold starts (count and seconds), evictions, instances and memory per model."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .scaler import Scaler

COLD_START_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Histogram:
    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(COLD_START_BUCKETS_S) + 1)
        self.sum = 0.0


class ScalingMetrics(Collector):
    def __init__(self, scaler: Scaler) -> None:
        self._scaler = scaler
        self._lock = threading.Lock()
        self.cold_starts: dict[str, _Histogram] = {}
        self.evictions: dict[str, int] = {}
        self.scale_downs: dict[str, int] = {}

    # ---- what the scaler reports ----

    def cold_start(self, model: str, seconds: float) -> None:
        with self._lock:
            histogram = self.cold_starts.setdefault(model, _Histogram())
            histogram.buckets[bisect_left(COLD_START_BUCKETS_S, seconds)] += 1
            histogram.sum += seconds

    def evicted(self, model: str) -> None:
        with self._lock:
            self.evictions[model] = self.evictions.get(model, 0) + 1

    def scaled_down(self, model: str, reason: str) -> None:
        with self._lock:
            self.scale_downs[model] = self.scale_downs.get(model, 0) + 1

    # ---- Prometheus ----

    def collect(self) -> Iterator[Metric]:
        """The families that have samples (a family is declared only with its samples, as Triton's are)."""
        return (family for family in self._families() if family.samples)

    def _families(self) -> Iterator[Metric]:
        with self._lock:
            cold = {m: (list(h.buckets), h.sum) for m, h in self.cold_starts.items()}
            evictions = dict(self.evictions)
        starts = Metric("inferd_model_cold_starts", "Loads of a model scaled to zero (or evicted) that its "
                        "requests waited for", "counter")
        seconds = Metric("inferd_model_cold_start_seconds", "Seconds from a held request to its model loaded",
                         "histogram")
        for model, (buckets, total) in sorted(cold.items()):
            starts.add_sample("inferd_model_cold_starts_total", {"model": model}, float(sum(buckets)))
            cumulative = 0
            for bound, count in zip(COLD_START_BUCKETS_S, buckets, strict=False):
                cumulative += count
                seconds.add_sample("inferd_model_cold_start_seconds_bucket", {"model": model, "le": str(bound)},
                                   float(cumulative))
            cumulative += buckets[-1]
            seconds.add_sample("inferd_model_cold_start_seconds_bucket", {"model": model, "le": "+Inf"},
                               float(cumulative))
            seconds.add_sample("inferd_model_cold_start_seconds_count", {"model": model}, float(cumulative))
            seconds.add_sample("inferd_model_cold_start_seconds_sum", {"model": model}, total)
        yield starts
        yield seconds
        evicted = Metric("inferd_model_evictions", "Models scaled to zero to stay under --model-memory-limit",
                         "counter")
        for model, count in sorted(evictions.items()):
            evicted.add_sample("inferd_model_evictions_total", {"model": model}, float(count))
        yield evicted
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        scaler = self._scaler
        instances = Metric("inferd_model_instances", "Instances of a model version now (0: scaled to zero)", "gauge")
        memory = Metric("inferd_model_memory_bytes", "Measured resident memory of a model (0 while scaled to zero "
                        "or not measured)", "gauge")
        for name in scaler.manager.names():
            entry = scaler.manager.entry(name)
            state = scaler.states.get(name)
            if entry is None or state is None:
                continue
            for served in sorted(entry.ready, key=lambda m: m.version):
                instances.add_sample("inferd_model_instances", {"model": name, "version": served.version_str},
                                     float(len(served.scheduler.pool.instances)))
            memory.add_sample("inferd_model_memory_bytes", {"model": name}, float(scaler.memory_of(name)))
        yield instances
        yield memory
