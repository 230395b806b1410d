"""Seldon custom metrics (a class's `metrics()`, a SeldonResponse's runtime metrics) exported to Prometheus.

As Seldon Core 1.x's Python wrapper exports them: a `COUNTER` adds its value to the key's total (exposed as
`<key>_total`), a `GAUGE` sets the key to its value, a `TIMER` is a duration in milliseconds observed into a
histogram `<key>` whose buckets and sum are in seconds (Seldon divides by 1000; its 50 buckets are spaced
logarithmically from 1 ms to 30 s, kept here so Seldon dashboards read the same). The metric's `tags` become
labels, next to `model_name`, `method` (predict, transform_input, ..., health_status) and `worker_id` (the pid, as
Seldon's). Seldon's deployment / predictor / image labels come from Kubernetes and are left out.

User code must not be able to fail a request or a scrape through a metric: an entry that is not a valid metric
(unknown type, a value that is not a number, a key or tag that is not a Prometheus name, a key already used with
another type) is logged once and skipped.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["METRIC_TYPES", "TIMER_BUCKETS_S", "CustomMetrics", "valid_metrics"]

log = logging.getLogger("inferd.seldon")

METRIC_TYPES = ("COUNTER", "GAUGE", "TIMER")
# Seldon's bins: numpy.logspace(-3, log10(30), 50), i.e. 1 ms .. 30 s, then +Inf.
TIMER_BUCKETS_S: tuple[float, ...] = tuple(0.001 * 30000.0 ** (i / 49) for i in range(50))
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_RESERVED_PREFIXES = ("nv_", "inferd_", "process_", "python_")  # inferd's own families on the same endpoint
_LOGGED: set[str] = set()
_LOGGED_MAX = 1000
_LOGGED_LOCK = threading.Lock()


def _log_once(message: str) -> None:
    with _LOGGED_LOCK:
        if message in _LOGGED or len(_LOGGED) >= _LOGGED_MAX:
            return
        _LOGGED.add(message)
    log.warning("%s (logged once; the metric is skipped)", message)


def _problem(metric: Any) -> str | None:
    """Why `metric` is not a Seldon metric Prometheus can take, or None when it is one."""
    if not isinstance(metric, dict):
        return f"a metric must be a dict, got {type(metric).__name__}"
    kind, key, value, tags = metric.get("type", "COUNTER"), metric.get("key"), metric.get("value"), metric.get("tags")
    if kind not in METRIC_TYPES:
        return f"metric {key!r} has unknown type {kind!r} (valid are COUNTER, GAUGE, TIMER)"
    if not isinstance(key, str) or not _NAME.match(key):
        return f"metric key {key!r} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
    if key.startswith(_RESERVED_PREFIXES):
        return f"metric key {key!r} uses a prefix reserved for inferd's own metrics {_RESERVED_PREFIXES}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"metric {key!r} has value {value!r}, which is not a finite number"
    if tags is not None:
        if not isinstance(tags, dict):
            return f"metric {key!r} has tags {tags!r}, which is not a dict"
        bad = [t for t in tags if not isinstance(t, str) or not _LABEL.match(t) or t.startswith("__")]
        if bad:
            return f"metric {key!r} has tag names {bad!r} that are not Prometheus label names"
    return None


def valid_metrics(metrics: Any) -> list[dict[str, Any]]:
    """The entries of `metrics` that are valid Seldon metrics; anything else is logged once and dropped."""
    if metrics is None:
        return []
    if not isinstance(metrics, (list, tuple)):
        _log_once(f"metrics must be a list of metric dicts, got {type(metrics).__name__}")
        return []
    found = []
    for metric in metrics:
        problem = _problem(metric)
        if problem is None:
            found.append(metric)
        else:
            _log_once(f"bad Seldon metric: {problem}")
    return found


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(TIMER_BUCKETS_S) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def copy(self) -> _Histogram:
        copied = _Histogram()
        copied.buckets, copied.count, copied.sum = list(self.buckets), self.count, self.sum
        return copied

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(TIMER_BUCKETS_S, seconds)] += 1  # le: a value on a bound is inside it
        self.count += 1
        self.sum += seconds


class CustomMetrics(Collector):
    """The custom metrics recorded so far, yielded as Prometheus families when scraped."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.labels = dict(labels or {})  # added to every sample; they win over a metric's own tags, as in Seldon
        self._lock = threading.Lock()
        self._types: dict[str, str] = {}
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float | _Histogram]] = {}

    def record(self, metrics: Any, method: str) -> list[dict[str, Any]]:
        """Apply the valid metrics of `metrics` (see `valid_metrics`); returns those valid ones."""
        valid = valid_metrics(metrics)
        with self._lock:
            for metric in valid:
                kind, key = metric.get("type", "COUNTER"), metric["key"]
                known = self._types.setdefault(key, kind)
                if known != kind:
                    _log_once(f"bad Seldon metric: key {key!r} is a {known} already, not a {kind}")
                    continue
                tags = {str(k): str(v) for k, v in (metric.get("tags") or {}).items()}
                labels = tuple(sorted({**tags, "method": method, **self.labels}.items()))
                series = self._values.setdefault(key, {})
                value = float(metric["value"])
                current = series.get(labels)
                if kind == "GAUGE":
                    series[labels] = value
                elif kind == "COUNTER":
                    series[labels] = (current if isinstance(current, float) else 0.0) + value
                else:
                    histogram = current if isinstance(current, _Histogram) else _Histogram()
                    histogram.observe(value / 1000.0)
                    series[labels] = histogram
        return valid

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # copy under the lock, build the families outside it
            snapshot = [(key, self._types[key],
                         [(dict(labels), value.copy() if isinstance(value, _Histogram) else value)
                          for labels, value in series.items()])
                        for key, series in self._values.items()]
        for key, kind, series in snapshot:
            if kind == "COUNTER":
                name = key[:-6] if key.endswith("_total") else key
                metric = Metric(name, f"Seldon custom counter {key}", "counter")
                for labels, value in series:
                    if isinstance(value, float):
                        metric.add_sample(name + "_total", labels, value)
            elif kind == "GAUGE":
                metric = Metric(key, f"Seldon custom gauge {key}", "gauge")
                for labels, value in series:
                    if isinstance(value, float):
                        metric.add_sample(key, labels, value)
            else:
                metric = Metric(key, f"Seldon custom timer {key} in seconds (observed in milliseconds)", "histogram")
                for labels, value in series:
                    if not isinstance(value, _Histogram):
                        continue
                    cumulative = 0
                    for bound, n in zip(TIMER_BUCKETS_S, value.buckets, strict=False):
                        cumulative += n
                        metric.add_sample(key + "_bucket", {**labels, "le": floatToGoString(bound)}, float(cumulative))
                    metric.add_sample(key + "_bucket", {**labels, "le": "+Inf"}, float(value.count))
                    metric.add_sample(key + "_count", labels, float(value.count))
                    metric.add_sample(key + "_sum", labels, value.sum)
            yield metric
