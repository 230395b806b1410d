"""Tenants over the wire: `inferd serve --auth-config` with real clients (tritonclient HTTP and gRPC, httpx for V1,
TorchServe and byte-for-byte comparisons).

Each protocol (V2 HTTP, V2 gRPC and its stream, V1, TorchServe) with no key, a wrong key, an expired key, another
tenant's key and the right key; a model (or version) a tenant is not granted answers exactly as a missing one;
listings show a tenant its own models only; a per-version grant; admin endpoints refuse tenant keys; the exact
count of 429s for a scripted burst (rate limit, daily quota, requests in flight); the tenant metrics; the file
reloaded on change and on SIGHUP, a broken file keeping the previous one.

One server for the whole module (the reload test restores the file it changes).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from prometheus_client.parser import text_string_to_metric_families

from clients import simple_data, simple_inputs
from models import (
    SIMPLE,
    SIMPLE_CONFIG,
    VERSIONED,
    VERSIONED_CONFIG,
    add_constant_model,
    add_simple,
    identity_config,
    identity_model,
    identity_name,
    write_model,
)
from serving import ServerProcess, start_server

SECRET = "secret"  # a copy of `simple` that only beta is granted
MISSING = "nosuch"  # no such model (as long as SECRET: same content lengths)
BYTES_MODEL = identity_name("BYTES")  # a BYTES identity: what /predictions can call
GATE = "gate"  # a Python model that holds each request until the test lets it go
BYTES_VERSIONS = "bytes_versions"  # BYTES_MODEL in versions 1 and 2

ADMIN_KEY = "admin-key-0123456789abcdef"
ACME_KEY = "acme-key-0123456789abcdef"
ACME_EXPIRED_KEY = "acme-old-key-0123456789ab"
BETA_KEY = "beta-key-0123456789abcdef"
WRONG_KEY = "wrong-key-0123456789abcde"
BURST_HTTP_KEY = "burst-http-key-0123456789"
BURST_GRPC_KEY = "burst-grpc-key-0123456789"
QUOTA_KEY = "quota-key-0123456789abcde"
IN_FLIGHT_KEY = "in-flight-key-0123456789"
LATE_KEY = "late-key-0123456789abcdef"
HUP_KEY = "hupp-key-0123456789abcdef"  # as long as LATE_KEY: the file keeps its size

BURST, BURST_ALLOWED = 8, 5
QUOTA = 3
RELOAD_WAIT_S = 10.0

GATE_PY = """
    import time
    from pathlib import Path

    import numpy as np

    STARTED = Path({started!r})
    RELEASE = Path({release!r})


    class Gate:
        def predict(self, inputs):
            STARTED.write_text("in")
            deadline = time.monotonic() + 30
            while not RELEASE.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return {{"y": np.asarray(inputs["x"], dtype=np.float32)}}
"""

GATE_CONFIG = """
    name: "gate"
    backend: "python"
    max_batch_size: 0
    input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def _sha256(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _auth_config(*extra: dict[str, Any]) -> dict[str, Any]:
    slow = {"requests_per_second": 0.01, "burst": BURST_ALLOWED}
    return {
        "admin_keys": [_sha256(ADMIN_KEY)],
        "tenants": [
            {"name": "acme", "models": [SIMPLE, "identity_*", f"{VERSIONED}:1", f"{BYTES_VERSIONS}:1"],
             "keys": [{"key": ACME_KEY, "expires": "2099-01-01T00:00:00Z"},
                      {"key": ACME_EXPIRED_KEY, "expires": "2020-01-01T00:00:00Z"}]},
            {"name": "beta", "keys": [_sha256(BETA_KEY)], "models": [SECRET]},
            {"name": "burst-http", "keys": [BURST_HTTP_KEY], "models": [SIMPLE], "rate_limit": slow},
            {"name": "burst-grpc", "keys": [BURST_GRPC_KEY], "models": [SIMPLE], "rate_limit": slow},
            {"name": "quota", "keys": [QUOTA_KEY], "models": [SIMPLE], "daily_quota": QUOTA},
            {"name": "in-flight", "keys": [IN_FLIGHT_KEY], "models": [GATE], "max_in_flight": 1},
            *extra,
        ],
    }


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class Served:
    def __init__(self, process: ServerProcess, auth: Path, gate_started: Path, gate_release: Path) -> None:
        self.process = process
        self.auth = auth
        self.gate_started = gate_started
        self.gate_release = gate_release


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("tenants")
    repo = root / "models"
    add_simple(repo)
    write_model(repo, SECRET, (repo / SIMPLE / "1" / "model.onnx").read_bytes(),
                SIMPLE_CONFIG.replace(f'name: "{SIMPLE}"', f'name: "{SECRET}"'))
    write_model(repo, BYTES_MODEL, identity_model("BYTES"), identity_config("BYTES"))
    write_model(repo, VERSIONED, None, VERSIONED_CONFIG, {1: add_constant_model(1), 2: add_constant_model(2)})
    versions_config = identity_config("BYTES").replace(BYTES_MODEL, BYTES_VERSIONS) + "version_policy { all { } }\n"
    write_model(repo, BYTES_VERSIONS, None, versions_config, {1: identity_model("BYTES"), 2: identity_model("BYTES")})
    started, release = root / "gate-started", root / "gate-release"
    (repo / GATE / "1").mkdir(parents=True)
    (repo / GATE / "1" / "model.py").write_text(textwrap.dedent(GATE_PY.format(started=str(started),
                                                                               release=str(release))))
    (repo / GATE / "config.pbtxt").write_text(textwrap.dedent(GATE_CONFIG))
    auth = root / "auth.yaml"
    auth.write_text(yaml.safe_dump(_auth_config(), sort_keys=False))
    process = start_server(repo, root / "inferd.log", "--auth-config", str(auth), "--state-dir", str(root / "state"))
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{process.base_url}/v2/health/ready", timeout=10).status_code != 200:  # an open path
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.1)
        yield Served(process, auth, started, release)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(served: Served) -> ServerProcess:
    return served.process


