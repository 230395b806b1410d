"""The audit trail's database writes, in a process of their own.

Why a process: the writes are CPU work in Python and in the driver (building statements, binding parameters,
committing), and on the server's own interpreter every bit of it holds the GIL the event loop needs — with
sqlite, measured at about a tenth of the mlp throughput at c = 8. The writer thread of `AuditLog` hands each
batch (plain tuples, one pickle per batch) to this process and waits for its answer; the process has its own GIL.

The child is a fresh interpreter started with `subprocess` (the server is threaded: never forked), given the
parent's `sys.path`; it ends when its pipe reads end-of-file — the log closed, or the server gone.
`write_batch` is also what the writer thread runs itself where no process can be started.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

__all__ = ["ROWS_PER_STATEMENT", "WriterProcess", "insert_mark", "reason", "write_batch"]

# Records per INSERT statement: 12 parameters each stays under sqlite's and PostgreSQL's parameter limits.
ROWS_PER_STATEMENT = 256
# What a batch's writing said, for the parent to log under its own logger: (level, message).
Logs = list[tuple[int, str]]

_BOOTSTRAP = ("import sys; sys.path[:0] = sys.argv[2:]; "
              "from inferd.gateway.audit_writer import serve; serve(int(sys.argv[1]))")
_START_TIMEOUT_S = 60.0


def insert_mark(paramstyle: str) -> str | None:
    """The driver's positional parameter mark (sqlite3: qmark; psycopg takes %s in its pyformat style too); None
    for a driver that only names them (then SQLAlchemy builds the rows from dicts)."""
    return {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(paramstyle)


@functools.lru_cache(maxsize=8)
def _insert_sql(table: str, columns: tuple[str, ...], mark: str, rows: int) -> str:
    """One INSERT of `rows` records: the driver steps once per statement, not once per row."""
    group = "(" + ", ".join([mark] * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join([group] * rows)


def reason(error: BaseException) -> str:
    """The first line of the driver's message (SQLAlchemy appends the statement and every parameter)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _insert(engine: Engine, table: sa.Table, mark: str | None, rows: list[Any]) -> None:
    columns = tuple(c.name for c in table.columns if c.name != "id")
    with engine.begin() as connection:
        if mark is None:
            connection.execute(table.insert(), rows)
            return
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start:start + ROWS_PER_STATEMENT]
            connection.exec_driver_sql(_insert_sql(table.name, columns, mark, len(chunk)),
                                       tuple(itertools.chain.from_iterable(chunk)))


def write_batch(engine: Engine, table: sa.Table, mark: str | None, rows: list[Any], retry_delays: Sequence[float],
                wait: Callable[[float], None] = time.sleep) -> tuple[int, int, Logs]:
    """Insert `rows` (tuples in column order, or dicts where `mark` is None); on a database error retry after each
    of `retry_delays` (a dropped table is created again), then drop them. (written, dropped, what to log)."""
    logs: Logs = []
    for attempt in range(len(retry_delays) + 1):
        try:
            if attempt:
                table.metadata.create_all(engine, checkfirst=True)
            _insert(engine, table, mark, rows)
            if attempt:
                logs.append((logging.WARNING, f"audit: {len(rows)} records written after {attempt} retries"))
            return len(rows), 0, logs
        except Exception as error:
            if attempt == len(retry_delays):
                logs.append((logging.ERROR, f"audit: dropped {len(rows)} records after {attempt + 1} attempts: "
                                            f"{reason(error)}"))
                return 0, len(rows), logs
            delay = retry_delays[attempt]
            logs.append((logging.WARNING, f"audit: writing {len(rows)} records failed, retry in {delay:.1f} s: "
                                          f"{reason(error)}"))
            wait(delay)
    return 0, len(rows), logs  # not reached: the loop returns


class WriterProcess:
    """The child that writes: `write(rows)` sends a batch and returns (written, dropped, logs)."""

    def __init__(self, url: str, retry_delays: Sequence[float]) -> None:
        parent, child = multiprocessing.Pipe(duplex=True)
        try:
            self._popen = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, str(child.fileno()), *sys.path],
                                           stdin=subprocess.DEVNULL, pass_fds=(child.fileno(),))
        finally:
            child.close()  # the child holds the only other end: its exit reads as end-of-file here
        self._conn = parent
        try:
            parent.send((url, tuple(retry_delays)))
            if not parent.poll(_START_TIMEOUT_S):
                raise OSError("the audit writer process did not start")
            status, message = parent.recv()
        except (OSError, EOFError) as exc:
            self.close(1.0)
            raise OSError(f"the audit writer process failed to start: {exc}") from None
        if status != "ready":
            self.close(1.0)
            raise OSError(f"the audit writer process failed to start: {message}")

    @property
    def pid(self) -> int:
        return self._popen.pid

    def write(self, rows: list[Any]) -> tuple[int, int, Logs]:
        """Raises OSError / EOFError when the process is gone."""
        self._conn.send(rows)
        written, dropped, logs = self._conn.recv()
        return int(written), int(dropped), list(logs)

    def close(self, timeout: float) -> None:
        self._conn.close()
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()


def serve(fd: int) -> None:
    """The child's main: open the database, then write each batch it is sent until end-of-file."""
    from .audit import audit_table, create_engine

    conn = multiprocessing.connection.Connection(fd)
    url, retry_delays = conn.recv()
    try:
        engine = create_engine(url)
        table = audit_table(sa.MetaData())
        mark = insert_mark(engine.dialect.paramstyle)
    except Exception as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", ""))
    try:
        while True:
            try:
                rows = conn.recv()
            except (EOFError, OSError):
                return
            conn.send(write_batch(engine, table, mark, rows, retry_delays))
    finally:
        engine.dispose()
