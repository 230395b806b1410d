"""A real PostgreSQL for the tests that need one (the audit trail): `.ci/run` starts it (`.ci/postgres.sh start`)
and exports INFERD_TEST_POSTGRES_URL. Elsewhere those tests skip, unless INFERD_REQUIRE_POSTGRES is set (CI),
where a missing or unreachable server fails them instead of hiding them.

Each test gets its own schema (the URL sets its search_path), dropped afterwards: no state leaks between tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import sqlalchemy as sa

URL_VARIABLE = "INFERD_TEST_POSTGRES_URL"
REQUIRE_VARIABLE = "INFERD_REQUIRE_POSTGRES"


def server_url() -> str:
    """The test server's URL; skips (or fails, where PostgreSQL is required) when there is none."""
    url = os.environ.get(URL_VARIABLE, "").strip()
    if not url:
        if os.environ.get(REQUIRE_VARIABLE):
            pytest.fail(f"{URL_VARIABLE} is not set but {REQUIRE_VARIABLE} is: PostgreSQL did not start")
        pytest.skip(f"{URL_VARIABLE} is not set (.ci/run starts PostgreSQL)")
    return url


def _engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return sa.create_engine(parsed, connect_args={"connect_timeout": 10})


def with_search_path(url: str, schema: str) -> str:
    """`url` whose connections use `schema` first (libpq's `options`)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL to the test database whose search_path is a new empty schema, dropped (with its tables) afterwards."""
    url = server_url()
    schema = f"test_{uuid.uuid4().hex[:12]}"
    engine = _engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as error:
        engine.dispose()
        pytest.fail(f"PostgreSQL at {sa.make_url(url).render_as_string(hide_password=True)} is not reachable: {error}")
    try:
        yield with_search_path(url, schema)
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()
