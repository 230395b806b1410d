"""Per model-version counters in the shape of Triton's statistics extension.

Requests are counted on the hot path under one short lock (a few integer additions). Executions are only noted
there (one tuple appended, no lock) and added up column by column when the counters are read, or every
`_FOLD_AT` executions: a dozen Python additions per execution cost about 3 % of a fast model's request.
Prometheus metrics are computed from these counters when scraped, so a scrape never touches the request path.
"""

from __future__ import annotations

import enum
import threading
import time
from bisect import bisect_left
from collections import deque
from operator import mul
from typing import Any

# Request latency histogram bounds in microseconds (Prometheus buckets, upper bounds).
LATENCY_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
                      1_000_000, 2_500_000, 5_000_000)


# Executions noted before they are added up without a reader asking (bounds the memory of the notes).
_FOLD_AT = 1024


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


class _AddedUp:
    """A ModelStatistics counter fed by executions (kept in `_<name>`), read once the noted ones are added up."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._field = f"_{name}"

    def __get__(self, stats: ModelStatistics | None, owner: type) -> Any:
        if stats is None:
            return self
        stats._added_up()
        return getattr(stats, self._field)


class ModelStatistics:
    """Counters for one model version."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self._inference_count = 0
        self._execution_count = 0
        self.last_inference_ms = 0
        self.success = _Duration()
        self.fail = _Duration()
        self._queue = _Duration()
        self._compute_input = _Duration()
        self._compute_infer = _Duration()
        self._compute_output = _Duration()
        # (batch size, requests, input ns, infer ns, output ns, queue ns summed over the requests) per execution
        # not yet added up: appended by any thread (deque.append needs no lock), taken from the left under it.
        self._executions: deque[tuple[int, int, int, int, int, int]] = deque()
        # The response cache (caching/): lookups that found the answer, and those that did not (their lookup and
        # the insertion of the computed answer). `caching`: the model uses the cache (its metrics are shown).
        self.cache_hit = _Duration()
        self.cache_miss = _Duration()
        self.caching = False
        self.failures = dict.fromkeys(FailureReason, 0)
        self._batches: dict[int, _BatchStats] = {}
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.latency_sum_us = 0.0
        self.pending = 0

    def record_execution(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int,
                         queue_ns: int) -> None:
        """One batch of `requests` requests holding `batch_size` inferences; `queue_ns` summed over requests."""
        executions = self._executions
        executions.append((batch_size, requests, input_ns, infer_ns, output_ns, queue_ns))
        if len(executions) >= _FOLD_AT:
            with self._lock:
                self._fold()

    def _fold(self) -> None:
        """Add up the executions noted so far (under the lock; those appended meanwhile wait for the next fold).
        Column sums in C (`zip`, `sum`); a row-by-row loop only for batches of mixed sizes."""
        executions = self._executions
        count = len(executions)
        if not count:
            return
        popleft = executions.popleft
        rows = [popleft() for _ in range(count)]
        sizes, requests, input_ns, infer_ns, output_ns, queue_ns = zip(*rows, strict=True)
        served = sum(requests)
        self._execution_count += count
        self._inference_count += sum(sizes)
        self._queue.add(sum(queue_ns), served)
        if served == count:  # one request per execution: the per-request times are the execution's
            self._compute_input.add(sum(input_ns), served)
            self._compute_infer.add(sum(infer_ns), served)
            self._compute_output.add(sum(output_ns), served)
        else:  # each request of a batch counts the batch's time, as Triton counts it
            self._compute_input.add(sum(map(mul, input_ns, requests)), served)
            self._compute_infer.add(sum(map(mul, infer_ns, requests)), served)
            self._compute_output.add(sum(map(mul, output_ns, requests)), served)
        batches = self._batches
        if min(sizes) == max(sizes):
            groups = {sizes[0]: (count, sum(input_ns), sum(infer_ns), sum(output_ns))}
        else:
            sums: dict[int, list[int]] = {}
            for size, _, spent_input, spent_infer, spent_output, _ in rows:
                total = sums.get(size)
                if total is None:
                    total = sums[size] = [0, 0, 0, 0]
                total[0] += 1
                total[1] += spent_input
                total[2] += spent_infer
                total[3] += spent_output
            groups = {size: (total[0], total[1], total[2], total[3]) for size, total in sums.items()}
        for size, (executed, spent_input, spent_infer, spent_output) in groups.items():
            stats = batches.get(size)
            if stats is None:
                stats = batches[size] = _BatchStats()
            stats.compute_input.add(spent_input, executed)
            stats.compute_infer.add(spent_infer, executed)
            stats.compute_output.add(spent_output, executed)

    def _added_up(self) -> None:
        with self._lock:
            self._fold()

    # What readers see of the executions: every one noted so far, added up first.
    inference_count = _AddedUp()
    execution_count = _AddedUp()
    queue = _AddedUp()
    compute_input = _AddedUp()
    compute_infer = _AddedUp()
    compute_output = _AddedUp()
    batches = _AddedUp()

    def record_cache_hit(self, ns: int) -> None:
        """A request answered from the response cache (`ns`: lookup and copy-out). As in Triton, it counts in the
        queue count (with no time) but in no execution, inference or compute count."""
        with self._lock:
            self.cache_hit.add(ns)
            self._queue.add(0)

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
            self._fold()
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self._inference_count,
                "execution_count": self._execution_count,
                "inference_stats": {
                    "success": self.success.to_json(),
                    "fail": self.fail.to_json(),
                    "queue": self._queue.to_json(),
                    "compute_input": self._compute_input.to_json(),
                    "compute_infer": self._compute_infer.to_json(),
                    "compute_output": self._compute_output.to_json(),
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
                    for size, b in sorted(self._batches.items())
                ],
                "memory_usage": [],
            }
