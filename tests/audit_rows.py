"""The audit table's rows as they are in the database, read with SQLAlchemy — not through the server or AuditLog,
so the tests check what was really written."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from inferd.gateway.audit import AuditRecord, audit_table, create_engine


def stored(url: str) -> list[AuditRecord]:
    """Every row of the audit table at `url`, in the order written."""
    engine = create_engine(url)
    table = audit_table(sa.MetaData())
    names = [f.name for f in dataclasses.fields(AuditRecord)]
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(*(table.c[n] for n in names)).order_by(table.c.id)).all()
    finally:
        engine.dispose()
    return [AuditRecord(*row) for row in rows]
