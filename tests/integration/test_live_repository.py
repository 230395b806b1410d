"""The model repository while serving: explicit load / unload / reload, polling, hot swaps, path safety.

Each test starts its own `inferd serve` on 127.0.0.1 over a repository it builds, and changes that repository
(or loads models through the API) while the server runs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from clients import make_input, simple_data, simple_inputs
from models import (
    AUTO,
    SIMPLE,
    SIMPLE_CONFIG,
    SLOW,
    add_auto,
    add_constant_model,
    add_simple,
    add_slow,
    neg_model,
    tensor_config,
    write_model,
)
from serving import ServerProcess, start_server

ADDER = "adder"  # INT32 [batch, n] -> INPUT0 + <its version number> (default version policy: the latest one)
ADDER_CONFIG = f"""
name: "{ADDER}"
platform: "onnxruntime_onnx"
max_batch_size: 8
{tensor_config("input", "INPUT0", "TYPE_INT32", [-1])}
{tensor_config("output", "OUTPUT0", "TYPE_INT32", [-1])}
"""
WAIT_S = 20.0  # bound of every wait for the server to pick up a change
HTTP_CLIENT_ERRORS = ("400", "404")
GRPC_CLIENT_ERRORS = ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND")


def _adder_json(name: str = ADDER) -> dict[str, Any]:
    """ADDER_CONFIG as the JSON the load API takes."""
    tensor = {"data_type": "TYPE_INT32", "dims": [-1]}
    return {"name": name, "backend": "onnxruntime", "max_batch_size": 8,
            "input": [{"name": "INPUT0", **tensor}], "output": [{"name": "OUTPUT0", **tensor}]}


def _add_adder(repo: Path, versions: tuple[int, ...] = (1,)) -> None:
    write_model(repo, ADDER, None, ADDER_CONFIG, {v: add_constant_model(v) for v in versions})


# ---- helpers ----

@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Servers a test starts; each still running at the end is stopped by its PID."""
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


def _serve(servers: list[ServerProcess], repo: Path, log: Path, *args: str) -> ServerProcess:
    process = start_server(repo, log, *args)
    servers.append(process)
    return process


def _wait_for(condition: Callable[[], bool], what: str, process: ServerProcess, timeout: float = WAIT_S) -> None:
    """Poll `condition` every 0.1 s (bounded); fail with the server's log if it never holds."""
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        time.sleep(0.1)
    assert condition(), f"{what}: not within {timeout} s\n{process.log()}"


def _index(process: ServerProcess, ready: bool | None = None) -> dict[str, list[dict[str, str]]]:
    """The repository index by model name (`ready` sends Triton's filter)."""
    body = {} if ready is None else {"ready": ready}
    response = httpx.post(f"{process.base_url}/v2/repository/index", json=body, timeout=30)
    assert response.status_code == 200, response.text
    rows: dict[str, list[dict[str, str]]] = {}
    for row in response.json():
        rows.setdefault(row["name"], []).append(row)
    return rows


def _grpc_index(client: grpcclient.InferenceServerClient) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    for row in client.get_model_repository_index(as_json=True).get("models", []):
        rows.setdefault(row["name"], []).append(row)
    return rows


def _states(rows: dict[str, list[dict[str, str]]], name: str) -> list[str]:
    return [row.get("state", "") for row in rows.get(name, [])]


def _http_add(client: httpclient.InferenceServerClient, name: str, x: np.ndarray,
              version: str = "") -> tuple[np.ndarray, str]:
    result = client.infer(name, [make_input(httpclient, "INPUT0", x, "INT32")], model_version=version)
    return result.as_numpy("OUTPUT0"), result.get_response()["model_version"]


def _grpc_add(client: grpcclient.InferenceServerClient, name: str, x: np.ndarray,
              version: str = "") -> tuple[np.ndarray, str]:
    result = client.infer(name, [make_input(grpcclient, "INPUT0", x, "INT32")], model_version=version)
    return result.as_numpy("OUTPUT0"), result.get_response().model_version


