"""The gateway: who is calling (a key → a tenant or the admin), what they may see and do, and their limits.

One `Gateway` per server, shared by the front doors (which authenticate every route before reading its body,
and refuse admin endpoints to tenants) and the pipeline stage `authenticate` (model grants, limits, audit). The
auth file is re-read when it changes and on SIGHUP; a broken file keeps the configuration in force and logs why.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..types import ErrorKind, InferError
from .audit_record import AuditRecord
from .config import KEY_CACHE_SIZE, AuthConfig, AuthConfigError, Principal, load_auth_config
from .limits import TenantLimits
from .metrics import TenantMetrics

if TYPE_CHECKING:
    from .audit import AuditLog  # SQLAlchemy: imported where an audit trail is made (cli.py)

__all__ = ["ADMIN_GROUPS", "TRUSTED_PROTOCOLS", "Gateway", "admin_only", "unknown_model", "unknown_version"]

log = logging.getLogger("inferd.auth")

# In-process callers (the SDK, a model's BLS call) are the server's own code: no key to present.
TRUSTED_PROTOCOLS = frozenset(("sdk", "bls", "graph", "shadow"))  # a graph calling its nodes; a shadow's copy
UNAUTHENTICATED = "unauthenticated"
# Triton's API groups (the names of --http-restricted-api) whose endpoints need an admin key. The repository
# index and statistics are not among them: they answer tenants with their own models only.
ADMIN_GROUPS = frozenset(("model-repository", "trace", "logging", "shared-memory"))
_BEARER = "bearer "


# Generated request ids: 32 hex characters like a uuid4's, a random prefix per process and a counter — unique, and
# far cheaper than uuid4 (a system call per request).
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):020x}"


def unknown_model(name: str) -> InferError:
    """The answer for a model that does not exist — also the answer for one a tenant is not granted, word for word,
    so a tenant cannot tell a hidden model from a missing one."""
    return InferError.not_found(f"Request for unknown model: '{name}' is not found")


def unknown_version(name: str, version: str) -> InferError:
    return InferError.not_found(f"Request for unknown model: '{name}' version {version} is not found")


def admin_only(what: str) -> InferError:
    return InferError(ErrorKind.PERMISSION_DENIED, f"{what} needs an admin key")


class Gateway:
    """`path`: the auth file; `audit`: where each call's record goes (None: no audit trail)."""

    def __init__(self, path: str | Path, *, audit: AuditLog | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self.config: AuthConfig = load_auth_config(self.path)  # raises AuthConfigError: the server does not start
        self._stamp = self._file_stamp()
        self.limits = TenantLimits(clock)
        self.metrics = TenantMetrics()
        self.audit = audit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # ---- who is calling ----

    def identify(self, header: Callable[[str], str | None]) -> Principal:
        """The principal of the key a request presents (`Authorization: Bearer KEY` or `X-API-Key: KEY`, as
        HTTP headers or gRPC metadata); UNAUTHENTICATED when there is none, or it is unknown or expired."""
        return self.identify_key(_presented_key(header))

    def identify_http(self, headers: Mapping[bytes, bytes]) -> Principal:
        """`identify` over HTTP headers as the server keeps them (lower-case byte names)."""
        value = headers.get(b"authorization")
        key = None
        if value is not None and value[:7].lower() == b"bearer ":
            key = value[7:].strip().decode("latin-1") or None
        if key is None:
            value = headers.get(b"x-api-key")
            key = None if value is None else value.strip().decode("latin-1") or None
        return self.identify_key(key)

    def identify_key(self, key: str | None) -> Principal:
        if key is None:
            raise self._unauthenticated("an API key is required: send 'Authorization: Bearer <key>' or "
                                        "'X-API-Key: <key>'")
        config = self.config
        found = config.known.get(key)
        if found is None:
            digest = hashlib.sha256(key.encode()).digest()
            found = config.by_digest.get(digest)
            # The table is keyed by the key's hash, so looking it up reveals nothing about stored keys; the final
            # comparison is constant-time all the same.
            if found is None or not hmac.compare_digest(found[1].digest, digest):
                raise self._unauthenticated("the API key is not valid")
            if len(config.known) < KEY_CACHE_SIZE:
                config.known[key] = found
        principal, api_key = found
        if api_key.expires is not None and self._clock() >= api_key.expires:
            raise self._unauthenticated(f"the API key {api_key.id} has expired")
        return principal

    def _unauthenticated(self, message: str) -> InferError:
        self.rejected("", UNAUTHENTICATED)
        return InferError(ErrorKind.UNAUTHENTICATED, message)

    def rejected(self, tenant: str, reason: str) -> None:
        self.metrics.rejected(tenant, reason)

    def refused(self, protocol: str, endpoint: str, model: str, error: InferError, request_id: bytes | str | None,
                client: str, *, tenant: str | None = None, version: str = "", latency_ms: float = 0.0) -> None:
        """The audit record of an inference call a front door refused before the pipeline: no valid key (`tenant`
        None), or a request it could not decode (`tenant`: who sent it; `latency_ms`: until it was refused)."""
        if tenant is not None:
            self.metrics.request(tenant, model, error.kind.http_status)
        if self.audit is None:
            return
        if isinstance(request_id, bytes):
            request_id = request_id.decode("latin-1")
        self.audit.record(AuditRecord(time=self._clock() - latency_ms / 1000, tenant=tenant, model=model,
                                      version=version, protocol=protocol, endpoint=endpoint,
                                      status=error.kind.http_status, latency_ms=latency_ms, bytes_in=0, bytes_out=0,
                                      request_id=request_id or new_request_id(), client=client))

    def is_open(self, path: str) -> bool:
        return path in self.config.open_paths

    # ---- what they may see ----

    @staticmethod
    def check_model(principal: Principal, name: str, version: str = "") -> None:
        """NOT_FOUND, in the words of a missing model, when `principal` is not granted `name` (or `version`)."""
        if principal.admin:
            return
        if not principal.sees(name):
            raise unknown_model(name)
        if version:
            versions = principal.versions_of(name)
            if versions is not None and version not in versions:
                raise unknown_version(name, version)

    def seed_quotas(self) -> None:
        """Daily quotas count the requests already made today, as the audit trail has them (a restart does not
        hand every tenant a fresh quota)."""
        if self.audit is None:
            return
        now = self._clock()
        used: dict[str, int] = {}
        for row in self.audit.usage(since=now - now % 86400, group_by="day"):
            if row["tenant"] is not None:
                used[row["tenant"]] = used.get(row["tenant"], 0) + int(row["requests"])
        self.limits.seed_quota(used)

    # ---- the file ----

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self) -> bool:
        """Read the file again; keep the configuration in force when it is broken (logged). True when changed."""
        with self._lock:
            self._stamp = self._file_stamp()
            try:
                config = load_auth_config(self.path)
            except AuthConfigError as exc:
                log.error("auth config not reloaded, the previous one stays in force: %s", exc)
                return False
            self.config = config
        log.info("auth config reloaded from %s: %d tenant(s)", self.path, len(config.tenants))
        return True

    def watch(self, interval: float = 1.0) -> None:
        """Re-read the file whenever it changes (checked every `interval` seconds, on a daemon thread)."""
        if self._watcher is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval):
                if self._file_stamp() != self._stamp:
                    self.reload()

        self._watcher = threading.Thread(target=run, name="inferd-auth-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop watching the file; flush and close the audit trail (every answered call is recorded)."""
        self._stop.set()
        if self.audit is not None:
            self.audit.close()


def _presented_key(header: Callable[[str], str | None]) -> str | None:
    value = header("authorization")
    if value is not None:
        value = value.strip()
        if value[:len(_BEARER)].lower() == _BEARER:
            return value[len(_BEARER):].strip() or None
    value = header("x-api-key")
    if value is not None:
        return value.strip() or None
    return None
