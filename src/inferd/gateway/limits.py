"""Per-tenant limits: a token bucket for the request rate, a count of requests in flight, and a daily quota
(requests per UTC day). State is kept by tenant name, so it survives a reload of the auth file; the limits
themselves are read from the tenant's current settings on every request."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ..types import ErrorKind, InferError
from .config import Principal

__all__ = ["IN_FLIGHT", "QUOTA", "RATE_LIMIT", "TenantLimits", "limit_error"]

RATE_LIMIT, IN_FLIGHT, QUOTA = "rate_limit", "in_flight", "daily_quota"
_DAY = 86400


def limit_error(message: str, retry_after: float) -> InferError:
    """429 / RESOURCE_EXHAUSTED with the seconds to wait (HTTP `Retry-After`, a whole number, at least 1)."""
    error = InferError(ErrorKind.RESOURCE_EXHAUSTED, message)
    error.retry_after = max(1, math.ceil(retry_after))
    return error


class _State:
    __slots__ = ("day", "in_flight", "stamp", "tokens", "used_today")

    def __init__(self, now: float) -> None:
        self.tokens: float | None = None  # full on first use
        self.stamp = now
        self.in_flight = 0
        self.day = int(now // _DAY)
        self.used_today = 0


class TenantLimits:
    """Checks and counts a tenant's requests. `acquire` refuses (raises a 429 InferError, saying which limit in
    `error.reason`) or takes a slot that `release` gives back. Thread-safe: SDK and event-loop callers share it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def seed_quota(self, used: dict[str, int]) -> None:
        """Requests already made today (read back from the audit trail at start-up), by tenant."""
        now = self._clock()
        with self._lock:
            for name, count in used.items():
                self._state(name, now).used_today = count

    def _state(self, name: str, now: float) -> _State:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _State(now)
        return state

    def acquire(self, tenant: Principal) -> bool:
        """Count one request of `tenant`; True when it holds an in-flight slot to `release`."""
        if tenant.rate_limit is None and tenant.max_in_flight is None and tenant.daily_quota is None:
            return False
        now = self._clock()
        with self._lock:
            state = self._state(tenant.name, now)
            if tenant.max_in_flight is not None and state.in_flight >= tenant.max_in_flight:
                raise _refused(IN_FLIGHT, f"tenant '{tenant.name}' has {state.in_flight} requests in flight, its "
                               f"limit (max_in_flight {tenant.max_in_flight})", 1)
            quota = tenant.daily_quota
            if quota is not None:
                day = int(now // _DAY)
                if day != state.day:
                    state.day, state.used_today = day, 0
                if state.used_today >= quota:
                    raise _refused(QUOTA, f"tenant '{tenant.name}' used its daily quota of {quota} requests "
                                   "(it resets at 00:00 UTC)", (day + 1) * _DAY - now)
            self._take_token(tenant, state, now)
            if quota is not None:
                state.used_today += 1
            if tenant.max_in_flight is None:
                return False
            state.in_flight += 1
            return True

    def _take_token(self, tenant: Principal, state: _State, now: float) -> None:
        rate = tenant.rate_limit
        if rate is None:
            return
        tokens = rate.burst if state.tokens is None else min(
            rate.burst, state.tokens + (now - state.stamp) * rate.requests_per_second)
        state.stamp = now
        if tokens < 1:
            state.tokens = tokens
            raise _refused(RATE_LIMIT, f"tenant '{tenant.name}' is over its rate limit of "
                           f"{rate.requests_per_second:g} requests per second (burst {rate.burst})",
                           (1 - tokens) / rate.requests_per_second)
        state.tokens = tokens - 1

    def release(self, tenant: Principal) -> None:
        with self._lock:
            state = self._states.get(tenant.name)
            if state is not None and state.in_flight > 0:
                state.in_flight -= 1


def _refused(reason: str, message: str, retry_after: float) -> InferError:
    error = limit_error(message, retry_after)
    error.reason = reason
    return error
