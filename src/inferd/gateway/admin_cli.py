"""`inferd tenants` edits the auth file that `inferd serve --auth-config` watches; `inferd usage` reads /v2/usage.

The auth file is rewritten whole and atomically (temp file in the same folder, fsync, os.replace), so a server
reloading it never sees half a file; only `sha256:` hashes of keys are ever written to it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from .keys import key_id, new_key, normalize_key

__all__ = ["AdminError", "add_tenants_parser", "add_usage_parser"]

Command = Callable[[argparse.Namespace], int]

_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
_JSON_SUFFIXES = (".json",)
_NEW_FILE_MODE = 0o600
_TOP_LEVEL_ORDER = ("admin_keys", "open_paths", "tenants")

_TENANTS_HELP = "manage tenants and API keys in an auth config file (the file `inferd serve --auth-config` reads)"
_TENANTS_EPILOG = """\
The file is JSON when its name ends in .json, else YAML (.yaml, .yml); it is rewritten atomically, so a running
server can watch it.
Only the sha256 hash of each key is stored; plain keys found in the file are hashed whenever a command writes it
(comments in a YAML file are not kept).

add-key and add-admin-key print the new key once, on stdout, in this form:
  key: <plain key>
  key_id: <12 hex characters>
  expires: <ISO 8601 time>          (only with --expires)
Capture the key alone with:  inferd tenants add-key acme --auth-config auth.yaml | sed -n 's/^key: //p'

Errors print one line on stderr and exit with status 1."""

_USAGE_HELP = "print per-tenant usage (requests, errors, latency, bytes) from a server's /v2/usage"
_USAGE_EPILOG = """\
The table prints a null tenant (unauthenticated calls) as "-"; --csv prints a header row, then one row per
period, with an empty field for a null value. The API key comes from --key or the INFERD_API_KEY variable."""

USAGE_COLUMNS = ("tenant", "model", "period", "requests", "errors", "p50_ms", "p99_ms", "bytes_in", "bytes_out")
_NUMERIC_COLUMNS = frozenset(USAGE_COLUMNS[3:])


class AdminError(Exception):
    """A user-facing failure: printed as one line on stderr, exit status 1."""


def _guarded(command: Command) -> Command:
    """Turn the expected failures of a command into a one-line message and exit status 1 (no traceback)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (AdminError, OSError) as exc:
            where = " ".join(filter(None, ("inferd", args.command, getattr(args, "action", None))))
            print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
            return 1

    run.__doc__ = command.__doc__
    return run


# --- argument parsing --------------------------------------------------------------------------------------------


