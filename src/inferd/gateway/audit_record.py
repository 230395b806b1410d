"""The audit trail's record of one inference call, apart from the store (audit.py), so that the gateway stages and
the front doors that make records do not import SQLAlchemy until an audit trail is configured."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class AuditRecord:
    """One inference call as the audit trail keeps it."""

    time: float  # Unix seconds (UTC) when the call arrived
    tenant: str | None  # None: not authenticated (unknown / missing key)
    model: str
    version: str  # "" when not resolved
    protocol: str  # "v2-http" | "v2-grpc" | "v1" | "torchserve" | "seldon"
    endpoint: str  # the route pattern or the gRPC method name
    status: int  # HTTP status of the answer (gRPC answers mapped to the HTTP equivalent)
    latency_ms: float
    bytes_in: int
    bytes_out: int
    request_id: str
    client: str  # client address "ip:port" or ""