# ---- helpers ----

# Functions, not dicts: tritonclient's HTTP client adds its own headers to the dict it is given.
def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def grpc_bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _v2_body(seed: int = 0) -> dict[str, Any]:
    a, b = simple_data(1, seed)
    return {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a.ravel().tolist()},
                       {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b.ravel().tolist()}]}


def _v1_body(seed: int = 0) -> dict[str, Any]:
    a, b = simple_data(1, seed)
    return {"instances": [{"INPUT0": a[0].tolist(), "INPUT1": b[0].tolist()}]}


def _request(server: ServerProcess, method: str, path: str, key: str | None = None, body: Any = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
    given = dict(headers or {})
    if key is not None:
        given.update(bearer(key))
    kwargs: dict[str, Any] = {"headers": given, "timeout": 30.0}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
    return httpx.request(method, f"{server.base_url}{path}", **kwargs)


def _infer_v2(server: ServerProcess, key: str | None, model: str = SIMPLE, **kwargs: Any) -> httpx.Response:
    return _request(server, "POST", f"/v2/models/{model}/infer", key, _v2_body(), **kwargs)


def _assert_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].lower().startswith("bearer"), response.headers
    assert isinstance(response.json()["error"], str)


def _comparable(response: httpx.Response) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in response.headers.items() if k not in ("date", "content-length"))


def _assert_same_answer(hidden: httpx.Response, missing: httpx.Response, hidden_text: str, missing_text: str
                        ) -> None:
    """`hidden` is `missing` word for word once the name (or version) is swapped: status, headers, body."""
    assert hidden.status_code == missing.status_code, (hidden.text, missing.text)
    assert hidden.content.replace(hidden_text.encode(), missing_text.encode()) == missing.content
    assert _comparable(hidden) == _comparable(missing)


def _http_error(call: Callable[[], Any]) -> httpclient.InferenceServerException:
    with pytest.raises(httpclient.InferenceServerException) as exc:
        call()
    return exc.value


def _grpc_error(call: Callable[[], Any]) -> grpcclient.InferenceServerException:
    with pytest.raises(grpcclient.InferenceServerException) as exc:
        call()
    return exc.value


def _grpc_outcome(call: Callable[[], Any], name: str, placeholder: str) -> tuple[str, str]:
    try:
        result = call()
    except grpcclient.InferenceServerException as exc:
        return str(exc.status()), str(exc.message()).replace(name, placeholder)
    return "OK", repr(result)


def _metrics(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("inferd_tenant_")}


