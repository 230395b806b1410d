"""The auth file (`inferd serve --auth-config FILE`, YAML or JSON): admin keys, open paths and tenants, read into
immutable objects. A broken file raises `AuthConfigError` with one line saying where; the server then keeps the
configuration it had (see `gateway.Gateway`)."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .keys import digest_of, key_id, normalize_key

__all__ = ["ADMIN", "DEFAULT_OPEN_PATHS", "ApiKey", "AuthConfig", "AuthConfigError", "Grant", "Principal",
           "RateLimit", "load_auth_config", "parse_auth_config", "read_auth_file"]

# The dashboard's page and files are open too: they hold no data (the page asks for a key for the API calls it makes).
DEFAULT_OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics", "/", "/dashboard", "/dashboard/dashboard.js",
                      "/dashboard/dashboard.css")
_GRANT_CACHE_SIZE = 4096  # model names whose grant answer a principal keeps
KEY_CACHE_SIZE = 4096  # presented keys whose principal a configuration keeps
ADMIN = "admin"  # the principal name of admin keys in audit records and metrics (no tenant may take it)


class AuthConfigError(ValueError):
    """The auth file is unreadable or wrong; the message says where."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    hashed: str  # "sha256:<hex>"
    digest: bytes
    expires: float | None  # Unix seconds, or None: never

    @property
    def id(self) -> str:
        return key_id(self.hashed)


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class Grant:
    """One `models:` entry: a glob over model names, optionally one version (`mlp:2`)."""

    pattern: str
    version: str  # "" = every version

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True, eq=False)
class Principal:
    """Who a key belongs to: a tenant, or the admin (every model, every endpoint)."""

    name: str
    admin: bool = False
    keys: tuple[ApiKey, ...] = ()
    grants: tuple[Grant, ...] = ()
    rate_limit: RateLimit | None = None
    max_in_flight: int | None = None
    daily_quota: int | None = None
    weight: float = 1.0
    # Model name -> (sees it, its granted versions or None for all), computed once per name: the grants are globs
    # and every request asks. Bounded (clients choose the names); a reload makes new principals, so no staleness.
    _grants_of: dict[str, tuple[bool, frozenset[str] | None]] = field(default_factory=dict, repr=False)

    def granted(self, name: str) -> tuple[bool, frozenset[str] | None]:
        """(whether some version of `name` is granted, the granted versions or None for all): one cached lookup."""
        found = self._grants_of.get(name)
        if found is None:
            found = self._match(name)
            if len(self._grants_of) < _GRANT_CACHE_SIZE:
                self._grants_of[name] = found
        return found

    def _match(self, name: str) -> tuple[bool, frozenset[str] | None]:
        if self.admin:
            return True, None
        versions: set[str] = set()
        seen = False
        for grant in self.grants:
            if grant.matches(name):
                if not grant.version:
                    return True, None
                seen = True
                versions.add(grant.version)
        return seen, frozenset(versions)

    def sees(self, name: str) -> bool:
        """Whether the model `name` exists for this principal (some version of it is granted)."""
        return self.granted(name)[0]

    def sees_version(self, name: str, version: str) -> bool:
        """Whether `version` of the model `name` exists for this principal ("": whether some version does)."""
        if not self.sees(name):
            return False
        versions = self.versions_of(name)
        return versions is None or not version or version in versions

    def versions_of(self, name: str) -> frozenset[str] | None:
        """The versions of `name` granted (empty: none), or None when every version is."""
        return self.granted(name)[1]


@dataclass(frozen=True)
class AuthConfig:
    admin: Principal
    tenants: tuple[Principal, ...]
    open_paths: frozenset[str] = frozenset(DEFAULT_OPEN_PATHS)
    # sha256 digest of a key -> (its principal, the key): a presented key is hashed once and looked up.
    by_digest: Mapping[bytes, tuple[Principal, ApiKey]] = field(default_factory=dict)
    # Presented keys found valid -> (principal, key), so a client's key is hashed once, not per request. Only
    # valid keys enter (an attacker's guesses do not fill it); a reload builds a new configuration and so forgets
    # revoked keys. Bounded by KEY_CACHE_SIZE.
    known: dict[str, tuple[Principal, ApiKey]] = field(default_factory=dict, repr=False, compare=False)