def add_tenants_parser(subparsers: Any) -> None:
    """Register `tenants` on an argparse sub-command set; `args.func(args)` then runs the chosen action."""
    parser = subparsers.add_parser("tenants", help=_TENANTS_HELP, description=_TENANTS_HELP, epilog=_TENANTS_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_action(actions, "add", _cmd_add, "add a tenant (creates the file when missing)", _add_arguments)
    _add_action(actions, "add-key", _cmd_add_key, "create a key for a tenant and print it once", _add_key_arguments)
    _add_action(actions, "revoke-key", _cmd_revoke_key, "remove one of a tenant's keys", _revoke_key_arguments)
    _add_action(actions, "list", _cmd_list, "print tenants, key ids, models and limits", _list_arguments)
    _add_action(actions, "remove", _cmd_remove, "remove a tenant and its keys", _name_argument)
    _add_action(actions, "add-admin-key", _cmd_add_admin_key, "create an admin API key and print it once",
                _no_arguments)
    _add_action(actions, "revoke-admin-key", _cmd_revoke_admin_key, "remove an admin API key",
                _key_id_argument)


def _add_action(actions: Any, name: str, command: Command, text: str,
                arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = actions.add_parser(name, help=text, description=text)
    arguments(parser)
    parser.add_argument("--auth-config", required=True, type=Path, metavar="FILE",
                        help="the auth file: JSON if it ends in .json, else YAML")
    parser.set_defaults(func=_guarded(command))


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """Only --auth-config."""


def _name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the tenant")


def _key_id_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key_id", metavar="KEY_ID", help="the key's id (12 hex characters, as `list` prints it)")


def _expires_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expires", metavar="ISO8601",
                        help="when the key stops working, e.g. 2027-01-01T00:00:00Z (no zone: UTC)")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    _name_argument(parser)
    parser.add_argument("--models", action="append", default=[], metavar="PATTERN",
                        help="models the tenant may call: a glob (resnet*) or NAME:VERSION; repeatable "
                        "(default: none)")
    parser.add_argument("--requests-per-second", type=float, metavar="R", help="token bucket rate")
    parser.add_argument("--burst", type=int, metavar="B",
                        help="token bucket size (needs --requests-per-second; default: R rounded up)")
    parser.add_argument("--max-in-flight", type=int, metavar="N", help="most concurrent requests")
    parser.add_argument("--daily-quota", type=int, metavar="N", help="most requests per UTC day")


def _add_key_arguments(parser: argparse.ArgumentParser) -> None:
    _name_argument(parser)
    _expires_argument(parser)


def _revoke_key_arguments(parser: argparse.ArgumentParser) -> None:
    _name_argument(parser)
    _key_id_argument(parser)


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_usage_parser(subparsers: Any) -> None:
    """Register `usage` on an argparse sub-command set; `args.func(args)` then runs it."""
    parser = subparsers.add_parser("usage", help=_USAGE_HELP, description=_USAGE_HELP, epilog=_USAGE_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the server's HTTP address, e.g. http://localhost:8000")
    parser.add_argument("--key", default=os.environ.get("INFERD_API_KEY"),
                        help="API key sent as a Bearer token (default: $INFERD_API_KEY)")
    parser.add_argument("--tenant", metavar="T", help="only this tenant")
    parser.add_argument("--model", metavar="M", help="only this model")
    parser.add_argument("--since", metavar="ISO8601", help="start of the period")
    parser.add_argument("--until", metavar="ISO8601", help="end of the period")
    parser.add_argument("--group-by", choices=("day", "hour"), help="one row per day or per hour")
    parser.add_argument("--csv", action="store_true", help="print CSV with a header row instead of a table")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="HTTP timeout (default 30)")
    parser.set_defaults(func=_guarded(usage_command))


# --- the auth file -----------------------------------------------------------------------------------------------


def _is_json(path: Path) -> bool:
    """JSON for a .json file, YAML for any other (.yaml, .yml): the rule the server reads the file by."""
    return path.suffix.lower() in _JSON_SUFFIXES


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise AdminError("PyYAML is not installed: use a .json auth file or install pyyaml") from None
    return yaml


def load_auth_file(path: Path, create: bool = False) -> dict[str, Any]:
    """The file as a dict with every key hashed; an empty one when it is missing and `create` is set."""
    as_json = _is_json(path)
    if not path.exists():
        if create:
            return {"tenants": []}
        raise AdminError(f"{path}: no such file (`inferd tenants add` creates it)")
    text = path.read_text(encoding="utf-8")
    doc = _parse_json(path, text) if as_json else _parse_yaml(path, text)
    return _normalized(path, {} if doc is None else doc)


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError as exc:
        raise AdminError(f"{path}: not valid JSON: {exc}") from None


def _parse_yaml(path: Path, text: str) -> Any:
    yaml = _yaml()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AdminError(f"{path}: not valid YAML: {_one_line(exc)}") from None


def _normalized(path: Path, doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise AdminError(f"{path}: expected a mapping with admin_keys and tenants at the top")
    admin_keys = doc.get("admin_keys") or []
    tenants = doc.get("tenants") or []
    if not isinstance(admin_keys, list) or not isinstance(tenants, list):
        raise AdminError(f"{path}: admin_keys and tenants must be lists")
    try:
        if "admin_keys" in doc:
            doc["admin_keys"] = [normalize_key(str(k)) for k in admin_keys]
        doc["tenants"] = [_normalized_tenant(t) for t in tenants]
    except ValueError as exc:
        raise AdminError(f"{path}: {exc}") from None
    return doc


def _normalized_tenant(tenant: Any) -> dict[str, Any]:
    """A tenant with its keys as `{key: sha256:..., expires?: ISO string}` (a bare string is a key too)."""
    if not isinstance(tenant, dict) or "name" not in tenant:
        raise ValueError("every tenant needs a name")
    tenant["name"] = str(tenant["name"])
    keys = tenant.get("keys") or []
    if not isinstance(keys, list):
        raise ValueError(f"tenant {tenant['name']}: keys must be a list")
    tenant["keys"] = [_normalized_key_entry(entry) for entry in keys]
    return tenant


def _normalized_key_entry(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        entry = {"key": entry}
    if "key" not in entry:
        raise ValueError("a key entry without `key`")
    entry["key"] = normalize_key(str(entry["key"]))
    if isinstance(entry.get("expires"), (datetime, date)):  # unquoted YAML timestamps load as datetimes
        entry["expires"] = _iso(_as_utc(entry["expires"]))
    return entry


def save_auth_file(path: Path, doc: dict[str, Any]) -> None:
    """Replace the file atomically: a reader sees the old file or the new one, never a mix."""
    doc = _in_file_order(doc)
    text = json.dumps(doc, indent=2) + "\n" if _is_json(path) else \
        _yaml().safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
    target = path.resolve()  # through a symlink: the link stays, its target is replaced
    if not target.parent.is_dir():
        raise AdminError(f"{path}: the folder {target.parent} does not exist")
    old = target.stat() if target.exists() else None
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), old.st_mode & 0o7777 if old else _NEW_FILE_MODE)
            if old and os.geteuid() == 0:
                os.fchown(out.fileno(), old.st_uid, old.st_gid)
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _in_file_order(doc: dict[str, Any]) -> dict[str, Any]:
    """admin_keys, open_paths, tenants, then anything else: the order the format documents, whatever wrote it."""
    first = [name for name in _TOP_LEVEL_ORDER if name in doc]
    return {name: doc[name] for name in [*first, *(n for n in doc if n not in _TOP_LEVEL_ORDER)]}


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _find_tenant(doc: dict[str, Any], name: str) -> dict[str, Any]:
    for tenant in doc["tenants"]:
        if tenant["name"] == name:
            return tenant
    raise AdminError(f"no tenant named '{name}'")


# --- tenants actions ---------------------------------------------------------------------------------------------


def _cmd_add(args: argparse.Namespace) -> int:
    """Add a tenant with its models and limits; an existing name is refused rather than silently overwritten."""
    if not _TENANT_NAME.match(args.name):
        raise AdminError(f"'{args.name}' is not a valid tenant name (letters, digits, and _ . @ - after the first)")
    doc = load_auth_file(args.auth_config, create=True)
    if any(t["name"] == args.name for t in doc["tenants"]):
        raise AdminError(f"tenant '{args.name}' already exists")
    doc["tenants"].append(_new_tenant(args))
    save_auth_file(args.auth_config, doc)
    print(f"added tenant {args.name}")
    return 0


def _new_tenant(args: argparse.Namespace) -> dict[str, Any]:
    if any(not p.strip() for p in args.models):
        raise AdminError("--models: an empty pattern")
    tenant: dict[str, Any] = {"name": args.name, "keys": [], "models": list(args.models)}
    rate_limit = _rate_limit(args.requests_per_second, args.burst)
    if rate_limit:
        tenant["rate_limit"] = rate_limit
    for option, value in (("max_in_flight", args.max_in_flight), ("daily_quota", args.daily_quota)):
        if value is not None:
            if value < 1:
                raise AdminError(f"--{option.replace('_', '-')} must be at least 1")
            tenant[option] = value
    return tenant


def _rate_limit(rate: float | None, burst: int | None) -> dict[str, Any] | None:
    if rate is None:
        if burst is not None:
            raise AdminError("--burst needs --requests-per-second")
        return None
    if not rate > 0 or rate == float("inf"):
        raise AdminError("--requests-per-second must be a positive number")
    if burst is None:
        burst = max(1, math.ceil(rate))
    if burst < 1:
        raise AdminError("--burst must be at least 1")
    return {"requests_per_second": int(rate) if rate.is_integer() else rate, "burst": burst}


def _cmd_add_key(args: argparse.Namespace) -> int:
    """Store only the new key's hash; the plain key exists nowhere but in this one printout."""
    doc = load_auth_file(args.auth_config)
    tenant = _find_tenant(doc, args.name)
    plain, entry = _new_key_entry(args.expires)
    tenant["keys"].append(entry)
    save_auth_file(args.auth_config, doc)
    _print_new_key(plain, entry)
    return 0


def _cmd_add_admin_key(args: argparse.Namespace) -> int:
    """Admin keys are bare hashes in the file (no expiry); the file is created when missing, to bootstrap."""
    doc = load_auth_file(args.auth_config, create=True)
    plain, entry = _new_key_entry(None)
    doc["admin_keys"] = [*doc.get("admin_keys", []), entry["key"]]
    save_auth_file(args.auth_config, doc)
    _print_new_key(plain, entry)
    return 0


def _new_key_entry(expires: str | None) -> tuple[str, dict[str, Any]]:
    plain = new_key()
    entry: dict[str, Any] = {"key": normalize_key(plain)}
    if expires:
        when = parse_time(expires, "--expires")
        if when <= datetime.now(timezone.utc):
            raise AdminError(f"--expires {expires} is already past")
        entry["expires"] = _iso(when)
    return plain, entry


def _print_new_key(plain: str, entry: dict[str, Any]) -> None:
    """`key:` first, so the plain key is one `sed -n 's/^key: //p'` away; nothing else is secret."""
    print(f"key: {plain}")
    print(f"key_id: {key_id(entry['key'])}")
    if entry.get("expires"):
        print(f"expires: {entry['expires']}")
    print("(the key is shown only this once: store it now)", file=sys.stderr)


def _cmd_revoke_key(args: argparse.Namespace) -> int:
    """Remove a key by its id, the only handle left once the plain key is gone."""
    doc = load_auth_file(args.auth_config)
    tenant = _find_tenant(doc, args.name)
    wanted = args.key_id.strip().lower()
    kept = [entry for entry in tenant["keys"] if key_id(entry["key"]) != wanted]
    if len(kept) == len(tenant["keys"]):
        raise AdminError(f"tenant '{args.name}' has no key with id '{args.key_id}'")
    tenant["keys"] = kept
    save_auth_file(args.auth_config, doc)
    print(f"revoked key {wanted} of tenant {args.name}")
    return 0


def _cmd_revoke_admin_key(args: argparse.Namespace) -> int:
    """Remove an admin key by its id."""
    doc = load_auth_file(args.auth_config)
    wanted = args.key_id.strip().lower()
    keys = doc.get("admin_keys", [])
    kept = [k for k in keys if key_id(k) != wanted]
    if len(kept) == len(keys):
        raise AdminError(f"no admin key with id '{args.key_id}'")
    doc["admin_keys"] = kept
    save_auth_file(args.auth_config, doc)
    print(f"revoked admin key {wanted}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    """Remove a tenant with all its keys."""
    doc = load_auth_file(args.auth_config)
    doc["tenants"].remove(_find_tenant(doc, args.name))
    save_auth_file(args.auth_config, doc)
    print(f"removed tenant {args.name}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    """Show ids, never hashes: the id is what `revoke-key` takes and what the audit trail records."""
    doc = load_auth_file(args.auth_config)
    if args.json:
        print(json.dumps(_listing(doc), indent=2))
        return 0
    rows = [(t["name"], _keys_text(t), ", ".join(_models(t)) or "-", _limits_text(t))
            for t in doc["tenants"]]
    print(format_table(("TENANT", "KEYS", "MODELS", "LIMITS"), rows))
    admin = [key_id(k) for k in doc.get("admin_keys", [])]
    print(f"admin keys: {', '.join(admin) or '-'}")
    return 0


def _listing(doc: dict[str, Any]) -> dict[str, Any]:
    tenants = []
    for t in doc["tenants"]:
        keys = [{"id": key_id(e["key"]), "expires": e.get("expires")} for e in t["keys"]]
        limits = {k: t.get(k) for k in ("rate_limit", "max_in_flight", "daily_quota")}
        tenants.append({"name": t["name"], "keys": keys, "models": _models(t), **limits})
    return {"tenants": tenants, "admin_keys": [key_id(k) for k in doc.get("admin_keys", [])]}


def _models(tenant: dict[str, Any]) -> list[str]:
    """The tenant's patterns as a list (a lone string, which the file may hold by mistake, is one pattern)."""
    models = tenant.get("models") or []
    return [models] if isinstance(models, str) else [str(m) for m in models]


def _keys_text(tenant: dict[str, Any]) -> str:
    parts = [key_id(e["key"]) + (f" (expires {e['expires']})" if e.get("expires") else "") for e in tenant["keys"]]
    return ", ".join(parts) or "-"


def _limits_text(tenant: dict[str, Any]) -> str:
    parts = []
    rate = tenant.get("rate_limit")
    if isinstance(rate, dict):
        parts.append(f"{rate.get('requests_per_second')} req/s burst {rate.get('burst')}")
    if tenant.get("max_in_flight") is not None:
        parts.append(f"{tenant['max_in_flight']} in flight")
    if tenant.get("daily_quota") is not None:
        parts.append(f"{tenant['daily_quota']}/day")
    return ", ".join(parts) or "-"


# --- usage -------------------------------------------------------------------------------------------------------


def usage_command(args: argparse.Namespace) -> int:
    """Fetch /v2/usage and print it as a table or CSV."""
    if not args.key:
        raise AdminError("no API key: pass --key or set INFERD_API_KEY")
    rows = fetch_usage(usage_url(args), args.key, args.timeout)
    if args.csv:
        sys.stdout.write(usage_csv(rows))
    else:
        print(usage_table(rows))
    return 0


def usage_url(args: argparse.Namespace) -> str:
    """The /v2/usage address with only the filters given, url-encoded."""
    base = args.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise AdminError(f"--url {args.url}: expected http://HOST:PORT or https://HOST:PORT")
    for option in ("since", "until"):
        if getattr(args, option):
            parse_time(getattr(args, option), f"--{option}")
    params = [(name, value) for name, value in (("tenant", args.tenant), ("model", args.model),
                                                ("since", args.since), ("until", args.until),
                                                ("group_by", args.group_by)) if value]
    return f"{base}/v2/usage" + (f"?{urllib.parse.urlencode(params)}" if params else "")


def fetch_usage(url: str, api_key: str, timeout: float) -> list[dict[str, Any]]:
    """GET the rows; an HTTP error becomes the server's own error text."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}",
                                                   "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise AdminError(f"{_error_text(exc.read(), exc.reason)} (HTTP {exc.code})") from None
    except urllib.error.URLError as exc:
        raise AdminError(f"cannot reach {url}: {exc.reason}") from None
    try:
        rows = json.loads(body)
    except ValueError:
        raise AdminError(f"{url} did not answer JSON") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise AdminError(f"{url} did not answer a JSON array of rows")
    return rows


def _error_text(body: bytes, reason: Any) -> str:
    """The `error` of a JSON error body, else the body itself, else the HTTP reason."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and payload.get("error"):
        return _one_line(payload["error"])
    return _one_line(text) or str(reason)


def usage_table(rows: Iterable[dict[str, Any]]) -> str:
    """Aligned columns, numbers right-aligned; a null tenant is "-"."""
    cells = [tuple(_table_cell(column, row.get(column)) for column in USAGE_COLUMNS) for row in rows]
    right = {i for i, column in enumerate(USAGE_COLUMNS) if column in _NUMERIC_COLUMNS}
    return format_table(USAGE_COLUMNS, cells, right)


def _table_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and column in _NUMERIC_COLUMNS:
        return f"{value:.2f}"
    return str(value)


def usage_csv(rows: Iterable[dict[str, Any]]) -> str:
    """CSV with a header row; null values are empty fields."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(USAGE_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in USAGE_COLUMNS])
    return out.getvalue()


# --- shared ------------------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Columns two spaces apart, each as wide as its widest cell; `right` holds the indexes of number columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).rjust(width) if i in right else str(cell).ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time in UTC; `Z` is accepted (Python 3.10 does not) and a time without a zone is UTC."""
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise AdminError(f"{option} {text}: not an ISO 8601 time (e.g. 2027-01-01T00:00:00Z)") from None
    return _as_utc(when)


def _as_utc(when: date) -> datetime:
    if not isinstance(when, datetime):
        when = datetime(when.year, when.month, when.day)
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())