def _sample(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture
def grpc(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


# ---- keys on each protocol ----

def test_open_paths_need_no_key(server: ServerProcess, grpc: grpcclient.InferenceServerClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{server.base_url}{path}", timeout=10).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).status_code == 200
    assert grpc.is_server_live() and grpc.is_server_ready()
    # Everything else needs a key.
    _assert_unauthenticated(_request(server, "GET", "/v2"))
    assert _grpc_error(grpc.get_server_metadata).status() == "StatusCode.UNAUTHENTICATED"


def test_v2_http_keys(server: ServerProcess, http: httpclient.InferenceServerClient) -> None:
    a, b = simple_data(1, seed=3)
    inputs = simple_inputs(httpclient, a, b)
    for headers in ({}, bearer(WRONG_KEY), bearer(ACME_EXPIRED_KEY), {"Authorization": "Basic abc"}):
        error = _http_error(partial(http.infer, SIMPLE, inputs, headers=headers))
        assert error.status() == "401", error.message()
    assert "expired" in _http_error(lambda: http.infer(SIMPLE, inputs, headers=bearer(ACME_EXPIRED_KEY))).message()
    for key in (None, WRONG_KEY, ACME_EXPIRED_KEY):
        _assert_unauthenticated(_infer_v2(server, key))
    # Another tenant's key: the model does not exist for beta.
    error = _http_error(lambda: http.infer(SIMPLE, inputs, headers=bearer(BETA_KEY)))
    assert error.status() == "404" and error.message() == f"Request for unknown model: '{SIMPLE}' is not found"
    # The right key, as a bearer token or X-API-Key.
    for headers in (bearer(ACME_KEY), {"X-API-Key": ACME_KEY}):
        result = http.infer(SIMPLE, inputs, headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert http.is_model_ready(SIMPLE, headers=bearer(ACME_KEY))
    assert http.get_model_metadata(SIMPLE, headers=bearer(ACME_KEY))["name"] == SIMPLE
    # beta's own model, and the admin's key on every model.
    np.testing.assert_array_equal(
        http.infer(SECRET, inputs, headers=bearer(BETA_KEY)).as_numpy("OUTPUT1"), a - b)
    for model in (SIMPLE, SECRET):
        assert http.infer(model, inputs, headers=bearer(ADMIN_KEY)).as_numpy("OUTPUT0").shape == (1, 16)


def test_v2_grpc_keys(grpc: grpcclient.InferenceServerClient) -> None:
    a, b = simple_data(1, seed=4)
    inputs = simple_inputs(grpcclient, a, b)
    for headers in (None, grpc_bearer(WRONG_KEY), grpc_bearer(ACME_EXPIRED_KEY)):
        error = _grpc_error(partial(grpc.infer, SIMPLE, inputs, headers=headers))
        assert error.status() == "StatusCode.UNAUTHENTICATED", error.message()
        error = _grpc_error(partial(grpc.get_model_metadata, SIMPLE, headers=headers))
        assert error.status() == "StatusCode.UNAUTHENTICATED", error.message()
    error = _grpc_error(lambda: grpc.infer(SIMPLE, inputs, headers=grpc_bearer(BETA_KEY)))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == f"Request for unknown model: '{SIMPLE}' is not found"
    for headers in (grpc_bearer(ACME_KEY), {"x-api-key": ACME_KEY}):
        np.testing.assert_array_equal(grpc.infer(SIMPLE, inputs, headers=headers).as_numpy("OUTPUT0"), a + b)
    assert grpc.is_model_ready(SIMPLE, headers=grpc_bearer(ACME_KEY))
    assert grpc.get_model_metadata(SIMPLE, headers=grpc_bearer(ACME_KEY)).name == SIMPLE
    np.testing.assert_array_equal(
        grpc.infer(SECRET, inputs, headers=grpc_bearer(BETA_KEY)).as_numpy("OUTPUT1"), a - b)
    assert grpc.infer(SECRET, inputs, headers=grpc_bearer(ADMIN_KEY)).as_numpy("OUTPUT0").shape == (1, 16)


def _stream_outcome(server: ServerProcess, model: str, headers: dict[str, str] | None) -> tuple[str, str]:
    """One request on a gRPC stream: ("OK", OUTPUT0 as text) or (status, message) of the error it got."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
        with contextlib.suppress(grpcclient.InferenceServerException):  # refused at once: the error is below
            client.async_stream_infer(model, simple_inputs(grpcclient, *simple_data(1, seed=5)))
        result, error = answers.get(timeout=30)
        client.stop_stream()
    finally:
        client.close()
    if error is not None:
        return str(error.status()), str(error.message()).replace(model, "{m}")
    return "OK", str(result.as_numpy("OUTPUT0").tolist())


def test_v2_grpc_stream_keys(server: ServerProcess) -> None:
    for headers in (None, grpc_bearer(WRONG_KEY), grpc_bearer(ACME_EXPIRED_KEY)):
        assert _stream_outcome(server, SIMPLE, headers)[0] == "StatusCode.UNAUTHENTICATED"
    missing = _stream_outcome(server, MISSING, grpc_bearer(ADMIN_KEY))
    assert missing[0] != "OK"
    assert _stream_outcome(server, SECRET, grpc_bearer(ACME_KEY)) == missing
    assert _stream_outcome(server, SIMPLE, grpc_bearer(BETA_KEY)) == missing
    a, b = simple_data(1, seed=5)
    assert _stream_outcome(server, SIMPLE, grpc_bearer(ACME_KEY)) == ("OK", str((a + b).tolist()))


def test_v1_keys(server: ServerProcess) -> None:
    a, b = simple_data(1, seed=0)
    path = f"/v1/models/{SIMPLE}:predict"
    for key in (None, WRONG_KEY, ACME_EXPIRED_KEY):
        _assert_unauthenticated(_request(server, "POST", path, key, _v1_body()))
    hidden = _request(server, "POST", path, BETA_KEY, _v1_body())
    missing = _request(server, "POST", f"/v1/models/{MISSING}:predict", ADMIN_KEY, _v1_body())
    assert hidden.status_code == 404
    _assert_same_answer(hidden, missing, SIMPLE, MISSING)
    for headers in (bearer(ACME_KEY), {"X-API-Key": ACME_KEY}):
        response = _request(server, "POST", path, body=_v1_body(), headers=headers)
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert prediction["OUTPUT0"] == (a + b)[0].tolist()


def test_torchserve_keys(server: ServerProcess) -> None:
    path = f"/predictions/{BYTES_MODEL}"
    for key in (None, WRONG_KEY, ACME_EXPIRED_KEY):
        _assert_unauthenticated(_request(server, "POST", path, key, b"hello"))
    hidden = _request(server, "POST", path, BETA_KEY, b"hello")
    assert hidden.status_code == 404 and hidden.json()["type"] == "ModelNotFoundException", hidden.text
    missing_name = "identity_nosuch"  # as long as BYTES_MODEL
    _assert_same_answer(hidden, _request(server, "POST", f"/predictions/{missing_name}", ADMIN_KEY, b"hello"),
                        BYTES_MODEL, missing_name)
    for headers in (bearer(ACME_KEY), {"X-API-Key": ACME_KEY}):
        response = _request(server, "POST", path, body=b"hello", headers=headers)
        assert response.status_code == 200 and response.content == b"hello", response.text


# ---- a hidden model is a missing one ----

_PROBES: list[tuple[str, str, Any]] = [
    ("GET", "/v2/models/{m}", None),
    ("GET", "/v2/models/{m}/versions/1", None),
    ("GET", "/v2/models/{m}/ready", None),
    ("GET", "/v2/models/{m}/config", None),
    ("GET", "/v2/models/{m}/stats", None),
    ("POST", "/v2/models/{m}/infer", _v2_body()),
    ("POST", "/v2/models/{m}/versions/1/infer", _v2_body()),
    ("GET", "/v1/models/{m}", None),
    ("GET", "/v1/models/{m}/metadata", None),
    ("POST", "/v1/models/{m}:predict", _v1_body()),
    ("POST", "/v1/models/{m}/versions/1:predict", _v1_body()),
    ("POST", "/predictions/{m}", b"hello"),
    ("POST", "/predictions/{m}/1.0", b"hello"),
]


@pytest.mark.parametrize(("method", "path", "body"), _PROBES, ids=[f"{m} {p}" for m, p, _ in _PROBES])
def test_hidden_model_answers_as_a_missing_one_http(server: ServerProcess, method: str, path: str, body: Any
                                                    ) -> None:
    def ask(model: str, key: str) -> httpx.Response:
        return _request(server, method, path.format(m=model), key, body, headers={"X-Request-Id": "probe-1"})

    # The server's own answer for a model it does not have (the admin sees every model).
    missing = ask(MISSING, ADMIN_KEY)
    assert missing.status_code in (400, 404), missing.text
    hidden = ask(SECRET, ACME_KEY)
    _assert_same_answer(hidden, missing, SECRET, MISSING)
    # Missing for acme too; and a missing model its glob grant covers gets the server's own answer.
    _assert_same_answer(ask(MISSING, ACME_KEY), missing, MISSING, MISSING)
    _assert_same_answer(hidden, ask("identity_nosuch", ACME_KEY), SECRET, "identity_nosuch")
    # It exists: its own tenant is answered (whatever the answer is, it is not the missing one).
    own = ask(SECRET, BETA_KEY)
    assert (own.status_code, own.content) != (hidden.status_code, hidden.content)


def test_hidden_model_answers_as_a_missing_one_grpc(grpc: grpcclient.InferenceServerClient) -> None:
    inputs = simple_inputs(grpcclient, *simple_data(1))
    calls: list[Callable[[str, dict[str, str]], Any]] = [
        lambda m, h: grpc.get_model_metadata(m, headers=h),
        lambda m, h: grpc.get_model_metadata(m, "1", headers=h),
        lambda m, h: grpc.get_model_config(m, headers=h),
        lambda m, h: grpc.is_model_ready(m, headers=h),
        lambda m, h: grpc.get_inference_statistics(m, headers=h),
        lambda m, h: grpc.infer(m, inputs, headers=h),
        lambda m, h: grpc.infer(m, inputs, model_version="1", headers=h),
    ]
    for call in calls:
        missing = _grpc_outcome(partial(call, MISSING, grpc_bearer(ADMIN_KEY)), MISSING, "{m}")
        assert missing[0] != "OK" or missing[1] == "False", missing
        assert _grpc_outcome(partial(call, SECRET, grpc_bearer(ACME_KEY)), SECRET, "{m}") == missing
        assert _grpc_outcome(partial(call, MISSING, grpc_bearer(ACME_KEY)), MISSING, "{m}") == missing
        assert _grpc_outcome(partial(call, SECRET, grpc_bearer(BETA_KEY)), SECRET, "{m}") != missing


def test_listings_show_a_tenant_its_own_models(server: ServerProcess, http: httpclient.InferenceServerClient,
                                               grpc: grpcclient.InferenceServerClient) -> None:
    acme = {SIMPLE, BYTES_MODEL, VERSIONED, BYTES_VERSIONS}
    everything = acme | {SECRET, GATE}
    assert {row["name"] for row in http.get_model_repository_index(headers=bearer(ACME_KEY))} == acme
    assert {row["name"] for row in http.get_model_repository_index(headers=bearer(BETA_KEY))} == {SECRET}
    assert {row["name"] for row in http.get_model_repository_index(headers=bearer(ADMIN_KEY))} == everything
    stats = http.get_inference_statistics(headers=bearer(ACME_KEY))["model_stats"]
    assert {row["name"] for row in stats} == acme
    assert {row["name"] for row in http.get_inference_statistics(headers=bearer(ADMIN_KEY))["model_stats"]
            } == everything
    index = grpc.get_model_repository_index(headers=grpc_bearer(ACME_KEY))
    assert {row.name for row in index.models} == acme
    assert {row.name for row in grpc.get_model_repository_index(headers=grpc_bearer(ADMIN_KEY)).models} == everything
    assert {row.name for row in grpc.get_inference_statistics(headers=grpc_bearer(ACME_KEY)).model_stats} == acme
    assert {row.name for row in grpc.get_inference_statistics(headers=grpc_bearer(BETA_KEY)).model_stats
            } == {SECRET}
    _assert_unauthenticated(_request(server, "POST", "/v2/repository/index", body={}))
    error = _grpc_error(lambda: grpc.get_model_repository_index())
    assert error.status() == "StatusCode.UNAUTHENTICATED"


def test_per_version_grant(server: ServerProcess, http: httpclient.InferenceServerClient,
                           grpc: grpcclient.InferenceServerClient) -> None:
    x = np.arange(4, dtype=np.int32).reshape(1, 4)
    for module, client, headers in ((httpclient, http, bearer(ACME_KEY)), (grpcclient, grpc, grpc_bearer(ACME_KEY))):
        tensor = module.InferInput("INPUT0", [1, 4], "INT32")
        tensor.set_data_from_numpy(x)
        # No version named: version 1, the one granted (the admin gets the newest, 2).
        np.testing.assert_array_equal(client.infer(VERSIONED, [tensor], headers=headers).as_numpy("OUTPUT0"), x + 1)
        np.testing.assert_array_equal(
            client.infer(VERSIONED, [tensor], model_version="1", headers=headers).as_numpy("OUTPUT0"), x + 1)
        admin = bearer(ADMIN_KEY) if module is httpclient else grpc_bearer(ADMIN_KEY)
        np.testing.assert_array_equal(client.infer(VERSIONED, [tensor], headers=admin).as_numpy("OUTPUT0"), x + 2)
        refused = _http_error if module is httpclient else _grpc_error
        hidden = refused(partial(client.infer, VERSIONED, [tensor], model_version="2", headers=headers))
        missing = refused(partial(client.infer, VERSIONED, [tensor], model_version="3", headers=admin))
        assert (hidden.status(), hidden.message().replace("2", "3")) == (missing.status(), missing.message())
        assert hidden.status() in ("404", "StatusCode.NOT_FOUND")
    body = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 4], "data": x.ravel().tolist()}]}
    for method, path, payload in (("POST", "/v2/models/{m}/versions/{v}/infer", body),
                                  ("GET", "/v2/models/{m}/versions/{v}", None),
                                  ("GET", "/v2/models/{m}/versions/{v}/ready", None),
                                  ("POST", "/v1/models/{m}/versions/{v}:predict", {"instances": [[1, 2]]}),
                                  ("POST", "/predictions/{m}/{v}.0", b"hello")):
        hidden = _request(server, method, path.format(m=VERSIONED, v=2), ACME_KEY, payload)
        missing = _request(server, method, path.format(m=VERSIONED, v=3), ADMIN_KEY, payload)
        assert missing.status_code in (400, 404), missing.text
        _assert_same_answer(hidden, missing, "2", "3")
    # What acme reads of the model names only its version.
    assert http.get_model_metadata(VERSIONED, headers=bearer(ACME_KEY))["versions"] == ["1"]
    assert list(grpc.get_model_metadata(VERSIONED, headers=grpc_bearer(ACME_KEY)).versions) == ["1"]
    assert sorted(http.get_model_metadata(VERSIONED, headers=bearer(ADMIN_KEY))["versions"]) == ["1", "2"]
    rows = [row for row in http.get_model_repository_index(headers=bearer(ACME_KEY)) if row["name"] == VERSIONED]
    assert [row.get("version") for row in rows] == ["1"], rows
    rows = [row for row in grpc.get_model_repository_index(headers=grpc_bearer(ACME_KEY)).models
            if row.name == VERSIONED]
    assert [row.version for row in rows] == ["1"], rows
    stats = http.get_inference_statistics(VERSIONED, headers=bearer(ACME_KEY))["model_stats"]
    assert [row["version"] for row in stats] == ["1"], stats
    # On TorchServe too: no version named is version 1, and "1.0" is version 1.
    for path in (f"/predictions/{BYTES_VERSIONS}", f"/predictions/{BYTES_VERSIONS}/1.0"):
        response = _request(server, "POST", path, ACME_KEY, b"hello")
        assert response.status_code == 200 and response.content == b"hello", response.text
    hidden = _request(server, "POST", f"/predictions/{BYTES_VERSIONS}/2.0", ACME_KEY, b"hello")
    _assert_same_answer(hidden, _request(server, "POST", f"/predictions/{BYTES_VERSIONS}/3.0", ADMIN_KEY, b"hello"),
                        "2.0", "3.0")
    # ("1.0" on a model without BYTES inputs: acme is answered as the admin is.)
    granted = _request(server, "POST", f"/predictions/{VERSIONED}/1.0", ACME_KEY, b"hello")
    assert granted.status_code == 400 and granted.json()["type"] == "BadRequestException", granted.text
    assert granted.content == _request(server, "POST", f"/predictions/{VERSIONED}/1.0", ADMIN_KEY, b"hello").content


def test_admin_endpoints_refuse_tenant_keys(http: httpclient.InferenceServerClient,
                                            grpc: grpcclient.InferenceServerClient) -> None:
    def http_calls(headers: dict[str, str] | None) -> list[Callable[[], Any]]:
        return [lambda: http.load_model(SIMPLE, headers=headers),
                lambda: http.unload_model(SIMPLE, headers=headers),
                lambda: http.get_trace_settings(headers=headers),
                lambda: http.update_trace_settings(settings={"trace_rate": "1"}, headers=headers),
                lambda: http.update_trace_settings(SIMPLE, settings={"trace_rate": "1"}, headers=headers),
                lambda: http.get_log_settings(headers=headers),
                lambda: http.update_log_settings({"log_info": True}, headers=headers),
                lambda: http.get_system_shared_memory_status(headers=headers),
                lambda: http.register_system_shared_memory("region", "/inferd-tenant-test", 64, headers=headers),
                lambda: http.unregister_system_shared_memory(headers=headers)]

    def grpc_calls(headers: dict[str, str] | None) -> list[Callable[[], Any]]:
        return [lambda: grpc.load_model(SIMPLE, headers=headers),
                lambda: grpc.unload_model(SIMPLE, headers=headers),
                lambda: grpc.get_trace_settings(headers=headers),
                lambda: grpc.update_trace_settings(settings={"trace_rate": "1"}, headers=headers),
                lambda: grpc.get_log_settings(headers=headers),
                lambda: grpc.update_log_settings({"log_info": True}, headers=headers),
                lambda: grpc.get_system_shared_memory_status(headers=headers),
                lambda: grpc.register_system_shared_memory("region", "/inferd-tenant-test", 64, headers=headers),
                lambda: grpc.unregister_system_shared_memory(headers=headers)]

    for key in (ACME_KEY, BETA_KEY):
        for call in http_calls(bearer(key)):
            error = _http_error(call)
            assert error.status() == "403" and "admin key" in error.message(), error.message()
        for call in grpc_calls(grpc_bearer(key)):
            error = _grpc_error(call)
            assert error.status() == "StatusCode.PERMISSION_DENIED", error.message()
    # No key: not authenticated at all.
    for call in http_calls(None)[:3]:
        assert _http_error(call).status() == "401"
    for call in grpc_calls(None)[:3]:
        assert _grpc_error(call).status() == "StatusCode.UNAUTHENTICATED"
    # The admin key is let in.
    assert "trace_rate" in http.get_trace_settings(headers=bearer(ADMIN_KEY))
    assert "log_info" in http.get_log_settings(headers=bearer(ADMIN_KEY))
    assert http.get_system_shared_memory_status(headers=bearer(ADMIN_KEY)) == []
    assert grpc.get_log_settings(headers=grpc_bearer(ADMIN_KEY), as_json=True)["settings"]
    grpc.get_system_shared_memory_status(headers=grpc_bearer(ADMIN_KEY))


# ---- limits ----

def test_rate_limit_burst_http(server: ServerProcess) -> None:
    statuses, retry_after, others = [], [], []
    for _ in range(BURST):
        response = _infer_v2(server, BURST_HTTP_KEY)
        statuses.append(response.status_code)
        if response.status_code == 429:
            retry_after.append(response.headers["retry-after"])
            assert "rate limit" in response.json()["error"]
        others.append(_infer_v2(server, ACME_KEY).status_code)  # another tenant, in between
    assert statuses == [200] * BURST_ALLOWED + [429] * (BURST - BURST_ALLOWED)
    assert all(value.isdigit() and int(value) >= 1 for value in retry_after), retry_after
    assert others == [200] * BURST
    metrics = _metrics(server)
    requests = "inferd_tenant_requests_total"
    assert _sample(metrics, requests, tenant="burst-http", model=SIMPLE, status="200") == BURST_ALLOWED
    assert _sample(metrics, requests, tenant="burst-http", model=SIMPLE, status="429") == BURST - BURST_ALLOWED
    assert _sample(metrics, "inferd_tenant_rejected_total", tenant="burst-http",
                   reason="rate_limit") == BURST - BURST_ALLOWED


def test_rate_limit_burst_grpc(server: ServerProcess, grpc: grpcclient.InferenceServerClient) -> None:
    inputs = simple_inputs(grpcclient, *simple_data(1))
    outcomes, others = [], []
    for _ in range(BURST):
        outcomes.append(_grpc_outcome(lambda: grpc.infer(SIMPLE, inputs, headers=grpc_bearer(BURST_GRPC_KEY)),
                                      "", "")[0])
        others.append(_grpc_outcome(lambda: grpc.infer(SIMPLE, inputs, headers=grpc_bearer(ACME_KEY)), "", "")[0])
    assert outcomes == ["OK"] * BURST_ALLOWED + ["StatusCode.RESOURCE_EXHAUSTED"] * (BURST - BURST_ALLOWED)
    assert others == ["OK"] * BURST
    metrics = _metrics(server)
    requests = "inferd_tenant_requests_total"
    assert _sample(metrics, requests, tenant="burst-grpc", model=SIMPLE, status="200") == BURST_ALLOWED
    assert _sample(metrics, requests, tenant="burst-grpc", model=SIMPLE, status="429") == BURST - BURST_ALLOWED
    assert _sample(metrics, "inferd_tenant_rejected_total", tenant="burst-grpc",
                   reason="rate_limit") == BURST - BURST_ALLOWED


def test_daily_quota(server: ServerProcess) -> None:
    responses = [_infer_v2(server, QUOTA_KEY) for _ in range(QUOTA + 2)]
    assert [r.status_code for r in responses] == [200] * QUOTA + [429] * 2
    for response in responses[QUOTA:]:
        assert 1 <= int(response.headers["retry-after"]) <= 86400, response.headers
        assert "daily quota" in response.json()["error"]
    assert _sample(_metrics(server), "inferd_tenant_rejected_total", tenant="quota", reason="daily_quota") == 2


def test_max_in_flight(served: Served) -> None:
    server = served.process
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.5]}]}
    held: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: held.append(
        _request(server, "POST", f"/v2/models/{GATE}/infer", IN_FLIGHT_KEY, body)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not served.gate_started.exists():
            assert time.monotonic() < deadline and thread.is_alive(), (held, server.log())
            time.sleep(0.01)
        refused = _request(server, "POST", f"/v2/models/{GATE}/infer", IN_FLIGHT_KEY, body)
        assert refused.status_code == 429 and "in flight" in refused.json()["error"], refused.text
        assert int(refused.headers["retry-after"]) >= 1
    finally:
        served.gate_release.write_text("go")
        thread.join(30)
    assert [r.status_code for r in held] == [200]
    # The slot is given back.
    assert _request(server, "POST", f"/v2/models/{GATE}/infer", IN_FLIGHT_KEY, body).status_code == 200
    assert _sample(_metrics(server), "inferd_tenant_rejected_total", tenant="in-flight", reason="in_flight") == 1


def test_unauthenticated_metrics(server: ServerProcess, grpc: grpcclient.InferenceServerClient) -> None:
    inputs = simple_inputs(grpcclient, *simple_data(1))
    before = _metrics(server)
    for key in (None, WRONG_KEY, ACME_EXPIRED_KEY):
        assert _infer_v2(server, key).status_code == 401
    assert _request(server, "GET", "/v2/models/simple").status_code == 401
    assert _grpc_outcome(lambda: grpc.infer(SIMPLE, inputs), "", "")[0] == "StatusCode.UNAUTHENTICATED"
    assert _grpc_outcome(lambda: grpc.infer(SIMPLE, inputs, headers=grpc_bearer(WRONG_KEY)), "", "")[0] == \
        "StatusCode.UNAUTHENTICATED"
    after = _metrics(server)
    name = "inferd_tenant_rejected_total"
    assert _sample(after, name, tenant="", reason="unauthenticated") - \
        _sample(before, name, tenant="", reason="unauthenticated") == 6
    # Authenticated calls are counted by tenant, model and status, refusals of a hidden model on each protocol too.
    assert _infer_v2(server, ACME_KEY).status_code == 200
    assert _infer_v2(server, ACME_KEY, SECRET).status_code == 404
    assert _request(server, "POST", f"/v1/models/{SECRET}:predict", ACME_KEY, _v1_body()).status_code == 404
    assert _request(server, "POST", f"/predictions/{SECRET}", ACME_KEY, b"hello").status_code == 404
    assert _grpc_outcome(lambda: grpc.infer(SECRET, inputs, headers=grpc_bearer(ACME_KEY)), "", "")[0] == \
        "StatusCode.NOT_FOUND"
    later = _metrics(server)
    requests = "inferd_tenant_requests_total"
    for model, status, count in ((SIMPLE, "200", 1), (SECRET, "404", 4)):
        assert _sample(later, requests, tenant="acme", model=model, status=status) - \
            _sample(after, requests, tenant="acme", model=model, status=status) == count, (model, status)


# ---- the file reloaded ----

def _wait_status(server: ServerProcess, key: str, status: int) -> None:
    deadline = time.monotonic() + RELOAD_WAIT_S
    while (code := _infer_v2(server, key).status_code) != status:
        assert time.monotonic() < deadline, f"still {code}, not {status}, after {RELOAD_WAIT_S} s:\n{server.log()}"
        time.sleep(0.1)


def _reloads(server: ServerProcess) -> int:
    return server.log().count("auth config reloaded from")


def _wait_reloads(server: ServerProcess, count: int) -> None:
    deadline = time.monotonic() + RELOAD_WAIT_S
    while _reloads(server) < count:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


def test_reload_on_change_broken_file_and_sighup(served: Served) -> None:
    server, auth = served.process, served.auth
    original = auth.read_text()
    late = {"name": "late", "keys": [LATE_KEY], "models": [SIMPLE]}
    try:
        assert _infer_v2(server, LATE_KEY).status_code == 401
        _write_atomically(auth, yaml.safe_dump(_auth_config(late), sort_keys=False))
        _wait_status(server, LATE_KEY, 200)

        # A broken file: the configuration in force stays, and the log says why.
        _write_atomically(auth, "tenants: [\n  {name: broken\n")
        deadline = time.monotonic() + RELOAD_WAIT_S
        while "auth config not reloaded" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert _infer_v2(server, LATE_KEY).status_code == 200
        assert _infer_v2(server, ACME_KEY).status_code == 200

        # SIGHUP: a change the watcher cannot see (same inode, size and mtime) takes effect on the signal.
        reloads = _reloads(server)
        _write_atomically(auth, yaml.safe_dump(_auth_config(late), sort_keys=False))
        _wait_reloads(server, reloads + 1)
        stat = auth.stat()
        hup = yaml.safe_dump(_auth_config({**late, "keys": [HUP_KEY]}), sort_keys=False)
        assert len(hup) == stat.st_size
        with open(auth, "r+") as handle:
            handle.write(hup)
        os.utime(auth, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        time.sleep(1.5)  # the watcher looks every second
        assert _infer_v2(server, HUP_KEY).status_code == 401 and _reloads(server) == reloads + 1
        server.process.send_signal(signal.SIGHUP)
        _wait_status(server, HUP_KEY, 200)
        assert _reloads(server) == reloads + 2
        assert _infer_v2(server, LATE_KEY).status_code == 401
        assert server.process.poll() is None
        assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=10).status_code == 200
    finally:
        _write_atomically(auth, original)
    _wait_status(server, HUP_KEY, 401)
    assert _infer_v2(server, ACME_KEY).status_code == 200
