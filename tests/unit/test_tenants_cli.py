"""`inferd tenants` on a real auth file (YAML and JSON) and `inferd usage` against a real HTTP server in a thread."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferd.cli import main
from inferd.gateway.keys import hash_key, key_id

Run = tuple[int, str, str]


def _inferd(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text()
    doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def _new_key(capsys: pytest.CaptureFixture[str], path: Path, *argv: str) -> tuple[str, str]:
    code, out, err = _inferd(capsys, "tenants", *argv, "--auth-config", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("key: ") and lines[1].startswith("key_id: ")
    return lines[0].removeprefix("key: "), lines[1].removeprefix("key_id: ")


@pytest.fixture(params=["auth.yaml", "auth.json"])
def auth_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return tmp_path / request.param


# --- tenants -----------------------------------------------------------------------------------------------------


def test_add_creates_the_file_with_the_tenant_and_its_limits(capsys: pytest.CaptureFixture[str],
                                                             auth_file: Path) -> None:
    code, out, err = _inferd(capsys, "tenants", "add", "acme", "--auth-config", str(auth_file),
                             "--models", "resnet*", "--models", "mlp:2", "--requests-per-second", "50",
                             "--burst", "100", "--max-in-flight", "8", "--daily-quota", "100000")
    assert (code, err) == (0, "")
    assert "acme" in out
    assert _read(auth_file)["tenants"] == [{
        "name": "acme", "keys": [], "models": ["resnet*", "mlp:2"],
        "rate_limit": {"requests_per_second": 50, "burst": 100}, "max_in_flight": 8, "daily_quota": 100000}]
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    assert os.listdir(auth_file.parent) == [auth_file.name]  # no temp file left behind


def test_key_lifecycle(capsys: pytest.CaptureFixture[str], auth_file: Path) -> None:
    """add-key stores only the hash of the key it prints; list shows its id; revoke-key and remove take it away."""
    assert _inferd(capsys, "tenants", "add", "acme", "--auth-config", str(auth_file))[0] == 0
    plain, kid = _new_key(capsys, auth_file, "add-key", "acme", "--expires", "2099-01-01T00:00:00Z")
    other, other_id = _new_key(capsys, auth_file, "add-key", "acme")
    assert plain.startswith("inferd_") and kid == key_id(hash_key(plain))
    assert plain not in auth_file.read_text() and other not in auth_file.read_text()
    assert _read(auth_file)["tenants"][0]["keys"] == [
        {"key": hash_key(plain), "expires": "2099-01-01T00:00:00Z"}, {"key": hash_key(other)}]

    code, out, _ = _inferd(capsys, "tenants", "list", "--auth-config", str(auth_file))
    assert code == 0
    assert f"{kid} (expires 2099-01-01T00:00:00Z)" in out and other_id in out
    assert out.splitlines()[0].split() == ["TENANT", "KEYS", "MODELS", "LIMITS"]

    assert _inferd(capsys, "tenants", "revoke-key", "acme", kid, "--auth-config", str(auth_file))[0] == 0
    assert _read(auth_file)["tenants"][0]["keys"] == [{"key": hash_key(other)}]
    assert kid not in _inferd(capsys, "tenants", "list", "--auth-config", str(auth_file))[1]

    assert _inferd(capsys, "tenants", "remove", "acme", "--auth-config", str(auth_file))[0] == 0
    assert _read(auth_file)["tenants"] == []


def test_list_json(capsys: pytest.CaptureFixture[str], auth_file: Path) -> None:
    _inferd(capsys, "tenants", "add", "acme", "--auth-config", str(auth_file), "--models", "mlp",
            "--requests-per-second", "2.5")
    _, kid = _new_key(capsys, auth_file, "add-key", "acme")
    _, admin_id = _new_key(capsys, auth_file, "add-admin-key")
    code, out, _ = _inferd(capsys, "tenants", "list", "--json", "--auth-config", str(auth_file))
    assert code == 0
    assert json.loads(out) == {
        "tenants": [{"name": "acme", "keys": [{"id": kid, "expires": None}], "models": ["mlp"],
                     "rate_limit": {"requests_per_second": 2.5, "burst": 3}, "max_in_flight": None,
                     "daily_quota": None}],
        "admin_keys": [admin_id]}


def test_admin_keys(capsys: pytest.CaptureFixture[str], auth_file: Path) -> None:
    plain, admin_id = _new_key(capsys, auth_file, "add-admin-key")  # creates the file: the first admin bootstraps
    assert _read(auth_file)["admin_keys"] == [hash_key(plain)]
    assert list(_read(auth_file)) == ["admin_keys", "tenants"]
    code, _, err = _inferd(capsys, "tenants", "revoke-admin-key", "0" * 12, "--auth-config", str(auth_file))
    assert code == 1 and "no admin key with id '000000000000'" in err
    assert _inferd(capsys, "tenants", "revoke-admin-key", admin_id, "--auth-config", str(auth_file))[0] == 0
    assert _read(auth_file)["admin_keys"] == []


def test_plain_keys_in_the_file_are_hashed_when_it_is_written(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    path = tmp_path / "auth.yml"
    path.write_text("admin_keys: [admin-secret]\n"
                    "open_paths: [/v2/health/live]\n"
                    "tenants:\n"
                    "  - name: acme\n"
                    "    keys:\n"
                    "      - key: acme-secret\n"
                    "        expires: 2030-01-01T00:00:00Z\n"  # unquoted: YAML loads a datetime
                    "      - bare-secret\n"
                    "    models: [mlp]\n")
    assert _inferd(capsys, "tenants", "add", "bob", "--auth-config", str(path))[0] == 0
    text = path.read_text()
    assert "secret" not in text
    doc = _read(path)
    assert doc["admin_keys"] == [hash_key("admin-secret")]
    assert doc["open_paths"] == ["/v2/health/live"]
    assert doc["tenants"][0]["keys"] == [{"key": hash_key("acme-secret"), "expires": "2030-01-01T00:00:00Z"},
                                         {"key": hash_key("bare-secret")}]
    assert [t["name"] for t in doc["tenants"]] == ["acme", "bob"]


def test_existing_permissions_are_kept(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text('{"tenants": []}')
    path.chmod(0o640)
    assert _inferd(capsys, "tenants", "add", "acme", "--auth-config", str(path))[0] == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize("argv, message", [
    (["add", "acme"], "tenant 'acme' already exists"),
    (["add-key", "nobody"], "no tenant named 'nobody'"),
    (["revoke-key", "acme", "abcdefabcdef"], "tenant 'acme' has no key with id 'abcdefabcdef'"),
    (["remove", "nobody"], "no tenant named 'nobody'"),
    (["add", "bob", "--burst", "5"], "--burst needs --requests-per-second"),
    (["add", "bob", "--max-in-flight", "0"], "--max-in-flight must be at least 1"),
    (["add-key", "acme", "--expires", "soon"], "not an ISO 8601 time"),
    (["add-key", "acme", "--expires", "2001-01-01"], "is already past"),
])
def test_errors_are_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], auth_file: Path, argv: list[str],
                                        message: str) -> None:
    assert _inferd(capsys, "tenants", "add", "acme", "--auth-config", str(auth_file))[0] == 0
    before = auth_file.read_text()
    code, out, err = _inferd(capsys, "tenants", *argv, "--auth-config", str(auth_file))
    assert (code, out) == (1, "")
    assert message in err and err.count("\n") == 1 and err.startswith(f"inferd tenants {argv[0]}: error: ")
    assert auth_file.read_text() == before


@pytest.mark.parametrize("name, content, message", [
    ("missing.yaml", None, "no such file"),
    ("bad.yaml", "tenants: [\n", "not valid YAML"),
    ("bad.json", "{", "not valid JSON"),
    ("list.json", "[]", "expected a mapping"),
    ("auth.conf", "- a list\n", "expected a mapping"),  # any name but .json is YAML
    ("badhash.json", '{"admin_keys": ["sha256:1234"]}', "is not a sha256 hash"),
])
def test_unreadable_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: str | None,
                          message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    code, _, err = _inferd(capsys, "tenants", "list", "--auth-config", str(path))
    assert code == 1 and message in err and "Traceback" not in err


def test_a_missing_folder_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _inferd(capsys, "tenants", "add", "acme", "--auth-config", str(tmp_path / "no" / "auth.yaml"))
    assert code == 1 and "does not exist" in err


def test_the_installed_command_prints_the_key_on_its_first_line(tmp_path: Path) -> None:
    inferd = Path(sys.executable).with_name("inferd")
    path = tmp_path / "auth.yaml"
    subprocess.run([inferd, "tenants", "add", "acme", "--auth-config", path], check=True, capture_output=True)
    done = subprocess.run([inferd, "tenants", "add-key", "acme", "--auth-config", path], capture_output=True,
                          text=True, check=True)
    plain = done.stdout.splitlines()[0].removeprefix("key: ")
    assert _read(path)["tenants"][0]["keys"] == [{"key": hash_key(plain)}]
    assert "shown only this once" in done.stderr
    failed = subprocess.run([inferd, "tenants", "remove", "nobody", "--auth-config", path], capture_output=True,
                            text=True)
    assert failed.returncode == 1
    assert failed.stderr == "inferd tenants remove: error: no tenant named 'nobody'\n"


# --- usage -------------------------------------------------------------------------------------------------------

ROWS = [
    {"tenant": "acme", "model": "resnet50", "period": "2026-12-06", "requests": 1200, "errors": 3,
     "p50_ms": 4.25, "p99_ms": 19.5, "bytes_in": 123456, "bytes_out": 7890},
    {"tenant": None, "model": "mlp", "period": "2026-12-06", "requests": 7, "errors": 0,
     "p50_ms": 1.0, "p99_ms": 2.125, "bytes_in": 70, "bytes_out": 700},
]


class _UsageServer(ThreadingHTTPServer):
    requests: list[tuple[str, dict[str, list[str]], str | None]]


class _UsageHandler(BaseHTTPRequestHandler):
    """/v2/usage with fixed rows for key `good`, 401 for any other; records what it received."""

    server: _UsageServer

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.server.requests.append((url.path, urllib.parse.parse_qs(url.query), self.headers["Authorization"]))
        if self.headers["Authorization"] != "Bearer good":
            self._answer(401, {"error": "invalid API key"})
        elif url.path != "/v2/usage":
            self._answer(404, {"error": "no such route"})
        else:
            self._answer(200, ROWS)

    def _answer(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def usage_server() -> Iterator[_UsageServer]:
    server = _UsageServer(("127.0.0.1", 0), _UsageHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _url(server: _UsageServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_usage_table_and_query(capsys: pytest.CaptureFixture[str], usage_server: _UsageServer) -> None:
    code, out, err = _inferd(capsys, "usage", "--url", _url(usage_server) + "/", "--key", "good",
                             "--tenant", "acme", "--model", "resnet 50&x", "--since", "2026-12-01T00:00:00Z",
                             "--until", "2026-12-07T00:00:00+00:00", "--group-by", "day")
    assert (code, err) == (0, "")
    assert usage_server.requests == [("/v2/usage", {
        "tenant": ["acme"], "model": ["resnet 50&x"], "since": ["2026-12-01T00:00:00Z"],
        "until": ["2026-12-07T00:00:00+00:00"], "group_by": ["day"]}, "Bearer good")]
    assert out.splitlines() == [
        "tenant  model     period      requests  errors  p50_ms  p99_ms  bytes_in  bytes_out",
        "acme    resnet50  2026-12-06      1200       3    4.25   19.50    123456       7890",
        "-       mlp       2026-12-06         7       0    1.00    2.12        70        700",
    ]


def test_usage_csv_with_the_key_from_the_environment(capsys: pytest.CaptureFixture[str],
                                                     usage_server: _UsageServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERD_API_KEY", "good")
    code, out, _ = _inferd(capsys, "usage", "--url", _url(usage_server), "--csv")
    assert code == 0
    assert usage_server.requests == [("/v2/usage", {}, "Bearer good")]
    assert out.splitlines() == [
        "tenant,model,period,requests,errors,p50_ms,p99_ms,bytes_in,bytes_out",
        "acme,resnet50,2026-12-06,1200,3,4.25,19.5,123456,7890",
        ",mlp,2026-12-06,7,0,1.0,2.125,70,700",
    ]


def test_usage_http_error_prints_the_servers_text(capsys: pytest.CaptureFixture[str],
                                                  usage_server: _UsageServer) -> None:
    code, out, err = _inferd(capsys, "usage", "--url", _url(usage_server), "--key", "wrong")
    assert (code, out) == (1, "")
    assert err == "inferd usage: error: invalid API key (HTTP 401)\n"


@pytest.mark.parametrize("argv, message", [
    (["--url", "http://127.0.0.1:9", "--since", "last week"], "--since last week: not an ISO 8601 time"),
    (["--url", "localhost:8000"], "expected http://HOST:PORT"),
    (["--url", "http://127.0.0.1:1"], "cannot reach"),
])
def test_usage_client_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = _inferd(capsys, "usage", "--key", "k", *argv)
    assert code == 1 and message in err


def test_usage_needs_a_key(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERD_API_KEY", raising=False)
    code, _, err = _inferd(capsys, "usage", "--url", "http://127.0.0.1:9")
    assert code == 1 and "pass --key or set INFERD_API_KEY" in err
