"""The audit trail's store on a real PostgreSQL (psycopg 3): every field round-trips, usage() totals equal the
records, close() writes everything recorded from several threads. Each test has its own schema (tests/postgres.py)."""

from __future__ import annotations

import dataclasses
import threading
from calendar import timegm

from audit_rows import stored
from inferd.gateway.audit import AuditLog, AuditRecord
from postgres import postgres_url  # noqa: F401 - the fixture

T0 = float(timegm((2026, 12, 7, 13, 0, 0)))  # 2026-12-07T13:00Z


def record(i: int, **changes: object) -> AuditRecord:
    base = AuditRecord(
        time=T0 + i * 61.25, tenant=("acme", "beta", None)[i % 3], model=("resnet", "bert")[i % 2],
        version=str(i % 3 or ""), protocol=("v2-http", "v2-grpc", "v1", "torchserve", "seldon")[i % 5],
        endpoint="ModelInfer" if i % 5 == 1 else "/v2/models/{model_name}/infer",
        status=(200, 200, 404, 429, 500)[i % 5],
        latency_ms=i / 3, bytes_in=i * 1_000_003, bytes_out=2**40 + i, request_id=f"req-{i}-é",
        client=f"10.0.0.{i % 250}:{40000 + i}",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_every_field_round_trips_and_usage_totals_match(postgres_url: str) -> None:  # noqa: F811
    records = [record(i) for i in range(500)]
    with AuditLog(postgres_url, batch_size=64) as log:
        for item in records:
            log.record(item)
        assert log.count() == 500
        for group_by in ("day", "hour"):
            rows = log.usage(group_by=group_by)
            assert sum(row["requests"] for row in rows) == 500
            assert sum(row["errors"] for row in rows) == sum(item.status >= 400 for item in records)
            assert sum(row["bytes_in"] for row in rows) == sum(item.bytes_in for item in records)
            assert sum(row["bytes_out"] for row in rows) == sum(item.bytes_out for item in records)
        acme = log.usage(tenant="acme", model="resnet", until=T0 + 3600)
        expected = sum(item.tenant == "acme" and item.model == "resnet" and item.time < T0 + 3600 for item in records)
        assert [(row["period"], row["requests"]) for row in acme] == [("2026-12-07", expected)]
        assert {row["tenant"] for row in log.usage()} == {"acme", "beta", None}
    assert stored(postgres_url) == records


def test_close_writes_everything_recorded_from_threads(postgres_url: str) -> None:  # noqa: F811
    log = AuditLog(postgres_url, batch_size=512, flush_interval=0.05)
    start = threading.Barrier(4)

    def work(n: int) -> None:
        start.wait()
        for i in range(2500):
            log.record(record(i, tenant=f"t{n}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    rows = stored(postgres_url)
    assert len(rows) == 10_000
    expected = {(f"t{n}", f"req-{i}-é") for n in range(4) for i in range(2500)}
    assert {(row.tenant, row.request_id) for row in rows} == expected
    with AuditLog(postgres_url) as reopened:  # the table exists: created only when missing
        assert reopened.count() == 10_000
