"""Model states in a repository with broken models, readiness flags, start-up failures and shutdown."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from clients import make_input, simple_data, simple_inputs
from models import (
    AUTO,
    BAD_DIMS,
    BAD_DTYPE,
    BROKEN,
    MISSING_FILE,
    NO_DTYPE,
    SIMPLE,
    SLOW,
    add_auto,
    add_broken,
    add_no_dtype,
    add_simple,
    add_slow,
)
from observing import metric, scrape
from serving import ServerProcess, start_server


def _index(base_url: str) -> dict[str, list[dict[str, str]]]:
    response = httpx.post(f"{base_url}/v2/repository/index", timeout=30)
    assert response.status_code == 200, response.text
    rows: dict[str, list[dict[str, str]]] = {}
    for row in response.json():
        rows.setdefault(row["name"], []).append(row)
    return rows


def _assert_unavailable(rows: dict[str, list[dict[str, str]]], name: str, *words: str) -> None:
    assert name in rows, f"{name} is missing from the index"
    for row in rows[name]:
        assert row["state"] == "UNAVAILABLE", row
        for word in words:
            assert word.lower() in row.get("reason", "").lower(), row


def _simple_works(base_url: str, batch: int = 4) -> None:
    client = httpclient.InferenceServerClient(base_url.removeprefix("http://"))
    try:
        a, b = simple_data(batch, seed=3)
        result = client.infer(SIMPLE, simple_inputs(httpclient, a, b))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()


# ---- the session server: broken models next to good ones ----

def test_broken_models_are_listed_unavailable_with_their_reason(server: ServerProcess) -> None:
    rows = _index(server.base_url)
    _assert_unavailable(rows, BROKEN, "not_a_field")
    _assert_unavailable(rows, BAD_DIMS, "INPUT0", "dim")
    _assert_unavailable(rows, MISSING_FILE, "model.onnx")
    assert [r["state"] for r in rows[SIMPLE]] == ["READY"]


def test_good_models_are_served_next_to_broken_ones(server: ServerProcess) -> None:
    _simple_works(server.base_url)
    for name in (BROKEN, BAD_DIMS, MISSING_FILE):
        response = httpx.get(f"{server.base_url}/v2/models/{name}/ready", timeout=30)
        assert response.status_code != 200, name


def test_inference_on_a_broken_model_is_refused(server: ServerProcess) -> None:
    doc = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}
                      for n in ("INPUT0", "INPUT1")]}
    response = httpx.post(f"{server.base_url}/v2/models/{BROKEN}/infer", json=doc, timeout=30)
    assert response.status_code in (400, 404, 503)
    assert BROKEN in response.json()["error"]


def test_config_datatype_contradicting_the_model_file_is_unavailable(server: ServerProcess) -> None:
    """The config says FP32 where the ONNX file has INT32: Triton refuses to load such a model."""
    rows = _index(server.base_url)
    _assert_unavailable(rows, BAD_DTYPE, "INPUT0")
    assert httpx.get(f"{server.base_url}/v2/models/{BAD_DTYPE}/ready", timeout=30).status_code != 200


def test_ready_without_strict_readiness(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/v2/health/ready", timeout=30).status_code == 200
    assert httpx.get(f"{server.base_url}/v2/health/live", timeout=30).status_code == 200


# ---- servers of their own ----

@pytest.fixture(scope="module")
def broken_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("broken-repo") / "models"
    add_simple(repo)
    add_broken(repo)
    return repo


@pytest.fixture(scope="module")
def good_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("good-repo") / "models"
    add_simple(repo)
    add_auto(repo)
    add_slow(repo)
    return repo


@pytest.fixture
def own_server() -> Iterator[list[ServerProcess]]:
    """Servers a test starts; whatever is still running at the end is stopped by its PID."""
    started: list[ServerProcess] = []
    yield started
    for process in started:
        process.stop()


def test_strict_readiness_is_the_default(broken_repository: Path, server_log: Path,
                                         own_server: list[ServerProcess]) -> None:
    process = start_server(broken_repository, server_log)
    own_server.append(process)
    assert httpx.get(f"{process.base_url}/v2/health/live", timeout=30).status_code == 200
    assert httpx.get(f"{process.base_url}/v2/health/ready", timeout=30).status_code == 400
    _assert_unavailable(_index(process.base_url), BROKEN, "not_a_field")
    _simple_works(process.base_url)  # not ready as a whole, yet its good models serve
    client = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        assert client.is_server_live() is True
        assert client.is_server_ready() is False
        assert client.is_model_ready(SIMPLE) is True
    finally:
        client.close()


def test_strict_readiness_with_every_model_loaded(good_repository: Path, server_log: Path,
                                                  own_server: list[ServerProcess]) -> None:
    # --exit-on-error (bare: true) has nothing to exit for here.
    process = start_server(good_repository, server_log, "--strict-readiness=true", "--exit-on-error")
    own_server.append(process)
    assert httpx.get(f"{process.base_url}/v2/health/ready", timeout=30).status_code == 200
    assert process.process.poll() is None
    _simple_works(process.base_url)


@pytest.mark.parametrize("flag", [["--exit-on-error=true"], ["--exit-on-error", "true"], ["--exit-on-error"]])
def test_exit_on_error(broken_repository: Path, server_log: Path, flag: list[str]) -> None:
    process = ServerProcess(broken_repository, server_log, *flag)
    try:
        code = process.wait_exit(timeout=60)
    finally:
        process.stop()
    assert code != 0
    log = process.log()
    assert BROKEN in log
    assert "UNAVAILABLE" in log


def test_disable_auto_complete_config(tmp_path: Path, server_log: Path, own_server: list[ServerProcess]) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    add_auto(repo)
    add_no_dtype(repo)
    process = start_server(repo, server_log, "--disable-auto-complete-config", "--strict-readiness=false",
                           "--allow-grpc=false")
    own_server.append(process)
    rows = _index(process.base_url)
    _assert_unavailable(rows, AUTO, "config.pbtxt")
    _assert_unavailable(rows, NO_DTYPE, "data_type")
    assert [r["state"] for r in rows[SIMPLE]] == ["READY"]
    assert httpx.get(f"{process.base_url}/v2/models/{AUTO}/ready", timeout=30).status_code != 200
    _simple_works(process.base_url)


# ---- shutdown ----

# Rounds of the slow model: about 3 s on the (2-core) machine these tests were written on; far longer than the
# pause before SIGTERM on any machine.
SLOW_ROUNDS = 5000


def _slow_inputs(module: Any, rounds: int, x: np.ndarray) -> list[Any]:
    return [make_input(module, "INPUT0", x, "FP32"),
            make_input(module, "DELAY", np.array([rounds], dtype=np.int64), "INT64")]


def _wait_pending(process: ServerProcess, model: str, count: int, clients: list[threading.Thread]) -> None:
    """Until the server counts `count` requests of the model in flight (its pending-request gauge); bounded."""
    deadline = time.monotonic() + 60
    while metric(scrape(process.metrics_port), "nv_inference_pending_request_count", model=model, version="1") < count:
        assert all(c.is_alive() for c in clients), "a request ended before the others arrived"
        assert time.monotonic() < deadline, f"never {count} requests of {model} in flight:\n{process.log()}"
        time.sleep(0.02)


def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(good_repository: Path, server_log: Path,
                                                                 own_server: list[ServerProcess]) -> None:
    process = start_server(good_repository, server_log)
    own_server.append(process)
    results: dict[str, Any] = {}

    def over_http() -> None:
        client = httpclient.InferenceServerClient(process.http_url, network_timeout=120)
        try:
            x = np.array([1, 2, 3, 4], dtype=np.float32)
            results["http"] = (x, client.infer(SLOW, _slow_inputs(httpclient, SLOW_ROUNDS, x)).as_numpy("OUTPUT0"))
        except Exception as exc:
            results["http"] = exc
        finally:
            client.close()

    def over_grpc() -> None:
        client = grpcclient.InferenceServerClient(process.grpc_url)
        try:
            x = np.array([5, 6, 7, 8], dtype=np.float32)
            results["grpc"] = (x, client.infer(SLOW, _slow_inputs(grpcclient, SLOW_ROUNDS, x)).as_numpy("OUTPUT0"))
        except Exception as exc:
            results["grpc"] = exc
        finally:
            client.close()

    threads = [threading.Thread(target=over_http), threading.Thread(target=over_grpc)]
    for thread in threads:
        thread.start()
    _wait_pending(process, SLOW, 2, threads)  # both requests are in the server; each then runs for seconds
    assert not results, f"too fast a machine: the slow requests finished before SIGTERM was sent: {results}"
    process.terminate()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    code = process.wait_exit(timeout=60)
    for protocol in ("http", "grpc"):
        outcome = results[protocol]
        assert not isinstance(outcome, Exception), f"{protocol}: {outcome!r}\n{process.log()}"
        sent, got = outcome
        np.testing.assert_array_equal(got, sent)
    assert code == 0, process.log()


# ---- model control over the network ----

def test_load_and_unload_are_refused_without_explicit_mode(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        with pytest.raises(httpclient.InferenceServerException) as exc:
            client.unload_model(SIMPLE)
        assert exc.value.status() != "200"
        assert exc.value.message()
        assert client.is_model_ready(SIMPLE)
    finally:
        client.close()
    _simple_works(server.base_url)


def test_explicit_model_control(tmp_path: Path, server_log: Path, own_server: list[ServerProcess]) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    add_auto(repo)
    add_broken(repo)
    process = start_server(repo, server_log, "--model-control-mode=explicit", "--load-model", SIMPLE)
    own_server.append(process)
    http = httpclient.InferenceServerClient(process.http_url)
    grpc = grpcclient.InferenceServerClient(process.grpc_url)
    try:
        assert http.is_model_ready(SIMPLE)
        assert not http.is_model_ready(AUTO)
        assert httpx.get(f"{process.base_url}/v2/health/ready", timeout=30).status_code == 200

        http.load_model(AUTO)
        assert grpc.is_model_ready(AUTO)
        x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
        np.testing.assert_array_equal(grpc.infer(AUTO, [make_input(grpcclient, "INPUT0", x, "FP32")])
                                      .as_numpy("OUTPUT0"), -x)

        grpc.unload_model(AUTO)
        assert not http.is_model_ready(AUTO)
        with pytest.raises(httpclient.InferenceServerException):
            http.infer(AUTO, [make_input(httpclient, "INPUT0", x, "FP32")])

        grpc.load_model(AUTO)
        assert http.is_model_ready(AUTO)

        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.load_model(BROKEN)
        assert exc.value.status() == "400"
        assert "not_a_field" in exc.value.message()
        with pytest.raises(grpcclient.InferenceServerException) as grpc_exc:
            grpc.load_model(BROKEN)
        assert grpc_exc.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.load_model("no_such_model")
        assert exc.value.status() in ("400", "404")

        # A config override through the load API: a smaller max_batch_size.
        config = http.get_model_config(SIMPLE)
        config["max_batch_size"] = 2
        http.load_model(SIMPLE, config=json.dumps(config))
        assert http.get_model_config(SIMPLE)["max_batch_size"] == 2
        a, b = simple_data(3)
        with pytest.raises(httpclient.InferenceServerException) as exc:
            http.infer(SIMPLE, simple_inputs(httpclient, a, b))
        assert exc.value.status() == "400"
        _simple_works(process.base_url, batch=2)
    finally:
        http.close()
        grpc.close()

