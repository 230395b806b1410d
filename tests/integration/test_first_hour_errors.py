"""The errors a new user meets in the first hour, as the user meets them: a real `inferd serve` on 127.0.0.1, asked
with tritonclient (HTTP and gRPC) and httpx. Each test checks the answer's key words, then that the server still
serves `simple`.

- a model file put beside config.pbtxt, with no numbered version folder: the reason says so and shows the layout;
  asking such an UNAVAILABLE model to infer answers with that reason;
- a misspelt input name: Triton's "unexpected inference input" naming it (and the inputs the model has);
- JSON values that do not fit the input's datatype: refused, naming the value (not truncated);
- `/docs/` (trailing slash): sends the browser to `/docs`, whose relative `openapi.json` then resolves;
- a port in use: one line naming the port and its flag, exit code 1, no traceback (`inferd serve` as a subprocess).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients import make_input, simple_data, simple_inputs
from models import (
    SIMPLE,
    SIMPLE_CONFIG,
    add_simple,
    identity_config,
    identity_model,
    identity_name,
    neg_model,
    simple_model,
    write_model,
)
from serving import HOST, INFERD, ServerProcess, start_server

LOOSE = "loose"  # config-less: model.onnx put directly in the model folder
LOOSE_CONFIG = "loose_config"  # config.pbtxt and resnet.onnx side by side, no version folder
NAMED = "named_folder"  # v1/model.onnx: a version folder not named by a number
LOOSE_SAVEDMODEL = "loose_savedmodel"  # saved_model.pb and variables/ where model.savedmodel/ should be
HALF = "half_missing"  # version_policy all: version 2 serves, version 1's folder lacks its model.onnx
BOOL = identity_name("BOOL")
PROTOCOLS = ("http", "grpc")


def _repository(root: Path) -> Path:
    repo = root / "models"
    add_simple(repo)
    write_model(repo, BOOL, identity_model("BOOL"), identity_config("BOOL"))
    (repo / LOOSE).mkdir()
    (repo / LOOSE / "model.onnx").write_bytes(neg_model())
    (repo / LOOSE_CONFIG).mkdir()
    (repo / LOOSE_CONFIG / "config.pbtxt").write_text(SIMPLE_CONFIG.replace(f'"{SIMPLE}"', f'"{LOOSE_CONFIG}"'))
    (repo / LOOSE_CONFIG / "resnet.onnx").write_bytes(simple_model())
    (repo / NAMED / "v1").mkdir(parents=True)
    (repo / NAMED / "v1" / "model.onnx").write_bytes(neg_model())
    (repo / LOOSE_SAVEDMODEL / "variables").mkdir(parents=True)
    (repo / LOOSE_SAVEDMODEL / "saved_model.pb").write_bytes(b"not read: the layout is refused first")
    half = SIMPLE_CONFIG.replace(f'"{SIMPLE}"', f'"{HALF}"') + "version_policy: { all { } }\n"
    write_model(repo, HALF, None, half, {1: None, 2: simple_model()})
    return repo


@pytest.fixture(scope="module")
def first_hour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("first-hour")
    process = start_server(_repository(root), root / "inferd.log", "--strict-readiness=false")
    yield process
    process.stop()


@pytest.fixture
def http(first_hour: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=first_hour.base_url, timeout=30) as client:
        yield client


def _client(protocol: str, server: ServerProcess) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def _module(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


def assert_serves(server: ServerProcess) -> None:
    """`simple` still answers (OUTPUT0 = INPUT0 + INPUT1) over both protocols."""
    a, b = simple_data(2, seed=7)
    for protocol in PROTOCOLS:
        client = _client(protocol, server)
        try:
            result = client.infer(SIMPLE, simple_inputs(_module(protocol), a, b))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        finally:
            client.close()


def _index_reason(http: httpx.Client, name: str) -> str:
    rows = http.post("/v2/repository/index").json()
    row = next(r for r in rows if r["name"] == name)
    assert row["state"] == "UNAVAILABLE", row
    return str(row["reason"])


# ---- no version folder ----

def test_model_file_beside_the_config_says_where_it_goes(first_hour: ServerProcess, http: httpx.Client) -> None:
    reason = _index_reason(http, LOOSE)
    assert "no version folder found" in reason
    assert f"{LOOSE}/1/model.onnx" in reason and "found: model.onnx" in reason
    # Not the old texts, which sent users looking at their config.
    assert "no known model file" not in reason and "at least one input" not in reason
    # The suffix's backend names the file it wants: resnet.onnx goes in as model.onnx.
    reason = _index_reason(http, LOOSE_CONFIG)
    assert "no version folder found" in reason
    assert f"{LOOSE_CONFIG}/1/model.onnx" in reason and "found: resnet.onnx" in reason
    assert "at least one input" not in reason
    # A version folder not named by a number, and a SavedModel's files without their folder.
    reason = _index_reason(http, NAMED)
    assert "no version folder found" in reason and f"{NAMED}/1/model.onnx" in reason and "found: v1" in reason
    reason = _index_reason(http, LOOSE_SAVEDMODEL)
    assert f"{LOOSE_SAVEDMODEL}/1/model.savedmodel/saved_model.pb" in reason
    assert "found: saved_model.pb, variables" in reason
    assert_serves(first_hour)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inferring_an_unavailable_model_gives_its_reason(first_hour: ServerProcess, protocol: str) -> None:
    client = _client(protocol, first_hour)
    module = _module(protocol)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(LOOSE, [make_input(module, "INPUT0", np.zeros((1, 4), np.float32), "FP32")])
    finally:
        client.close()
    message = caught.value.message()
    assert f"'{LOOSE}' has no available versions" in message  # Triton's words stay first
    assert "UNAVAILABLE" in message and "no version folder found" in message and f"{LOOSE}/1/model.onnx" in message
    assert_serves(first_hour)


def test_inferring_an_unavailable_version_gives_its_reason(first_hour: ServerProcess, http: httpx.Client) -> None:
    body = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                       for n in ("INPUT0", "INPUT1")]}
    assert http.post(f"/v2/models/{HALF}/infer", json=body).status_code == 200  # version 2 serves
    reply = http.post(f"/v2/models/{HALF}/versions/1/infer", json=body)
    assert reply.status_code == 404, reply.text
    message = reply.json()["error"]
    assert f"'{HALF}' version 1 is not found" in message
    assert "version 1 is UNAVAILABLE" in message and "model.onnx" in message
    assert_serves(first_hour)


def test_a_model_moved_into_its_version_folder_loads(tmp_path: Path, server_log: Path) -> None:
    """The layout the message shows is the one that serves (explicit mode: the user moves the file, then loads)."""
    repo = tmp_path / "models"
    (repo / LOOSE).mkdir(parents=True)
    (repo / LOOSE / "model.onnx").write_bytes(neg_model())
    server = start_server(repo, server_log, "--model-control-mode=explicit", "--load-model", LOOSE,
                          "--strict-readiness=false")
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            failed = http.post(f"/v2/repository/models/{LOOSE}/load")
            assert failed.status_code == 400 and "no version folder found" in failed.json()["error"]
            (repo / LOOSE / "1").mkdir()
            (repo / LOOSE / "model.onnx").rename(repo / LOOSE / "1" / "model.onnx")
            assert http.post(f"/v2/repository/models/{LOOSE}/load").status_code == 200
            reply = http.post(f"/v2/models/{LOOSE}/infer", json={"inputs": [
                {"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, -2, 3, -4]}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["outputs"][0]["data"] == [-1, 2, -3, 4]
    finally:
        server.stop()


# ---- a misspelt input name ----

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_input_name_is_named(first_hour: ServerProcess, protocol: str) -> None:
    module = _module(protocol)
    a, b = simple_data(1)
    client = _client(protocol, first_hour)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(SIMPLE, [make_input(module, "INPUT0", a, "INT32"), make_input(module, "INPUT_1", b, "INT32")])
    finally:
        client.close()
    message = caught.value.message()
    assert f"unexpected inference input 'INPUT_1' for model '{SIMPLE}'" in message
    assert "INPUT0, INPUT1" in message and "missing INPUT1" in message
    assert "expected 2 inputs but got 2 inputs" not in message
    assert_serves(first_hour)


# ---- values that do not fit the datatype ----

def _int32_body(values: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": values}
                       for n in ("INPUT0", "INPUT1")]}


@pytest.mark.parametrize(("values", "words"), [
    pytest.param([1.5] * 16, ("INT32", "integers", "1.5"), id="fraction-into-int32"),
    pytest.param([True] * 16, ("INT32", "integers", "true"), id="bool-into-int32"),
    pytest.param([2**31] * 16, ("out of the range of INT32", str(2**31)), id="int32-overflow"),
])
def test_json_value_that_does_not_fit_is_refused(first_hour: ServerProcess, http: httpx.Client,
                                                 values: list[Any], words: tuple[str, ...]) -> None:
    reply = http.post(f"/v2/models/{SIMPLE}/infer", json=_int32_body(values))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert "INPUT0" in error and all(word in error for word in words), error
    assert_serves(first_hour)


def test_number_into_bool_is_refused(first_hour: ServerProcess, http: httpx.Client) -> None:
    reply = http.post(f"/v2/models/{BOOL}/infer", json={"inputs": [
        {"name": "INPUT0", "datatype": "BOOL", "shape": [1, 2], "data": [1, 0]}]})
    assert reply.status_code == 400, reply.text
    assert "BOOL" in reply.json()["error"] and "true or false" in reply.json()["error"]
    assert_serves(first_hour)


# ---- /docs/ ----

def test_docs_with_a_trailing_slash_lands_on_the_page_that_loads(first_hour: ServerProcess,
                                                                 http: httpx.Client) -> None:
    reply = http.get("/docs/", follow_redirects=True)
    assert reply.status_code == 200 and "text/html" in reply.headers["content-type"]
    assert reply.url.path == "/docs"
    assert 'fetch("openapi.json")' in reply.text
    # What the page fetches, resolved against where the browser now is.
    document = http.get(reply.url.join("openapi.json"))
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.")
    assert_serves(first_hour)


# ---- a port in use ----

def _serve_on_busy_port(tmp_path: Path, flag: str, port: int) -> subprocess.CompletedProcess[str]:
    repo = tmp_path / "models"
    add_simple(repo)
    ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0", flag: str(port)}
    args = [str(INFERD), "serve", "--model-repository", str(repo), "--http-address", HOST, "--grpc-address", HOST]
    for name, value in ports.items():
        args += [name, value]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("flag", ["--http-port", "--grpc-port", "--metrics-port"])
def test_port_in_use_is_one_line_and_exit_code_1(tmp_path: Path, flag: str) -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = _serve_on_busy_port(tmp_path, flag, port)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output  # nothing loaded, nothing started: the one line
    assert f"{HOST}:{port}" in lines[0] and "already in use" in lines[0] and flag in lines[0]


def test_two_doors_on_one_port_is_said_as_such(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    add_simple(repo)
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = str(probe.getsockname()[1])
    done = subprocess.run([str(INFERD), "serve", "--model-repository", str(repo), "--http-address", HOST,
                           "--grpc-address", HOST, "--http-port", port, "--grpc-port", port, "--metrics-port", "0"],
                          capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output
    assert "--http-port names it too" in output and "--grpc-port" in output
