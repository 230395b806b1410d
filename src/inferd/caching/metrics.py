"""The cache's own Prometheus metrics (the per-model hits and misses are Triton's, in observability/metrics.py):
how full it is and how much it evicts, for sizing `--cache-config local,size=BYTES`."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .store import ResponseCache


class CacheMetrics(Collector):
    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        for name, doc, kind, value in (
            ("inferd_cache_entries", "Answers held in the response cache", "gauge", len(cache)),
            ("inferd_cache_used_bytes", "Bytes the response cache's entries count (data and overhead)", "gauge",
             cache.used),
            ("inferd_cache_size_bytes", "The response cache's size (--cache-config local,size=BYTES)", "gauge",
             cache.size),
            ("inferd_cache_evictions", "Entries evicted to make room for newer ones", "counter", cache.evictions),
        ):
            metric = Metric(name, doc, kind)
            metric.add_sample(name, {}, float(value))
            yield metric
