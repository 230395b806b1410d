"""`GET /v2/usage`: the audit trail's totals per tenant, model and day or hour — an admin asks about anyone, a
tenant about itself only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..types import ErrorKind, InferError
from .config import Principal
from .gate import Gateway, admin_only

__all__ = ["usage_rows"]

_KNOWN = frozenset(("tenant", "model", "since", "until", "group_by"))


def usage_rows(gateway: Gateway | None, principal: Principal | None, query: Mapping[str, str]) -> list[dict[str, Any]]:
    """The rows for a request's query (`tenant`, `model`, `since`, `until` in ISO 8601, `group_by`)."""
    if gateway is None or gateway.audit is None:
        raise InferError(ErrorKind.UNSUPPORTED, "usage needs the audit trail: start the server with --auth-config")
    unknown = set(query) - _KNOWN
    if unknown:
        raise InferError.invalid(f"unknown usage parameter(s) {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(sorted(_KNOWN))})")
    tenant = query.get("tenant") or None
    if principal is not None and not principal.admin:
        if tenant is not None and tenant != principal.name:
            raise admin_only("the usage of another tenant")
        tenant = principal.name
    group_by = query.get("group_by", "day")
    if group_by not in ("day", "hour"):
        raise InferError.invalid(f"group_by must be 'day' or 'hour', got '{group_by}'")
    return gateway.audit.usage(tenant=tenant, model=query.get("model") or None, since=_time(query, "since"),
                               until=_time(query, "until"), group_by=group_by)


def _time(query: Mapping[str, str], name: str) -> float | None:
    value = query.get(name)
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InferError.invalid(f"'{name}' must be an ISO 8601 time, got '{value}'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()
