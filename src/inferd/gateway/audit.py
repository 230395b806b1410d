"""The audit trail's store: one row per inference call in a SQL database (sqlite or PostgreSQL, through
SQLAlchemy Core), written by one background thread so that recording a call costs the event loop a queue put.

The writer batches rows (an executemany insert every `flush_interval` seconds or `batch_size` rows); a failing
database never reaches the caller: a batch is retried with backoff, then dropped with an error log that counts it.
`usage()` answers the per-tenant, per-model totals that billing and `inferd tenants usage` need.
"""

from __future__ import annotations

import logging
import math
import operator
import queue
import threading
import time as _time
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from .audit_record import AuditRecord
from .audit_writer import WriterProcess, insert_mark, reason, write_batch

__all__ = ["TABLE_NAME", "AuditLog", "AuditRecord", "audit_table"]

log = logging.getLogger("inferd.audit")

TABLE_NAME = "inferd_audit"
PRUNE_INTERVAL = 3600.0  # seconds between two retention passes
RETRY_DELAYS = (0.2, 1.0, 3.0)  # backoff before each retry of a failed batch; then the batch is dropped
MAX_PENDING = 200_000  # records waiting for the writer; past that record() drops (bounded memory, db down)
_GROUPS = {"day": 86400, "hour": 3600}



_FIELDS = tuple(f.name for f in fields(AuditRecord))
_row_of = operator.attrgetter(*_FIELDS)  # a record as a tuple, in _FIELDS order


