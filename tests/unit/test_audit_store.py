"""The audit trail's store on sqlite: every field round-trips, usage() totals and percentiles, nothing lost when
threads record while it closes, retention, and a failing database that never reaches the caller."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from calendar import timegm
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit_rows import stored
from inferd.gateway.audit import TABLE_NAME, AuditLog, AuditRecord, create_engine

DAY = 86400.0
T0 = float(timegm((2026, 12, 7, 13, 0, 0)))  # 2026-12-07T13:00Z


def record(i: int = 0, **changes: object) -> AuditRecord:
    base = AuditRecord(
        time=T0 + i, tenant="acme", model="resnet", version="1", protocol="v2-http",
        endpoint="/v2/models/{model_name}/infer", status=200, latency_ms=1.5, bytes_in=100, bytes_out=40,
        request_id=f"req-{i}", client="127.0.0.1:50000",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/audit/trail.db"  # the folder does not exist yet: AuditLog creates it


def test_every_field_round_trips(url: str) -> None:
    records = [
        record(i, tenant=None if i % 7 == 0 else f"tenant-{i % 3}", model=f"model-é{i % 2}", version=str(i % 4 or ""),
               protocol=("v2-http", "v2-grpc", "v1", "torchserve", "seldon")[i % 5], status=(200, 401, 429, 500)[i % 4],
               latency_ms=i / 7, bytes_in=i * 1_000_003, bytes_out=2**40 + i, time=T0 + i / 3, client="")
        for i in range(300)
    ]
    with AuditLog(url) as log:
        for item in records:
            log.record(item)
        assert log.count() == 300
    assert stored(url) == records


def test_usage_groups_by_day_and_hour(url: str) -> None:
    with AuditLog(url) as log:
        for item in (
            record(5 * 60, latency_ms=10, bytes_in=1, bytes_out=2),  # 13:05
            record(55 * 60, latency_ms=30, status=500, bytes_in=3, bytes_out=4),  # 13:55
            record(70 * 60, latency_ms=20, status=404, bytes_in=5, bytes_out=6),  # 14:10
            record(int(DAY) - 13 * 3600 + 1800, latency_ms=7),  # the next day, 00:30
            record(60, tenant="beta", latency_ms=1),
            record(120, tenant=None, status=401, latency_ms=0.5),
            record(180, model="bert", latency_ms=2),
        ):
            log.record(item)
        days = log.usage()
        hours = log.usage(group_by="hour")
    summary = [(row["period"], row["tenant"], row["model"], row["requests"], row["errors"]) for row in days]
    assert summary == [
        ("2026-12-07", None, "resnet", 1, 1),
        ("2026-12-07", "acme", "bert", 1, 0),
        ("2026-12-07", "acme", "resnet", 3, 2),
        ("2026-12-07", "beta", "resnet", 1, 0),
        ("2026-12-08", "acme", "resnet", 1, 0),
    ]
    acme = days[2]
    assert (acme["p50_ms"], acme["p99_ms"], acme["bytes_in"], acme["bytes_out"]) == (20, 30, 9, 12)
    by_hour = [(row["period"], row["tenant"], row["model"], row["requests"]) for row in hours]
    assert by_hour == [
        ("2026-12-07T13:00Z", None, "resnet", 1),
        ("2026-12-07T13:00Z", "acme", "bert", 1),
        ("2026-12-07T13:00Z", "acme", "resnet", 2),
        ("2026-12-07T13:00Z", "beta", "resnet", 1),
        ("2026-12-07T14:00Z", "acme", "resnet", 1),
        ("2026-12-08T00:00Z", "acme", "resnet", 1),
    ]
    assert sum(row["requests"] for row in hours) == sum(row["requests"] for row in days) == 7


def test_usage_filters(url: str) -> None:
    with AuditLog(url) as log:
        for i in range(10):
            log.record(record(i * 60, tenant=("acme", "beta")[i % 2], model=("resnet", "bert")[i // 5]))
        assert sum(row["requests"] for row in log.usage(tenant="acme")) == 5
        assert {row["tenant"] for row in log.usage(tenant="beta")} == {"beta"}
        assert sum(row["requests"] for row in log.usage(model="bert")) == 5
        assert sum(row["requests"] for row in log.usage(tenant="acme", model="bert")) == 2  # i = 6, 8
        # since inclusive, until exclusive: i = 2, 3, 4
        assert sum(row["requests"] for row in log.usage(since=T0 + 120, until=T0 + 300)) == 3
        assert log.usage(since=T0 + 600) == []
        assert log.usage(tenant="nobody") == []
        with pytest.raises(ValueError, match="group_by"):
            log.usage(group_by="week")


def test_percentiles_are_nearest_rank(url: str) -> None:
    latencies = list(range(1, 101))
    random.Random(7).shuffle(latencies)
    with AuditLog(url, batch_size=16) as log:
        for i, latency in enumerate(latencies):
            log.record(record(i, latency_ms=float(latency), status=500 if latency > 90 else 200, bytes_in=latency))
        for i, latency in enumerate([3.0, 1.0, 4.0, 1.5, 9.0, 2.0, 6.0]):  # sorted: 1 1.5 2 3 4 6 9
            log.record(record(i, model="seven", latency_ms=latency))
        log.record(record(0, model="one", latency_ms=42.0))
        rows = {row["model"]: row for row in log.usage()}
    assert (rows["resnet"]["p50_ms"], rows["resnet"]["p99_ms"]) == (50.0, 99.0)
    assert (rows["resnet"]["requests"], rows["resnet"]["errors"], rows["resnet"]["bytes_in"]) == (100, 10, 5050)
    assert (rows["seven"]["p50_ms"], rows["seven"]["p99_ms"]) == (3.0, 9.0)  # ranks ceil(3.5) = 4 and ceil(6.93) = 7
    assert (rows["one"]["p50_ms"], rows["one"]["p99_ms"]) == (42.0, 42.0)


def test_close_writes_everything_recorded_from_threads(url: str) -> None:
    log = AuditLog(url, batch_size=256, flush_interval=0.05)
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
    log.close()  # idempotent
    log.record(record())  # after close: dropped, not raised
    assert log.dropped == 1
    rows = stored(url)
    assert len(rows) == 10_000
    expected = {(f"t{n}", f"req-{i}") for n in range(4) for i in range(2500)}
    assert {(row.tenant, row.request_id) for row in rows} == expected


def test_records_reach_the_database_within_the_flush_interval(url: str) -> None:
    with AuditLog(url, flush_interval=0.05) as log:
        for i in range(3):
            log.record(record(i))
        deadline = time.monotonic() + 5
        while len(stored(url)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(stored(url)) == 3  # without a flush() or close()


def test_retention_deletes_old_records(url: str) -> None:
    now = time.time()
    with AuditLog(url) as log:
        for age_days in (40, 31, 29, 1, 0):
            log.record(record(time=now - age_days * DAY, request_id=f"{age_days}d"))
    with AuditLog(url, retention_days=30) as log:
        assert log.count() == 3
    assert [row.request_id for row in stored(url)] == ["29d", "1d", "0d"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not a url", "is not a URL"),
        ("nosuchdb://host/db", "no driver"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///:memory:", "needs a file path"),
        ("postgresql://inferd:s3cret@127.0.0.1:1/audit", "cannot create table"),  # nothing listens on port 1
    ],
)
def test_a_bad_url_fails_at_construction(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as failure:
        AuditLog(bad)
    assert "s3cret" not in str(failure.value)


def test_a_dropped_table_comes_back(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="inferd.audit")
    with AuditLog(url, retry_delays=(0.01, 0.01, 0.01)) as log:
        log.record(record(1))
        assert log.flush()
        engine = create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {TABLE_NAME}"))
        engine.dispose()
        log.record(record(2))  # does not raise
        assert log.flush()
        assert log.count() == 1
    assert "retry" in caplog.text


def test_a_failing_database_drops_the_batch_logs_it_and_the_writer_goes_on(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="inferd.audit")
    with AuditLog(url, retry_delays=(0.01, 0.02)) as log:
        engine = create_engine(url)
        with engine.begin() as connection:  # a table of the same name that no insert fits
            connection.execute(sa.text(f"DROP TABLE {TABLE_NAME}"))
            connection.execute(sa.text(f"CREATE TABLE {TABLE_NAME} (other INTEGER NOT NULL)"))
        for i in range(5):
            log.record(record(i))  # does not raise
        assert not log.flush()
        assert log.dropped == 5
        assert "dropped 5 records after 3 attempts" in caplog.text
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {TABLE_NAME}"))
        engine.dispose()
        log.record(record(9))  # the writer thread is alive: the next retry recreates the table
        assert log.flush()
        assert log.count() == 1
