"""The HTTP server's limits: stated defaults, and a connection cap derived from the open-files limit."""

from __future__ import annotations

import resource

import pytest

from inferd.frontends.http.server import HttpLimits, default_max_connections


def test_defaults() -> None:
    limits = HttpLimits()
    assert (limits.header_timeout, limits.body_timeout, limits.keep_alive_timeout) == (30.0, 60.0, 75.0)
    assert (limits.max_url_bytes, limits.max_header_bytes, limits.max_headers) == (8192, 16384, 100)
    assert (limits.max_pipelined, limits.max_pipelined_bytes) == (16, 4 * 1024 * 1024)


@pytest.mark.parametrize(("soft", "expected"), [(1024, 512), (20_000, 10_000), (10, 16)])
def test_connection_cap_follows_the_open_files_limit(monkeypatch: pytest.MonkeyPatch, soft: int,
                                                     expected: int) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))
    assert default_max_connections() == expected
