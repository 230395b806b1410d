"""Per-tenant Prometheus counters: `inferd_tenant_requests_total{tenant,model,status}` (every authenticated
call, by the HTTP status of its answer) and `inferd_tenant_rejected_total{tenant,reason}` (refusals:
unauthenticated — tenant "" —, rate_limit, in_flight, daily_quota). Counted in plain dictionaries on the request
path and turned into samples only when scraped."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = ["TenantMetrics"]


class TenantMetrics(Collector):
    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        self._rejected: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def request(self, tenant: str, model: str, status: int) -> None:
        key = (tenant, model, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1

    def rejected(self, tenant: str, reason: str) -> None:
        key = (tenant, reason)
        with self._lock:
            self._rejected[key] = self._rejected.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = list(self._requests.items())
            rejected = list(self._rejected.items())
        metric = Metric("inferd_tenant_requests", "Inference requests by tenant, model and HTTP status", "counter")
        for (tenant, model, status), count in requests:
            metric.add_sample("inferd_tenant_requests_total", {"tenant": tenant, "model": model,
                                                               "status": str(status)}, float(count))
        yield metric
        refused = Metric("inferd_tenant_rejected", "Requests refused by authentication or a tenant's limits",
                         "counter")
        for (tenant, reason), count in rejected:
            refused.add_sample("inferd_tenant_rejected_total", {"tenant": tenant, "reason": reason}, float(count))
        yield refused
