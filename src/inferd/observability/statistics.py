"""Per model-version counters in the shape of Triton's statistics extension.

Updated on the hot path under one short lock (a few integer additions); Prometheus metrics are computed from
these counters when scraped, so a scrape never touches the request path.
"""

from __future__ import annotations

import enum
import threading
import time
from bisect import bisect_left
from typing import Any

# Request latency histogram bounds in microseconds (Prometheus buckets, upper bounds).
LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
                      1_000_000, 2_500_000, 5_000_000)


class FailureReason(str, enum.Enum):
    """Triton's `reason` label on nv_inference_request_failure."""

    REJECTED = "REJECTED"
    CANCELED = "CANCELED"
    BACKEND = "BACKEND"
    OTHER = "OTHER"


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class _BatchStats:
    __slots__ = ("compute_infer", "compute_input", "compute_output")

    def __init__(self) -> None:
        self.compute_input = _Duration()
        self.compute_infer = _Duration()
        self.compute_output = _Duration()


class ModelStatistics:
    """Counters for one model version."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.success = _Duration()
        self.fail = _Duration()
        self.queue = _Duration()
        self.compute_input = _Duration()
        self.compute_infer = _Duration()
        self.compute_output = _Duration()
        # The response cache (caching/): lookups that found the answer, and those that did not (their lookup and
        # the insertion of the computed answer). `caching`: the model uses the cache (its metrics are shown).
        self.cache_hit = _Duration()
        self.cache_miss = _Duration()
        self.caching = False
        self.failures = dict.fromkeys(FailureReason, 0)
        self.batches: dict[int, _BatchStats] = {}
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.latency_sum_us = 0.0
        self.pending = 0

    def record_execution(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int,
                         queue_ns: int) -> None:
        """One batch of `requests` requests holding `batch_size` inferences; `queue_ns` summed over requests."""
        with self._lock:  # the additions written out: this runs for every execution
            self.execution_count += 1
            self.inference_count += batch_size
            queue, compute_input, compute_infer, compute_output = (self.queue, self.compute_input,
                                                                   self.compute_infer, self.compute_output)
            queue.count += requests
            queue.ns += queue_ns
            compute_input.count += requests
            compute_input.ns += input_ns * requests
            compute_infer.count += requests
            compute_infer.ns += infer_ns * requests
            compute_output.count += requests
            compute_output.ns += output_ns * requests
            stats = self.batches.get(batch_size)
            if stats is None:
                stats = self.batches[batch_size] = _BatchStats()
            stats.compute_input.count += 1
            stats.compute_input.ns += input_ns
            stats.compute_infer.count += 1
            stats.compute_infer.ns += infer_ns
            stats.compute_output.count += 1
            stats.compute_output.ns += output_ns

    def record_cache_hit(self, ns: int) -> None:
        """A request answered from the response cache (`ns`: lookup and copy-out). As in Triton, it counts in the
        queue count (with no time) but in no execution, inference or compute count."""
        with self._lock:
            self.cache_hit.add(ns)
            self.queue.add(0)

    def record_cache_miss(self, ns: int) -> None:
        """A lookup that found nothing (`ns`: the lookup, and the insertion of the computed answer)."""
        with self._lock:
            self.cache_miss.add(ns)

    def enter(self) -> None:
        """A request arrived (pending until `record_request`)."""
        with self._lock:
            self.pending += 1

    def record_request(self, duration_ns: int, failure: FailureReason | None = None) -> None:
        us = duration_ns / 1000
        with self._lock:
            self.pending -= 1
            if failure is None:
                self.success.add(duration_ns)
                self.last_inference_ms = int(time.time() * 1000)
                self.latency_buckets[bisect_left(LATENCY_BUCKETS_US, us)] += 1
                self.latency_sum_us += us
            else:
                self.fail.add(duration_ns)
                self.failures[failure] += 1

    def to_json(self) -> dict[str, Any]:
        """Triton's ModelStatistics in its HTTP JSON form."""
        with self._lock:
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.to_json(),
                    "fail": self.fail.to_json(),
                    "queue": self.queue.to_json(),
                    "compute_input": self.compute_input.to_json(),
                    "compute_infer": self.compute_infer.to_json(),
                    "compute_output": self.compute_output.to_json(),
                    "cache_hit": self.cache_hit.to_json(),
                    "cache_miss": self.cache_miss.to_json(),
                },
                "response_stats": {},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": b.compute_input.to_json(),
                        "compute_infer": b.compute_infer.to_json(),
                        "compute_output": b.compute_output.to_json(),
                    }
                    for size, b in sorted(self.batches.items())
                ],
                "memory_usage": [],
            }
