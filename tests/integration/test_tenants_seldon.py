"""Tenants on Seldon's protocol (`inferd microservice --auth-config`): Seldon's routes need a key (401 with
`WWW-Authenticate`), a tenant not granted the served model gets Seldon's answer for a missing model, a granted
one its prediction, and each call leaves one audit record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audit_rows import stored
from inferd.gateway.audit import AuditRecord
from serving import Microservice

SCALER = '''
class Scaler:
    def predict(self, X, features_names=None):
        return [[2 * v for v in row] for row in X]
'''

AUTH = '''
admin_keys: ["admin-key"]
tenants:
  - name: acme
    keys: ["acme-key"]
    models: ["scaler"]
  - name: beta
    keys: ["beta-key"]
    models: ["other*"]
    rate_limit: {requests_per_second: 0.01, burst: 2}
'''

BODY = {"data": {"ndarray": [[1.0, 2.0]]}}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Microservice, Path]]:
    root = tmp_path_factory.mktemp("seldon-tenants")
    (root / "Scaler.py").write_text(SCALER)
    (root / "auth.yaml").write_text(AUTH)
    state = root / "state"
    process = Microservice(root, root / "service.log", "Scaler", "--model-name", "scaler",
                           "--auth-config", str(root / "auth.yaml"), "--state-dir", str(state))
    process.wait_live()
    yield process, state
    process.stop()


def _post(service: Microservice, key: str | None) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{service.base_url}/api/v1.0/predictions", json=BODY, headers=headers, timeout=30)


def test_seldon_routes_need_a_key_and_serve_the_granted_tenant(service: tuple[Microservice, Path]) -> None:
    process, _ = service
    missing = _post(process, None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert "API key" in missing.json()["error"]
    assert _post(process, "wrong-key").status_code == 401

    answer = _post(process, "acme-key")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["ndarray"] == [[2.0, 4.0]]

    hidden = _post(process, "beta-key")  # beta is not granted 'scaler': as if it did not exist
    assert hidden.status_code == 404
    assert hidden.json()["status"]["info"] == "Request for unknown model: 'scaler' is not found"
    assert hidden.json()["status"]["reason"] == "MICROSERVICE_BAD_DATA"  # Seldon's wrapper: a 4xx is bad data

    admin = _post(process, "admin-key")
    assert admin.status_code == 200


def test_seldon_calls_are_audited(service: tuple[Microservice, Path]) -> None:
    process, state = service
    _flush(process)
    before = _records(state)
    for key in ("acme-key", None, "beta-key"):
        _post(process, key)
    _flush(process)
    rows = _records(state)[len(before):]
    assert [(r.tenant, r.protocol, r.status) for r in rows] == [
        ("acme", "seldon", 200), (None, "seldon", 401), ("beta", "seldon", 404)]
    assert rows[0].endpoint == "/api/v1.0/predictions"
    assert rows[0].client.startswith("127.0.0.1:")


def _flush(service: Microservice) -> None:
    """Usage answers from the audit trail, flushed first: after it, every call so far is in the database."""
    usage = httpx.get(f"{service.base_url}/v2/usage", headers={"X-API-Key": "admin-key"}, timeout=30)
    assert usage.status_code == 200, usage.text


def _records(state: Path) -> list[AuditRecord]:
    return stored(f"sqlite:///{state / 'audit.db'}")
