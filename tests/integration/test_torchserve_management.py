"""TorchServe's management API on `--torchserve-management-port`, called as TorchServe users script it (httpx), over
a model store of real `.mar` files made by `torch-model-archiver`.

Register from the store, list (with TorchServe's pagination), describe, scale to 2 workers (describe and the model
config show 2), infer on the main port, unregister (404 after); errors in TorchServe's JSON form; the server goes on
serving after each. With tenants on (`--auth-config`) the port refuses tenant keys and takes admin keys.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mar_archives import build_upper_mar, upper
from serving import HOST, ServerProcess, start_server

pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ALPHA, BETA, GAMMA, MULTI = "alpha", "beta", "gamma", "multi"
ADMIN_KEY = "admin-key-0123456789abcdef"
TENANT_KEY = "acme-key-0123456789abcdef"
_STARTED = re.compile(r"started TorchServe Management Service at \S+:(\d+)")
WAIT_S = 60.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ts-management")
    models = root / "model_store"
    for name in (ALPHA, BETA, GAMMA):
        build_upper_mar(root / "work", name, models)
    # Triton's layout in the same store: a model folder with two versions (archives 1.0 and 2.0) served together.
    for number in (1, 2):
        build_upper_mar(root / "work", MULTI, models / MULTI / str(number), version=f"{number}.0")
    (models / MULTI / "config.pbtxt").write_text("version_policy: { all { } }\n")
    return {"root": root, "models": models, "cache": root / "cache"}


class Management:
    """A server with the management port on; `call` speaks to the management port, `main` to the inference one."""

    def __init__(self, process: ServerProcess, headers: dict[str, str] | None = None) -> None:
        self.process = process
        self.headers = headers or {}
        match = _STARTED.search(process.log())
        assert match is not None, process.log()
        self.base = f"http://{HOST}:{match.group(1)}"

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", self.headers)
        return httpx.request(method, f"{self.base}{path}", timeout=WAIT_S, **kwargs)

    def predict(self, name: str, text: str) -> httpx.Response:
        return httpx.post(f"{self.process.base_url}/predictions/{name}", content=text.encode(),
                          headers={"content-type": "text/plain", **self.headers}, timeout=WAIT_S)

    def describe(self, name: str) -> list[dict[str, Any]]:
        response = self.call("GET", f"/models/{name}")
        assert response.status_code == 200, response.text
        doc: list[dict[str, Any]] = response.json()
        return doc

    def wait_workers(self, name: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT_S
        while True:
            response = self.call("GET", f"/models/{name}")
            if response.status_code == 200 and response.json()[0]["minWorkers"] == count:
                return list(response.json())
            assert time.monotonic() < deadline, (response.text, self.process.log())
            time.sleep(0.2)


def _serve(store: dict[str, Path], log_name: str, *extra: str) -> ServerProcess:
    return start_server(store["models"], store["root"] / log_name, "--model-control-mode", "explicit",
                        "--torchserve-management-port", "0", *extra, env={"INFERD_CACHE_DIR": str(store["cache"])})


@pytest.fixture(scope="module")
def management(store: dict[str, Path]) -> Iterator[Management]:
    process = _serve(store, "inferd-management.log")
    yield Management(process)
    process.stop()


def _error(response: httpx.Response) -> tuple[int, str, str]:
    doc = response.json()
    assert doc["code"] == response.status_code, doc
    return response.status_code, doc["type"], doc["message"]


def test_register_describe_scale_infer_unregister(management: Management) -> None:
    assert management.call("GET", "/models").json() == {"models": []}  # explicit mode: nothing loaded yet
    registered = management.call("POST", f"/models?url={ALPHA}.mar&initial_workers=1")
    assert registered.status_code == 200, registered.text
    assert registered.json() == {"status": f'Model "{ALPHA}" Version: 1.0 registered with 1 initial workers'}
    assert management.call("GET", "/models").json() == {"models": [{"modelName": ALPHA, "modelUrl": f"{ALPHA}.mar"}]}

    (described,) = management.describe(ALPHA)
    assert {k: described[k] for k in ("modelName", "modelVersion", "modelUrl", "minWorkers", "maxWorkers",
                                      "batchSize")} == {"modelName": ALPHA, "modelVersion": "1.0",
                                                        "modelUrl": f"{ALPHA}.mar", "minWorkers": 1,
                                                        "maxWorkers": 1, "batchSize": 1}
    assert [w["status"] for w in described["workers"]] == ["READY"]
    answer = management.predict(ALPHA, "hello")
    assert answer.status_code == 200 and {**upper("hello"), "model": ALPHA}.items() <= answer.json().items()

    scaled = management.call("PUT", f"/models/{ALPHA}?min_worker=2&synchronous=true")
    assert (scaled.status_code, scaled.json()) == (200, {"status": f"Workers scaled to 2 for model: {ALPHA}"})
    (described,) = management.describe(ALPHA)
    assert (described["minWorkers"], len(described["workers"])) == (2, 2)
    assert {w["status"] for w in described["workers"]} == {"READY"}
    config = httpx.get(f"{management.process.base_url}/v2/models/{ALPHA}/config", timeout=WAIT_S).json()
    assert sum(g["count"] for g in config["instance_group"]) == 2
    assert management.predict(ALPHA, "after scaling").json()["upper"] == "AFTER SCALING"

    # TorchServe's default: asynchronous, 202 at once, the workers adjusted after.
    later = management.call("PUT", f"/models/{ALPHA}/1.0?min_worker=1")
    assert (later.status_code, later.json()) == (202, {"status": "Processing worker updates..."})
    assert len(management.wait_workers(ALPHA, 1)[0]["workers"]) == 1

    gone = management.call("DELETE", f"/models/{ALPHA}")
    assert (gone.status_code, gone.json()) == (200, {"status": f'Model "{ALPHA}" unregistered'})
    assert _error(management.call("GET", f"/models/{ALPHA}")) == (404, "ModelNotFoundException",
                                                                  f"Model not found: {ALPHA}")
    assert management.predict(ALPHA, "x").status_code == 404
    assert management.call("GET", "/models").json() == {"models": []}


def test_list_pages_versions_batching_and_async_register(management: Management) -> None:
    accepted = management.call("POST", f"/models?url={BETA}.mar&synchronous=false&initial_workers=1")
    assert (accepted.status_code, accepted.json()) == (202, {"status": "Processing worker updates..."})
    batched = management.call("POST", f"/models?url={GAMMA}.mar&model_name={GAMMA}&batch_size=4&max_batch_delay=20")
    assert batched.status_code == 200, batched.text
    management.wait_workers(BETA, 1)
    (gamma,) = management.describe(GAMMA)
    assert (gamma["batchSize"], gamma["maxBatchDelay"]) == (4, 20)
    assert management.predict(GAMMA, "batched").json()["upper"] == "BATCHED"

    first = management.call("GET", "/models?limit=1").json()
    assert first == {"nextPageToken": "1", "models": [{"modelName": BETA, "modelUrl": f"{BETA}.mar"}]}
    second = management.call("GET", "/models?limit=1&next_page_token=1").json()
    assert second == {"models": [{"modelName": GAMMA, "modelUrl": f"{GAMMA}.mar"}]}

    for version in ("1.0", "1", "all"):
        assert [d["modelVersion"] for d in management.call("GET", f"/models/{BETA}/{version}").json()] == ["1.0"]
    assert _error(management.call("GET", f"/models/{BETA}/7.0")) == (
        404, "ModelVersionNotFoundException", f"Model version: 7.0 does not exist for model: {BETA}")
    bad_scale = management.call("PUT", f"/models/{BETA}?min_worker=3&max_worker=1")
    assert _error(bad_scale) == (400, "BadRequestException", "max_worker cannot be less than min_worker.")
    conflict = management.call("POST", f"/models?url={BETA}.mar")
    assert _error(conflict) == (409, "ConflictStatusException", f"Model version 1.0 is already registered for model "
                                f"{BETA}")
    for name in (BETA, GAMMA):
        assert management.call("DELETE", f"/models/{name}/1.0").status_code == 200


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("POST", "/models", (400, "BadRequestException", "Parameter url is required.")),
    ("POST", "/models?url=nothing.mar", (404, "ModelNotFoundException", "Model not found in model store: nothing.mar")),
    ("POST", "/models?url=../alpha.mar", (404, "ModelNotFoundException",
                                          "Relative path is not allowed in url: ../alpha.mar")),
    ("POST", "/models?url=/elsewhere/alpha.mar", (404, "ModelNotFoundException",
                                                  "Model not found in model store: /elsewhere/alpha.mar")),
    ("GET", "/models/fake", (404, "ModelNotFoundException", "Model not found: fake")),
    ("PUT", "/models/fake?min_worker=2", (404, "ModelNotFoundException", "Model not found: fake")),
    ("DELETE", "/models/fake", (404, "ModelNotFoundException", "Model not found: fake")),
    ("DELETE", "/models/fake/1.0", (404, "ModelNotFoundException", "Model not found: fake")),
    ("GET", "/models?limit=many", (400, "BadRequestException", "Parameter limit must be an integer, got 'many'.")),
    ("PUT", "/models", (405, "MethodNotAllowedException",
                        "Requested method is not allowed, please refer to API document.")),
    ("GET", "/nowhere", (404, "ResourceNotFoundException",
                         "Requested resource is not found, please refer to API document.")),
])
def test_errors_in_torchserve_form(management: Management, method: str, path: str,
                                   expected: tuple[int, str, str]) -> None:
    assert _error(management.call(method, path)) == expected
    assert management.call("GET", "/models").status_code == 200  # still serving


def test_urls_the_server_cannot_follow(management: Management, store: dict[str, Path]) -> None:
    download = management.call("POST", "/models?url=https://example.com/alpha.mar")
    status, kind, message = _error(download)
    assert (status, kind) == (400, "BadRequestException")
    assert message.startswith("Failed to download model from: https://example.com/alpha.mar")
    assert "model store" in message
    renamed = management.call("POST", f"/models?url={ALPHA}.mar&model_name=other")
    assert _error(renamed)[:2] == (400, "BadRequestException") and f"as model '{ALPHA}'" in renamed.json()["message"]
    # A path to the archive in the store is the same model.
    by_path = management.call("POST", f"/models?url={store['models'] / (ALPHA + '.mar')}")
    assert by_path.status_code == 200, by_path.text
    assert management.call("DELETE", f"/models/{ALPHA}").status_code == 200


def test_model_folder_with_versions(management: Management) -> None:
    """A model folder of the store (Triton's layout, two versions): registered by its name, one version
    unregistered while the other serves on, then the model."""
    registered = management.call("POST", f"/models?url={MULTI}&initial_workers=2&synchronous=true")
    assert registered.json() == {"status": f'Model "{MULTI}" Version: 2.0 registered with 2 initial workers'}
    described = management.call("GET", f"/models/{MULTI}/all").json()
    assert [(d["modelVersion"], d["minWorkers"], d["modelUrl"]) for d in described] == [("1.0", 2, MULTI),
                                                                                        ("2.0", 2, MULTI)]
    assert [d["modelVersion"] for d in management.describe(MULTI)] == ["2.0"]  # the default: the newest
    gone = management.call("DELETE", f"/models/{MULTI}/1.0")
    assert (gone.status_code, gone.json()) == (200, {"status": f'Model "{MULTI}" unregistered'})
    assert [d["modelVersion"] for d in management.call("GET", f"/models/{MULTI}/all").json()] == ["2.0"]
    assert _error(management.call("GET", f"/models/{MULTI}/1.0"))[:2] == (404, "ModelVersionNotFoundException")
    assert management.predict(f"{MULTI}/2.0", "two").json()["upper"] == "TWO"
    assert management.predict(f"{MULTI}/1.0", "one").status_code == 404
    assert management.call("DELETE", f"/models/{MULTI}").status_code == 200
    assert management.call("GET", f"/models/{MULTI}").status_code == 404


def test_tenant_keys_are_refused(store: dict[str, Path]) -> None:
    def digest(key: str) -> str:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()

    auth = store["root"] / "auth.yaml"
    auth.write_text(yaml.safe_dump({"admin_keys": [digest(ADMIN_KEY)], "tenants": [
        {"name": "acme", "keys": [digest(TENANT_KEY)], "models": ["*"]}]}))
    process = _serve(store, "inferd-management-auth.log", "--auth-config", str(auth),
                     "--state-dir", str(store["root"] / "state"))
    try:
        anonymous = Management(process)
        assert anonymous.call("POST", f"/models?url={ALPHA}.mar").status_code == 401
        tenant = Management(process, {"authorization": f"Bearer {TENANT_KEY}"})
        for method, path in (("POST", f"/models?url={ALPHA}.mar"), ("GET", "/models"), ("DELETE", f"/models/{ALPHA}")):
            assert tenant.call(method, path).status_code == 403, (method, path)
        admin = Management(process, {"authorization": f"Bearer {ADMIN_KEY}"})
        assert admin.call("POST", f"/models?url={ALPHA}.mar").status_code == 200
        assert admin.call("GET", "/models").json()["models"] == [{"modelName": ALPHA, "modelUrl": f"{ALPHA}.mar"}]
        assert tenant.predict(ALPHA, "tenant call").json()["upper"] == "TENANT CALL"  # inference stays theirs
    finally:
        process.stop()


def test_register_needs_explicit_mode(store: dict[str, Path]) -> None:
    process = start_server(store["models"], store["root"] / "inferd-management-none.log",
                           "--torchserve-management-port", "0", env={"INFERD_CACHE_DIR": str(store["cache"])})
    try:
        management = Management(process)
        assert len(management.call("GET", "/models").json()["models"]) == 4  # mode none: all loaded at start
        status, kind, message = _error(management.call("DELETE", f"/models/{ALPHA}"))
        assert (status, kind) == (400, "BadRequestException") and "--model-control-mode=explicit" in message
        assert management.predict(ALPHA, "still").json()["upper"] == "STILL"
    finally:
        process.stop()


def test_management_port_in_use_is_one_line(store: dict[str, Path]) -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = ServerProcess(store["models"], store["root"] / "inferd-management-busy.log",
                                "--torchserve-management-port", str(port), "--torchserve-management-address", HOST)
        assert process.wait_exit(timeout=WAIT_S) == 1
    log = process.log()
    assert f"cannot listen on {HOST}:{port} (TorchServe management)" in log
    assert "--torchserve-management-port" in log and "Traceback" not in log