def _simple_answers(client: Any, module: Any, batch: int = 2) -> None:
    a, b = simple_data(batch, seed=7)
    result = client.infer(SIMPLE, simple_inputs(module, a, b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def _move_in(staging: Path, target: Path) -> None:
    """Put a prepared folder or file into the repository in one rename, as a deployment script would."""
    os.replace(staging, target)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


X = np.array([[10, 20, 30, 40]], dtype=np.int32)


# ---- explicit mode: load, unload, reload through both protocols ----

def test_explicit_mode_starts_empty_and_loads_unloads_reloads(tmp_path: Path, server_log: Path,
                                                              servers: list[ServerProcess]) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    add_auto(repo)
    _add_adder(repo)
    process = _serve(servers, repo, server_log, "--model-control-mode=explicit")
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        # Nothing loaded, yet every model of the repository is listed.
        rows = _index(process)
        assert set(rows) == {SIMPLE, AUTO, ADDER}
        assert all("READY" not in _states(rows, n) for n in rows), rows
        assert _index(process, ready=True) == {}
        assert {row["name"] for row in http.get_model_repository_index()} == {SIMPLE, AUTO, ADDER}
        assert set(_grpc_index(grpc)) == {SIMPLE, AUTO, ADDER}
        for name in (SIMPLE, AUTO, ADDER):
            assert not http.is_model_ready(name)
            assert not grpc.is_model_ready(name)
        with pytest.raises(httpclient.InferenceServerException):
            _simple_answers(http, httpclient)

        # Load over HTTP, over gRPC.
        http.load_model(SIMPLE)
        grpc.load_model(ADDER)
        assert http.is_model_ready(SIMPLE) and grpc.is_model_ready(SIMPLE)
        assert http.is_model_ready(ADDER) and grpc.is_model_ready(ADDER)
        assert not http.is_model_ready(AUTO)
        _simple_answers(http, httpclient)
        _simple_answers(grpc, grpcclient)
        out, version = _grpc_add(grpc, ADDER, X)
        np.testing.assert_array_equal(out, X + 1)
        assert version == "1"
        assert set(_index(process, ready=True)) == {SIMPLE, ADDER}
        rows = _index(process)
        assert _triton_rows(rows[SIMPLE]) == [{"name": SIMPLE, "version": "1", "state": "READY", "reason": ""}]
        assert "READY" not in _states(rows, AUTO)
        grpc_rows = _grpc_index(grpc)
        assert _states(grpc_rows, SIMPLE) == ["READY"] and _states(grpc_rows, ADDER) == ["READY"]

        # Unload over gRPC and over HTTP.
        grpc.unload_model(SIMPLE)
        http.unload_model(ADDER)
        for name in (SIMPLE, ADDER):
            assert not http.is_model_ready(name)
            assert not grpc.is_model_ready(name)
        assert _index(process, ready=True) == {}
        rows = _index(process)
        for name in (SIMPLE, ADDER):
            assert _states(rows, name) == ["UNAVAILABLE"], rows
            assert "unload" in rows[name][0].get("reason", "").lower(), rows
        with pytest.raises(httpclient.InferenceServerException) as http_exc:
            _simple_answers(http, httpclient)
        assert http_exc.value.status() in ("400", "404", "503")
        assert SIMPLE in http_exc.value.message()
        with pytest.raises(grpcclient.InferenceServerException) as grpc_exc:
            _grpc_add(grpc, ADDER, X)
        assert grpc_exc.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
        assert ADDER in grpc_exc.value.message()

        # Reload: served again, the other way round.
        http.load_model(SIMPLE)
        grpc.load_model(AUTO)
        grpc.load_model(ADDER)
        _simple_answers(grpc, grpcclient)
        x = np.array([[1.0, -2.0, 3.0, -4.0]], dtype=np.float32)
        result = http.infer(AUTO, [make_input(httpclient, "INPUT0", x, "FP32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), -x)
        np.testing.assert_array_equal(_http_add(http, ADDER, X)[0], X + 1)
        assert set(_index(process, ready=True)) == {SIMPLE, AUTO, ADDER}
        # Loading a model already loaded is a reload, not an error.
        http.load_model(AUTO)
        assert grpc.is_model_ready(AUTO)
    finally:
        http.close()
        grpc.close()


def test_load_with_a_config_override(tmp_path: Path, server_log: Path, servers: list[ServerProcess]) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    process = _serve(servers, repo, server_log, "--model-control-mode=explicit", "--load-model", SIMPLE)
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        assert http.get_model_config(SIMPLE)["max_batch_size"] == 8
        config = http.get_model_config(SIMPLE)
        config["max_batch_size"] = 4
        grpc.load_model(SIMPLE, config=json.dumps(config))
        assert http.get_model_config(SIMPLE)["max_batch_size"] == 4
        assert grpc.get_model_config(SIMPLE).config.max_batch_size == 4
        _simple_answers(grpc, grpcclient, batch=4)
        a, b = simple_data(5)
        with pytest.raises(grpcclient.InferenceServerException) as exc:
            grpc.infer(SIMPLE, simple_inputs(grpcclient, a, b))
        assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
        # The override lives in the server, not in the repository.
        assert (repo / SIMPLE / "config.pbtxt").read_text() == SIMPLE_CONFIG

        # A plain reload reads config.pbtxt again.
        http.load_model(SIMPLE)
        assert grpc.get_model_config(SIMPLE).config.max_batch_size == 8
        _simple_answers(http, httpclient, batch=8)
    finally:
        http.close()
        grpc.close()


def test_load_with_file_content(tmp_path: Path, server_log: Path, servers: list[ServerProcess]) -> None:
    """`file:` parameters give the model folder in the request; the model need not be in the repository."""
    repo = tmp_path / "models"
    add_simple(repo)
    before = _tree(repo)
    process = _serve(servers, repo, server_log, "--model-control-mode=explicit")
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    name = "uploaded"
    try:
        http.load_model(name, config=json.dumps(_adder_json(name)),
                        files={"file:1/model.onnx": add_constant_model(10)})
        assert grpc.is_model_ready(name)
        out, version = _grpc_add(grpc, name, X)
        np.testing.assert_array_equal(out, X + 10)
        assert version == "1"
        assert _states(_index(process), name) == ["READY"]

        # Over gRPC, a new folder with another version: it replaces what was loaded.
        grpc.load_model(name, config=json.dumps(_adder_json(name)),
                        files={"file:3/model.onnx": add_constant_model(30)})
        out, version = _http_add(http, name, X)
        np.testing.assert_array_equal(out, X + 30)
        assert version == "3"
        assert not http.is_model_ready(name, "1")
        assert http.get_model_metadata(name)["versions"] == ["3"]

        # A model of the repository loaded from files instead: the files win over its folder.
        grpc.load_model(SIMPLE, config=json.dumps(_adder_json(SIMPLE)),
                        files={"file:1/model.onnx": add_constant_model(5)})
        np.testing.assert_array_equal(_grpc_add(grpc, SIMPLE, X)[0], X + 5)
        assert _tree(repo) == before, "a load with files wrote into the repository"
    finally:
        http.close()
        grpc.close()


def test_load_a_model_copied_into_the_repository_while_serving(tmp_path: Path, server_log: Path,
                                                              servers: list[ServerProcess]) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    process = _serve(servers, repo, server_log, "--model-control-mode=explicit", "--load-model", SIMPLE)
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.load_model(ADDER)
        assert exc.value.status() in HTTP_CLIENT_ERRORS
        assert ADDER in exc.value.message()

        staging = tmp_path / "staging"
        _add_adder(staging, versions=(1, 2))
        shutil.copytree(staging / ADDER, repo / ADDER)
        assert ADDER in _index(process)
        grpc.load_model(ADDER)
        assert http.is_model_ready(ADDER)
        out, version = _http_add(http, ADDER, X)
        np.testing.assert_array_equal(out, X + 2)  # default version policy: the latest version only
        assert version == "2"
        assert not grpc.is_model_ready(ADDER, "1")
        assert set(_index(process, ready=True)) == {SIMPLE, ADDER}
    finally:
        http.close()
        grpc.close()


# ---- which models load at start-up ----

@pytest.fixture(scope="module")
def three_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("three") / "models"
    add_simple(repo)
    add_auto(repo)
    _add_adder(repo)
    return repo


def test_load_model_flag_loads_only_that_model(three_models: Path, server_log: Path,
                                               servers: list[ServerProcess]) -> None:
    process = _serve(servers, three_models, server_log, "--model-control-mode=explicit", "--load-model", SIMPLE)
    assert set(_index(process, ready=True)) == {SIMPLE}
    assert set(_index(process)) == {SIMPLE, AUTO, ADDER}
    client = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        assert client.is_model_ready(SIMPLE)
        assert not client.is_model_ready(AUTO)
        assert not client.is_model_ready(ADDER)
        _simple_answers(client, grpcclient)
    finally:
        client.close()


def test_load_model_flag_repeated(three_models: Path, server_log: Path, servers: list[ServerProcess]) -> None:
    process = _serve(servers, three_models, server_log, "--model-control-mode=explicit",
                     "--load-model", SIMPLE, "--load-model", ADDER)
    assert set(_index(process, ready=True)) == {SIMPLE, ADDER}


def test_load_model_star_loads_everything(three_models: Path, server_log: Path,
                                          servers: list[ServerProcess]) -> None:
    process = _serve(servers, three_models, server_log, "--model-control-mode=explicit", "--load-model", "*")
    assert set(_index(process, ready=True)) == {SIMPLE, AUTO, ADDER}
    client = httpclient.InferenceServerClient(process.http_url)
    try:
        for name in (SIMPLE, AUTO, ADDER):
            assert client.is_model_ready(name)
        # Still explicit: models can be unloaded.
        client.unload_model(AUTO)
        assert not client.is_model_ready(AUTO)
    finally:
        client.close()


@pytest.mark.parametrize("mode", [[], ["--model-control-mode=none"], ["--model-control-mode=poll"]],
                         ids=["default", "none", "poll"])
def test_load_and_unload_are_refused_outside_explicit_mode(three_models: Path, server_log: Path,
                                                           servers: list[ServerProcess], mode: list[str]) -> None:
    process = _serve(servers, three_models, server_log, *mode)
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        assert set(_index(process, ready=True)) == {SIMPLE, AUTO, ADDER}  # every model loads at start-up
        for call in (lambda: http.load_model(AUTO), lambda: http.unload_model(AUTO),
                     lambda: http.load_model(AUTO, config=json.dumps({"max_batch_size": 2}))):
            with pytest.raises(httpclient.InferenceServerException) as exc:
                call()
            assert exc.value.status() == "503"
            assert "explicit" in exc.value.message()
        for grpc_call in (lambda: grpc.load_model(AUTO), lambda: grpc.unload_model(AUTO)):
            with pytest.raises(grpcclient.InferenceServerException) as grpc_exc:
                grpc_call()
            assert grpc_exc.value.status() == "StatusCode.UNAVAILABLE"
            assert "explicit" in grpc_exc.value.message()
        assert http.is_model_ready(AUTO) and grpc.is_model_ready(AUTO)
        _simple_answers(http, httpclient)
    finally:
        http.close()
        grpc.close()


# ---- poll mode ----

def test_poll_mode_applies_repository_changes_without_restart(tmp_path: Path, server_log: Path,
                                                             servers: list[ServerProcess]) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    _add_adder(repo)
    add_slow(repo)
    process = _serve(servers, repo, server_log, "--model-control-mode=poll", "--repository-poll-secs", "1")
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        assert set(_index(process, ready=True)) == {SIMPLE, ADDER, SLOW}
        np.testing.assert_array_equal(_http_add(http, ADDER, X)[0], X + 1)
        assert not http.is_model_ready(AUTO)

        staging = tmp_path / "staging"
        staging.mkdir()
        # A new version folder of a served model.
        (staging / "2").mkdir()
        (staging / "2" / "model.onnx").write_bytes(add_constant_model(2))
        _move_in(staging / "2", repo / ADDER / "2")
        # A new model.
        write_model(staging, AUTO, neg_model(), None)
        _move_in(staging / AUTO, repo / AUTO)
        # A changed config.
        (staging / "config.pbtxt").write_text(SIMPLE_CONFIG.replace("max_batch_size: 8", "max_batch_size: 4"))
        _move_in(staging / "config.pbtxt", repo / SIMPLE / "config.pbtxt")
        # A removed model.
        _move_in(repo / SLOW, staging / SLOW)

        _wait_for(lambda: grpc.is_model_ready(ADDER, "2"), "the new version 2 of adder is ready", process)
        _wait_for(lambda: grpc.is_model_ready(AUTO), "the new model auto_neg is ready", process)
        _wait_for(lambda: http.get_model_config(SIMPLE)["max_batch_size"] == 4,
                  "the changed config of simple is applied", process)
        _wait_for(lambda: not grpc.is_model_ready(SLOW), "the removed model slow is unloaded", process)

        out, version = _grpc_add(grpc, ADDER, X)
        np.testing.assert_array_equal(out, X + 2)
        assert version == "2"
        _wait_for(lambda: not http.is_model_ready(ADDER, "1"), "version 1 of adder (latest-1 policy) retired",
                  process)
        x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
        result = grpc.infer(AUTO, [make_input(grpcclient, "INPUT0", x, "FP32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), -x)
        _simple_answers(http, httpclient, batch=4)
        a, b = simple_data(5)
        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.infer(SIMPLE, simple_inputs(httpclient, a, b))
        assert exc.value.status() == "400"
        with pytest.raises(grpcclient.InferenceServerException) as grpc_exc:
            grpc.infer(SLOW, [make_input(grpcclient, "INPUT0", np.zeros(4, np.float32), "FP32"),
                              make_input(grpcclient, "DELAY", np.array([1], np.int64), "INT64")])
        assert grpc_exc.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
        assert "READY" not in _states(_index(process), SLOW)
        assert set(_index(process, ready=True)) == {SIMPLE, ADDER, AUTO}
        assert process.process.poll() is None
    finally:
        http.close()
        grpc.close()


# ---- hot swap under load ----

async def test_hot_swap_under_load_never_fails_a_request(tmp_path: Path, server_log: Path,
                                                         servers: list[ServerProcess]) -> None:
    """4 clients (2 HTTP, 2 gRPC) send requests while version 2 replaces version 1 (a new folder and a reload),
    then version 3 replaces version 2 (a `file:` load): no request fails, and each answer comes from a version
    that was serving when the request was sent, or a newer one."""
    repo = tmp_path / "models"
    _add_adder(repo)
    process = _serve(servers, repo, server_log, "--model-control-mode=explicit", "--load-model", ADDER)
    min_requests, max_requests, after_each_swap = 400, 4000, 10
    phase = 1  # the newest version whose load call has returned
    answers: list[list[tuple[int, int, str]]] = [[] for _ in range(4)]  # per client: (phase at send, +k, version)
    errors: list[str] = []
    swapped = {1: asyncio.Event(), 2: asyncio.Event(), 3: asyncio.Event()}
    swapped[1].set()
    progress = asyncio.Event()

    def total() -> int:
        return sum(len(a) for a in answers)

    def done() -> bool:
        return total() >= max_requests or len(errors) >= 50 or (phase == 3 and total() >= min_requests and all(
            sum(1 for p, _, _ in client if p == 3) >= after_each_swap for client in answers))

    async def run_client(i: int) -> None:
        use_grpc = i % 2 == 1
        client: Any = (grpcaio.InferenceServerClient(process.grpc_url) if use_grpc
                       else httpaio.InferenceServerClient(process.http_url))
        module: Any = grpcaio if use_grpc else httpaio
        x = np.arange(4 * (i + 1), dtype=np.int32).reshape(1, -1)
        try:
            while not done():
                sent_in = phase
                try:
                    result = await client.infer(ADDER, [make_input(module, "INPUT0", x, "INT32")])
                except Exception as exc:
                    errors.append(f"client {i} (phase {sent_in}): {exc!r}")
                    continue
                delta = result.as_numpy("OUTPUT0") - x
                constant = int(delta.flat[0])
                if not (delta == constant).all():
                    errors.append(f"client {i}: not a constant added: {delta}")
                version = (result.get_response().model_version if use_grpc
                           else result.get_response()["model_version"])
                answers[i].append((sent_in, constant, version))
                if total() % 20 == 0:
                    progress.set()
                await asyncio.sleep(0)
        finally:
            await client.close()

    async def wait_requests(count: int) -> None:
        for _ in range(max_requests):
            if total() >= count or total() >= max_requests:
                return
            progress.clear()
            await asyncio.wait_for(progress.wait(), timeout=60)

    async def swap() -> None:
        nonlocal phase
        control = httpaio.InferenceServerClient(process.http_url)
        grpc_control = grpcaio.InferenceServerClient(process.grpc_url)
        try:
            await wait_requests(40)
            staging = tmp_path / "staging"
            staging.mkdir()
            (staging / "model.onnx").write_bytes(add_constant_model(2))
            (repo / ADDER / "2").mkdir()
            _move_in(staging / "model.onnx", repo / ADDER / "2" / "model.onnx")
            await control.load_model(ADDER)
            phase = 2
            await wait_requests(total() + 100)
            await grpc_control.load_model(ADDER, config=json.dumps(_adder_json()),
                                          files={"file:3/model.onnx": add_constant_model(3)})
            phase = 3
        finally:
            await control.close()
            await grpc_control.close()

    await asyncio.wait_for(asyncio.gather(swap(), *(run_client(i) for i in range(4))), timeout=120)

    assert errors == [], f"{len(errors)} failed requests, first ones: {errors[:5]}\n{process.log()[-3000:]}"
    assert total() >= min_requests
    seen = {constant for client in answers for _, constant, _ in client}
    assert seen == {1, 2, 3}, seen
    for client in answers:
        for sent_in, constant, version in client:
            assert version == str(constant), (sent_in, constant, version)
            assert constant >= sent_in, f"a request sent after version {sent_in} was loaded got version {constant}"
        constants = [c for _, c, _ in client]
        assert constants == sorted(constants), "a client got an older version after a newer one"
        assert constants[-1] == 3
    sync = httpclient.InferenceServerClient(process.http_url)
    try:
        out, version = _http_add(sync, ADDER, X)
        np.testing.assert_array_equal(out, X + 3)
        assert version == "3"
        assert not sync.is_model_ready(ADDER, "1") and not sync.is_model_ready(ADDER, "2")
    finally:
        sync.close()


# ---- a failed reload ----

def test_failed_reload_keeps_the_previous_version_serving(tmp_path: Path, server_log: Path,
                                                          servers: list[ServerProcess]) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    _add_adder(repo)
    process = _serve(servers, repo, server_log, "--model-control-mode=explicit", "--load-model", "*")
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)

    def still_serving() -> None:
        assert http.is_model_ready(SIMPLE) and grpc.is_model_ready(SIMPLE)
        _simple_answers(http, httpclient, batch=8)
        _simple_answers(grpc, grpcclient)
        assert http.get_model_config(SIMPLE)["max_batch_size"] == 8
        assert _triton_rows(_index(process)[SIMPLE]) == [{"name": SIMPLE, "version": "1", "state": "READY",
                                                          "reason": ""}]

    try:
        good = http.get_model_config(SIMPLE)
        # A config that does not validate: a dimension of 0.
        bad_dims = json.loads(json.dumps(good))
        bad_dims["max_batch_size"] = 2
        bad_dims["input"][0]["dims"] = [0]
        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.load_model(SIMPLE, config=json.dumps(bad_dims))
        assert exc.value.status() == "400"
        assert "INPUT0" in exc.value.message() and "dim" in exc.value.message()
        still_serving()

        # A config the model file contradicts: it only fails when the model is loaded.
        bad_type = json.loads(json.dumps(good))
        bad_type["max_batch_size"] = 2
        for tensor in bad_type["input"]:
            tensor["data_type"] = "TYPE_FP32"
        with pytest.raises(grpcclient.InferenceServerException) as grpc_exc:
            grpc.load_model(SIMPLE, config=json.dumps(bad_type))
        assert grpc_exc.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "INPUT" in grpc_exc.value.message()
        still_serving()

        # Not a model configuration at all.
        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.load_model(SIMPLE, config=json.dumps({"max_batch_size": "many", "no_such_field": 1}))
        assert exc.value.status() == "400"
        assert exc.value.message()
        still_serving()

        # A model file that is not ONNX.
        with pytest.raises(grpcclient.InferenceServerException) as grpc_exc:
            grpc.load_model(SIMPLE, config=json.dumps(good), files={"file:1/model.onnx": b"not an onnx model"})
        assert grpc_exc.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert SIMPLE in grpc_exc.value.message()
        still_serving()

        # A repository change that breaks the model: the reload fails, version 1 keeps serving.
        (repo / ADDER / "2").mkdir()
        (repo / ADDER / "2" / "model.onnx").write_bytes(b"broken")
        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.load_model(ADDER)
        assert exc.value.status() == "400"
        assert "version 2" in exc.value.message() or "model.onnx" in exc.value.message()
        out, version = _grpc_add(grpc, ADDER, X)
        np.testing.assert_array_equal(out, X + 1)
        assert version == "1"

        # A good reload afterwards works.
        http.load_model(SIMPLE)
        still_serving()
    finally:
        http.close()
        grpc.close()


# ---- unload with requests in flight ----

SLOW_ROUNDS = 4000  # a couple of seconds of work per request on a small machine


def _pending(process: ServerProcess, model: str) -> float:
    """Triton's nv_inference_pending_request_count for a model (0 when the metric has no sample)."""
    text = httpx.get(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("nv_inference_pending_request_count{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_unload_lets_requests_in_flight_finish_and_refuses_new_ones(tmp_path: Path, server_log: Path,
                                                                     servers: list[ServerProcess]) -> None:
    repo = tmp_path / "models"
    add_slow(repo)
    add_simple(repo)
    process = _serve(servers, repo, server_log, "--model-control-mode=explicit", "--load-model", "*")
    results: dict[str, Any] = {}

    def slow_inputs(module: Any, x: np.ndarray) -> list[Any]:
        return [make_input(module, "INPUT0", x, "FP32"),
                make_input(module, "DELAY", np.array([SLOW_ROUNDS], dtype=np.int64), "INT64")]

    def over_http() -> None:
        client = httpclient.InferenceServerClient(process.http_url, network_timeout=120)
        x = np.array([1, 2, 3, 4], dtype=np.float32)
        try:
            results["http"] = (x, client.infer(SLOW, slow_inputs(httpclient, x)).as_numpy("OUTPUT0"))
        except Exception as exc:
            results["http"] = exc
        finally:
            client.close()

    def over_grpc() -> None:
        client = grpcclient.InferenceServerClient(process.grpc_url)
        x = np.array([5, 6, 7, 8], dtype=np.float32)
        try:
            results["grpc"] = (x, client.infer(SLOW, slow_inputs(grpcclient, x), client_timeout=120)
                               .as_numpy("OUTPUT0"))
        except Exception as exc:
            results["grpc"] = exc
        finally:
            client.close()

    requests = [threading.Thread(target=over_http), threading.Thread(target=over_grpc)]
    for thread in requests:
        thread.start()
    _wait_for(lambda: _pending(process, SLOW) >= 2 or len(results) == 2, "both slow requests reached the server",
              process)

    unload_error: list[BaseException] = []

    def unload() -> None:
        client = grpcclient.InferenceServerClient(process.grpc_url)
        try:
            client.unload_model(SLOW)
        except BaseException as exc:
            unload_error.append(exc)
        finally:
            client.close()

    unloading = threading.Thread(target=unload)
    unloading.start()
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        _wait_for(lambda: not http.is_model_ready(SLOW), "slow is no longer ready once its unload began", process)
        # New requests are refused as for a model that is not loaded (in flight ones or not).
        x = np.zeros(4, dtype=np.float32)
        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.infer(SLOW, slow_inputs(httpclient, x))
        assert exc.value.status() in ("400", "404", "503")
        assert SLOW in exc.value.message()
        with pytest.raises(grpcclient.InferenceServerException) as grpc_exc:
            grpc.infer(SLOW, slow_inputs(grpcclient, x))
        assert grpc_exc.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
        assert SLOW in grpc_exc.value.message()

        unloading.join(timeout=90)
        assert not unloading.is_alive()
        assert unload_error == []
        for thread in requests:
            thread.join(timeout=90)
            assert not thread.is_alive()
        for protocol in ("http", "grpc"):
            outcome = results[protocol]
            assert not isinstance(outcome, Exception), f"{protocol}: {outcome!r}\n{process.log()}"
            sent, got = outcome
            np.testing.assert_array_equal(got, sent)
        assert not grpc.is_model_ready(SLOW)
        rows = _index(process)
        assert _states(rows, SLOW) == ["UNAVAILABLE"]
        # The other model was not disturbed.
        _simple_answers(grpc, grpcclient)
    finally:
        http.close()
        grpc.close()


# ---- path safety of the load API ----

def _grpc_load_raw(process: ServerProcess, name: str, config: str | None,
                   files: dict[str, bytes]) -> grpcclient.InferenceServerException:
    client = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        with pytest.raises(grpcclient.InferenceServerException) as exc:
            client.load_model(name, config=config, files=files)
        return exc.value
    finally:
        client.close()


def test_path_traversal_in_load_requests_is_refused(tmp_path: Path, server_log: Path,
                                                    servers: list[ServerProcess],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`file:` paths and model names that lead outside the model folder are refused, and nothing is written
    outside: neither next to the repository nor in the server's temporary folder (TMPDIR, under our control)."""
    outside = tmp_path / "outside"  # the folder the attempts aim at
    server_tmp = outside / "server-tmp"
    server_tmp.mkdir(parents=True)
    repo = tmp_path / "models"
    add_simple(repo)
    monkeypatch.setenv("TMPDIR", str(server_tmp))
    process = _serve(servers, repo, server_log, "--model-control-mode=explicit", "--load-model", SIMPLE)
    monkeypatch.undo()
    before = _tree(tmp_path)
    model = add_constant_model(1)
    config = json.dumps(_adder_json("victim"))
    http = httpclient.InferenceServerClient(process.http_url)
    try:
        # `file:` paths leading out of the model folder.
        for path in ("../../evil.txt", "../evil.txt", "1/../../x.txt", "1/../../../../evil.txt",
                     str(outside / "abs.txt"), "/tmp/inferd-abs-evil.txt", "..\\..\\evil.txt", "1/./../../y.txt"):
            files = {"file:1/model.onnx": model, f"file:{path}": b"evil"}
            with pytest.raises(httpclient.InferenceServerException) as exc:
                http.load_model("victim", config=config, files=files)
            assert exc.value.status() == "400", path
            assert exc.value.message(), path
            grpc_error = _grpc_load_raw(process, "victim", config, files)
            assert grpc_error.status() == "StatusCode.INVALID_ARGUMENT", (path, grpc_error)
        assert not Path("/tmp/inferd-abs-evil.txt").exists()
        assert not http.is_model_ready("victim")

        # Model names that are not one folder name, in the load URL (percent-encoded) and over gRPC. Every
        # attempt is made before the checks, so that one failure shows all the refusals that are missing.
        wrong: list[str] = []
        upload = {"config": json.dumps(_adder_json("x")), "file:1/model.onnx": base64.b64encode(model).decode()}
        for encoded in ("%2e%2e%2fx", "%2E%2E%2F%2E%2E%2Fx", "a%2Fb", "%2e%2e", "..%2fx"):
            for body in ({}, {"parameters": {"config": upload["config"]}}, {"parameters": upload}):
                for action in ("load", "unload"):
                    response = httpx.post(f"{process.base_url}/v2/repository/models/{encoded}/{action}",
                                          json=body, timeout=30)
                    if response.status_code not in (400, 404) or not response.json().get("error"):
                        wrong.append(f"HTTP {action} {encoded} with {sorted(body.get('parameters', {}))}: "
                                     f"{response.status_code} {response.text}")
        backend_only = json.dumps({"backend": "onnxruntime"})
        for name in ("../x", "../../x", "a/b", "..", str(outside / "absolute")):
            for config_text, files in ((None, {}), (backend_only, {}), (backend_only, {"file:1/model.onnx": model})):
                grpc_client = grpcclient.InferenceServerClient(process.grpc_url)
                try:
                    grpc_client.load_model(name, config=config_text, files=files)
                    wrong.append(f"gRPC load {name!r} with {sorted(files)}: succeeded")
                except grpcclient.InferenceServerException as grpc_exc:
                    if grpc_exc.status() not in GRPC_CLIENT_ERRORS:
                        wrong.append(f"gRPC load {name!r} with {sorted(files)}: {grpc_exc.status()} "
                                     f"{grpc_exc.message()}")
                finally:
                    grpc_client.close()
        # Nothing was created outside the per-load folders, and no model with such a name is served.
        load_folders = str((server_tmp / "inferd-load-").relative_to(tmp_path))
        wrong += [f"written outside the per-load folders: {p}"
                  for p in sorted(_tree(tmp_path) - before) if not p.startswith(load_folders)]
        assert wrong == [], "\n".join(wrong)
        for entry in server_tmp.iterdir():
            if entry.is_file() and entry.name.startswith(".") and entry.stat().st_size < 1024:
                continue  # a session marker some sandboxes write into every process's TMPDIR, not inferd's
            assert entry.name.startswith("inferd-load-"), f"written outside a per-load folder: {entry}"
            for inside in entry.iterdir():
                assert inside.name in ("victim", "x"), f"unexpected entry of a per-load folder: {inside}"
        assert set(_index(process)) == {SIMPLE}
        assert set(_index(process, ready=True)) == {SIMPLE}
        _simple_answers(http, httpclient)
    finally:
        http.close()


def _triton_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Index rows in Triton's fields; inferd adds each model's measured `memory_bytes` (an int) beside them."""
    for row in rows:
        assert isinstance(row.get("memory_bytes", 0), int)
    return [{k: v for k, v in row.items() if k != "memory_bytes"} for row in rows]