def read_auth_file(path: str | Path) -> dict[str, Any]:
    """The file's raw content: YAML (a .yaml / .yml file, or anything not JSON) or JSON."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AuthConfigError(f"cannot read the auth config {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise AuthConfigError(f"{path}: not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise AuthConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise AuthConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_auth_config(path: str | Path) -> AuthConfig:
    data = read_auth_file(path)
    try:
        return parse_auth_config(data)
    except AuthConfigError as exc:
        raise AuthConfigError(f"{path}: {exc}") from None


_TOP_KEYS = {"admin_keys", "open_paths", "tenants"}
_TENANT_KEYS = {"name", "keys", "models", "rate_limit", "max_in_flight", "daily_quota", "weight"}


def parse_auth_config(data: Mapping[str, Any]) -> AuthConfig:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        known = ", ".join(sorted(_TOP_KEYS))
        raise AuthConfigError(f"unknown setting(s) {', '.join(sorted(unknown))} (known: {known})")
    admin = Principal(ADMIN, admin=True, keys=tuple(_key(k, "admin_keys") for k in _list(data, "admin_keys")))
    open_paths = data.get("open_paths")
    paths = DEFAULT_OPEN_PATHS if open_paths is None else _strings(open_paths, "open_paths")
    tenants = tuple(_tenant(t, i) for i, t in enumerate(_list(data, "tenants")))
    names = [t.name for t in tenants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AuthConfigError(f"tenant names must be unique: {', '.join(duplicates)}")
    by_digest: dict[bytes, tuple[Principal, ApiKey]] = {}
    for principal in (admin, *tenants):
        for key in principal.keys:
            other = by_digest.get(key.digest)
            if other is not None:
                raise AuthConfigError(f"key {key.id} is given to both '{other[0].name}' and '{principal.name}'")
            by_digest[key.digest] = (principal, key)
    return AuthConfig(admin, tenants, frozenset(paths), by_digest)


def _list(data: Mapping[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise AuthConfigError(f"'{name}' must be a list, got {type(value).__name__}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthConfigError(f"'{where}' must be a list of strings")
    return tuple(value)


def _key(entry: Any, where: str) -> ApiKey:
    expires = None
    if isinstance(entry, Mapping):
        unknown = set(entry) - {"key", "expires"}
        if unknown or "key" not in entry:
            raise AuthConfigError(f"a key in {where} must be a string or {{key, expires}}")
        expires = _time(entry.get("expires"), where)
        entry = entry["key"]
    if not isinstance(entry, str):
        raise AuthConfigError(f"a key in {where} must be a string, got {type(entry).__name__}")
    try:
        hashed = normalize_key(entry)
    except ValueError as exc:
        raise AuthConfigError(f"{where}: {exc}") from None
    return ApiKey(hashed, digest_of(hashed), expires)


def _time(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):  # YAML reads an unquoted timestamp as a datetime
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise AuthConfigError(f"{where}: expires '{value}' is not an ISO 8601 time") from None
    else:
        raise AuthConfigError(f"{where}: expires must be an ISO 8601 time")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _tenant(entry: Any, index: int) -> Principal:
    if not isinstance(entry, Mapping):
        raise AuthConfigError(f"tenants[{index}] must be a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise AuthConfigError(f"tenants[{index}] needs a 'name'")
    where = f"tenant '{name}'"
    if name == ADMIN:
        raise AuthConfigError(f"{where}: the name '{ADMIN}' is the admin keys' own")
    unknown = set(entry) - _TENANT_KEYS
    if unknown:
        raise AuthConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    keys = tuple(_key(k, where) for k in _list(entry, "keys"))
    grants = tuple(_grant(p) for p in _strings(entry.get("models") or [], f"{where} models"))
    return Principal(name, keys=keys, grants=grants, rate_limit=_rate(entry.get("rate_limit"), where),
                     max_in_flight=_count(entry.get("max_in_flight"), f"{where} max_in_flight"),
                     daily_quota=_count(entry.get("daily_quota"), f"{where} daily_quota"),
                     weight=_positive(entry.get("weight", 1.0), f"{where} weight"))


def _grant(pattern: str) -> Grant:
    name, colon, version = pattern.rpartition(":")
    if colon and version.isdigit() and name:
        return Grant(name, version)
    return Grant(pattern, "")


def _rate(value: Any, where: str) -> RateLimit | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or "requests_per_second" not in value:
        raise AuthConfigError(f"{where}: rate_limit must be {{requests_per_second, burst}}")
    rate = _positive(value["requests_per_second"], f"{where} requests_per_second")
    burst = _count(value.get("burst", max(1, math.ceil(rate))), f"{where} burst")
    return RateLimit(rate, burst or 1)


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AuthConfigError(f"{where} must be a whole number of at least 1, got {value!r}")
    return value


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise AuthConfigError(f"{where} must be a positive number, got {value!r}")
    return float(value)