def audit_table(metadata: sa.MetaData) -> sa.Table:
    """The table in `metadata`; its indexes serve the time-range scans and the per-tenant usage queries."""
    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("time", sa.Double(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("protocol", sa.String(), nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("client", sa.String(), nullable=False),
        sa.Index(f"ix_{TABLE_NAME}_time", "time"),
        sa.Index(f"ix_{TABLE_NAME}_tenant_model_time", "tenant", "model", "time"),
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL: usage() reads while the writer writes; busy_timeout: wait for another process's lock instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _parse_url(url: str) -> URL:
    """The SQLAlchemy URL; postgresql:// goes to psycopg 3 (psycopg2 is not a dependency)."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        shown = repr(url) if "@" not in url else "(with credentials, not shown)"
        raise ValueError(
            f"audit database URL {shown} is not a URL (sqlite:///path or postgresql://user:pass@host/db)"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_engine(url: str) -> Engine:
    """An engine for the audit URL: a sqlite file (its folder created, WAL) or a server database."""
    parsed = _parse_url(url)
    shown = parsed.render_as_string(hide_password=True)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or (parsed.database or "").startswith("file:"):
            raise ValueError(f"audit database {shown}: sqlite needs a file path (sqlite:///path/to/audit.db)")
        path = Path(parsed.database or "").expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        parsed = parsed.set(database=str(path))
        kwargs["connect_args"] = {"check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True  # a server restarted since the last batch: reconnect instead of failing it
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as error:
        hint = " (pip install 'inferd[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
        raise ValueError(f"audit database {shown}: no driver for {parsed.drivername!r}{hint}: {error}") from None
    except (sa.exc.ArgumentError, TypeError) as error:
        raise ValueError(f"audit database {shown}: {error}") from None
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _nearest_rank(ordered: Sequence[float], percent: int) -> float:
    """The nearest-rank percentile of sorted values: the smallest value with at least `percent`% at or below it."""
    rank = max(1, -(-percent * len(ordered) // 100))
    return ordered[rank - 1]


def _period(bucket: int, group_by: str) -> str:
    start = datetime.fromtimestamp(bucket * _GROUPS[group_by], timezone.utc)
    return start.strftime("%Y-%m-%d") if group_by == "day" else start.strftime("%Y-%m-%dT%H:00Z")


class _Group:
    """The running totals of one (tenant, model, period)."""

    __slots__ = ("bytes_in", "bytes_out", "errors", "latencies")

    def __init__(self) -> None:
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.latencies: list[float] = []


_STOP = object()


class AuditLog:
    """The audit trail: `record()` from any thread (a queue put), one daemon thread writes to the database."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 512,
        flush_interval: float = 0.2,
        retention_days: float | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        max_pending: int = MAX_PENDING,
        writer_process: bool = True,
    ) -> None:
        if batch_size < 1 or flush_interval <= 0:
            raise ValueError("audit log: batch_size must be >= 1 and flush_interval > 0")
        if retention_days is not None and retention_days <= 0:
            raise ValueError("audit log: retention_days must be > 0 (or None: keep everything)")
        self._engine = create_engine(url)
        self.url = self._engine.url.render_as_string(hide_password=True)
        self._table = audit_table(sa.MetaData())
        self._mark = insert_mark(self._engine.dialect.paramstyle)
        self._create_table()
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retention = None if retention_days is None else retention_days * 86400.0
        self._retry_delays = tuple(retry_delays)
        self._max_pending = max_pending
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = threading.Event()
        # The writer sleeps a flush interval at a time and then drains the queue, rather than waking for each record
        # (a thread switch per inference call); flush and close wake it at once.
        self._wake = threading.Event()
        self._close_lock = threading.Lock()
        self._closed = False
        self._close_ok = True
        self._written = 0
        self._write_dropped = 0
        self._rejected = 0  # record() calls refused (queue full or closed); counted without a lock: a statistic
        self._rejected_logged = 0
        # The database writes run in a process of their own (audit_writer.py) unless `writer_process` is False or
        # no process can be started; then on the writer thread.
        self._process: WriterProcess | None = None
        if writer_process:
            try:
                self._process = WriterProcess(url, self._retry_delays)
            except OSError as exc:
                log.warning("audit: writing from the server's own process (%s)", exc)
        self._thread = threading.Thread(target=self._run, name="inferd-audit-writer", daemon=True)
        self._thread.start()

    def _create_table(self) -> None:
        """Create the table (and its indexes) if missing; a database that cannot be reached fails the start."""
        for attempt in range(2):
            try:
                self._table.metadata.create_all(self._engine, checkfirst=True)
                return
            except sa.exc.SQLAlchemyError as error:
                if attempt == 0:  # another process may have been creating it at the same moment
                    _time.sleep(0.2)
                    continue
                self._engine.dispose()
                reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
                raise ValueError(f"audit database {self.url}: cannot create table {TABLE_NAME}: {reason}") from None

    # -- the caller's side ------------------------------------------------------------------------------------------

    def record(self, record: AuditRecord) -> None:
        """Queue one record; never blocks, never raises (a full queue or a closed log drops it, counted)."""
        try:
            if self._closed or self._queue.qsize() >= self._max_pending:
                self._rejected += 1
                return
            self._queue.put(record)
        except Exception:  # the hot path of every inference call must not fail for its audit row
            self._rejected += 1

    @property
    def dropped(self) -> int:
        """Records lost so far: batches the database refused after every retry, and record() calls refused."""
        return self._write_dropped + self._rejected

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record queued before this call is written; False on timeout or if records were dropped."""
        if self._closed or not self._thread.is_alive():
            return self._close_ok and self._queue.empty()
        before = self.dropped
        done = threading.Event()
        self._queue.put(done)
        self._wake.set()
        return done.wait(timeout) and self.dropped == before

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the writer, release the database connections; a second call does nothing."""
        with self._close_lock:
            if self._closed:
                return
            deadline = _time.monotonic() + timeout
            self._close_ok = self.flush(timeout)
            self._closed = True
            self._stopping.set()
            self._queue.put(_STOP)
            self._wake.set()
            self._thread.join(max(0.1, deadline - _time.monotonic()))
            if self._thread.is_alive():
                log.error("audit: the writer did not stop within %.1f s (database %s)", timeout, self.url)
            if self._process is not None:
                self._process.close(max(0.1, deadline - _time.monotonic()))
            self._engine.dispose()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- queries ----------------------------------------------------------------------------------------------------

    def count(self) -> int:
        """Records stored (after a flush)."""
        self.flush()
        with self._engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(self._table)).scalar_one())

    def usage(
        self,
        *,
        tenant: str | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        group_by: str = "day",
    ) -> list[dict[str, Any]]:
        """Totals per (tenant, model, UTC day or hour): requests, errors (status >= 400), p50/p99 latency
        (nearest-rank), bytes. One scan in one statement (one consistent snapshot): the percentiles need every
        latency anyway, so the grouping happens here rather than in SQL."""
        if group_by not in _GROUPS:
            raise ValueError(f"group_by must be one of {sorted(_GROUPS)}, not {group_by!r}")
        self.flush()
        t = self._table
        query = sa.select(t.c.tenant, t.c.model, t.c.time, t.c.status, t.c.latency_ms, t.c.bytes_in, t.c.bytes_out)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        if model is not None:
            query = query.where(t.c.model == model)
        if since is not None:
            query = query.where(t.c.time >= since)
        if until is not None:
            query = query.where(t.c.time < until)
        seconds = _GROUPS[group_by]
        groups: dict[tuple[str | None, str, int], _Group] = {}
        with self._engine.connect() as connection:
            for row in connection.execution_options(yield_per=10_000).execute(query):
                key = (row.tenant, row.model, int(row.time // seconds))
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group()
                group.errors += row.status >= 400
                group.bytes_in += row.bytes_in
                group.bytes_out += row.bytes_out
                group.latencies.append(row.latency_ms)
        return [self._usage_row(key, groups[key], group_by) for key in sorted(groups, key=_usage_order)]

    @staticmethod
    def _usage_row(key: tuple[str | None, str, int], group: _Group, group_by: str) -> dict[str, Any]:
        group.latencies.sort()
        return {
            "tenant": key[0],
            "model": key[1],
            "period": _period(key[2], group_by),
            "requests": len(group.latencies),
            "errors": group.errors,
            "p50_ms": _nearest_rank(group.latencies, 50),
            "p99_ms": _nearest_rank(group.latencies, 99),
            "bytes_in": group.bytes_in,
            "bytes_out": group.bytes_out,
        }

    # -- the writer thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        """The writer: batches records until stopped; no error ends it (each is logged and the loop goes on)."""
        self._prune()
        next_prune = _time.monotonic() + PRUNE_INTERVAL
        pending: list[AuditRecord] = []
        due = math.inf  # when the oldest pending record must be written
        while True:
            try:
                now = _time.monotonic()
                wait = min(due, next_prune if self._retention is not None else math.inf) - now
                stop, flushes = self._take(pending, wait)
                now = _time.monotonic()
                if pending and due == math.inf:
                    due = now + self._flush_interval
                while pending and (stop or flushes or len(pending) >= self._batch_size or now >= due):
                    batch, pending[:] = pending[: self._batch_size], pending[self._batch_size :]
                    self._write(batch)
                    due = _time.monotonic() + self._flush_interval if pending else math.inf
                for done in flushes:
                    done.set()
                self._report_rejected()
                if self._retention is not None and now >= next_prune:
                    self._prune()
                    next_prune = now + PRUNE_INTERVAL
                if stop:
                    return
            except Exception:
                log.exception("audit: unexpected error in the writer thread (it goes on)")

    def _take(self, pending: list[AuditRecord], wait: float) -> tuple[bool, list[threading.Event]]:
        """Move queued records to `pending`: when none is queued, sleep up to a flush interval (or `wait` s, or
        until flush / close wake the writer), then take what is queued (up to a batch). Returns whether a stop
        came, and the flush requests met on the way."""
        flushes: list[threading.Event] = []
        if wait > 0 and self._queue.empty():
            self._wake.wait(min(wait, self._flush_interval))
        self._wake.clear()
        while len(pending) < self._batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return True, flushes
            if isinstance(item, threading.Event):
                flushes.append(item)
                break  # everything queued before it is in `pending`: write now
            pending.append(item)
        return False, flushes

    def _write(self, batch: list[AuditRecord]) -> None:
        """Insert a batch (see audit_writer.write_batch: retried with backoff, then dropped), in the writer process
        when there is one; log what the writing said."""
        # Plain tuples in multi-row INSERTs: SQLAlchemy's per-row processing would cost tens of microseconds a record.
        mark = self._mark
        rows: list[Any] = (list(map(_row_of, batch)) if mark is not None else
                           [{name: getattr(record, name) for name in _FIELDS} for record in batch])
        written = dropped = 0
        logs: list[tuple[int, str]] = []
        if self._process is not None:
            try:
                written, dropped, logs = self._process.write(rows)
            except (OSError, EOFError) as exc:  # the process died: write from here from now on
                log.error("audit: the writer process (pid %d) is gone, writing in-process: %s", self._process.pid,
                          exc)
                self._process = None
        if self._process is None:
            written, dropped, logs = write_batch(self._engine, self._table, mark, rows, self._retry_delays,
                                                 self._retry_wait)
        self._written += written
        self._write_dropped += dropped
        for level, message in logs:
            log.log(level, "%s%s", message, f" ({self._write_dropped} dropped in all)" if level >= logging.ERROR
                    else "")

    def _retry_wait(self, delay: float) -> None:
        if self._stopping.wait(delay):
            _time.sleep(min(delay, 0.05))  # closing: retry at once instead of holding close() up

    def _prune(self) -> None:
        """Delete the records older than the retention; a failure is logged and tried again next time."""
        if self._retention is None:
            return
        cutoff = _time.time() - self._retention
        try:
            with self._engine.begin() as connection:
                deleted = connection.execute(sa.delete(self._table).where(self._table.c.time < cutoff)).rowcount
            if deleted:
                log.info("audit: deleted %d records older than %.1f days", deleted, self._retention / 86400)
        except Exception as error:
            log.error("audit: deleting old records failed: %s", reason(error))

    def _report_rejected(self) -> None:
        rejected = self._rejected
        if rejected != self._rejected_logged:
            log.error("audit: %d records refused (the writer is %d records behind, or the log is closed)",
                      rejected - self._rejected_logged, self._queue.qsize())
            self._rejected_logged = rejected


def _usage_order(key: tuple[str | None, str, int]) -> tuple[int, bool, str, str]:
    """Period, then tenant (the unauthenticated rows first), then model."""
    return key[2], key[0] is not None, key[0] or "", key[1]


