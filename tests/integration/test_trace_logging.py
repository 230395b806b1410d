"""Triton's trace and logging extensions over HTTP and gRPC: the settings change what the server really writes.

Each test starts its own `inferd serve` with a trace file and a log file, changes settings through the API and
reads the files: sampled requests leave Triton-style trace records, verbose logging adds a line per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from clients import simple_data, simple_inputs
from models import AUTO, SIMPLE, add_auto, add_simple
from serving import ServerProcess, start_server

STAGES = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
          "COMPUTE_END", "REQUEST_END"]


@dataclass
class Served:
    process: ServerProcess
    trace_file: Path
    log_file: Path

    @property
    def url(self) -> str:
        return self.process.base_url


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("trace_logging") / "models"
    repo.mkdir()
    add_simple(repo)
    add_auto(repo)
    return repo


def _serve(repository: Path, folder: Path) -> Served:
    trace_file, log_file = folder / "trace.json", folder / "inferd.log"
    process = start_server(repository, folder / "server.out", "--trace-config", f"triton,file={trace_file}",
                           "--trace-config", "rate=1", "--log-file", str(log_file))
    return Served(process, trace_file, log_file)


@pytest.fixture
def served(repository: Path, tmp_path: Path) -> Iterator[Served]:
    """A server with a trace file (tracing OFF until the API turns it on, every request once on) and a log file."""
    served = _serve(repository, tmp_path)
    yield served
    served.process.stop()


@pytest.fixture(scope="module")
def unchanged(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the tests whose requests are all rejected (so its settings stay as they started)."""
    served = _serve(repository, tmp_path_factory.mktemp("rejected"))
    yield served
    served.process.stop()


def traced_ids(trace_file: Path) -> list[str]:
    """The request ids of the trace records, in order (the file is a JSON array after every write)."""
    if not trace_file.exists():
        return []
    return [record["request_id"] for record in json.loads(trace_file.read_text())]


def infer_http(url: str, request_id: str, model: str = SIMPLE) -> None:
    if model == SIMPLE:
        a, b = simple_data(1)
        inputs = [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": a.ravel().tolist()},
                  {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": b.ravel().tolist()}]
    else:
        inputs = [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]
    response = httpx.post(f"{url}/v2/models/{model}/infer", json={"id": request_id, "inputs": inputs}, timeout=30)
    assert response.status_code == 200, response.text


def infer_grpc(client: grpcclient.InferenceServerClient, request_id: str) -> None:
    a, b = simple_data(1)
    client.infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id=request_id)


def post(url: str, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = httpx.post(f"{url}{path}", json=body, timeout=10)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    return result


def get(url: str, path: str) -> dict[str, Any]:
    response = httpx.get(f"{url}{path}", timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# ---- trace ----

def test_http_trace_settings_decide_which_requests_are_traced(served: Served) -> None:
    url = served.url
    assert {"trace", "logging"} <= set(get(url, "/v2")["extensions"])
    assert get(url, "/v2/trace/setting") == {
        "trace_level": ["OFF"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "0",
        "trace_file": str(served.trace_file), "trace_mode": "triton"}
    infer_http(url, "off-1")
    assert traced_ids(served.trace_file) == []

    assert post(url, "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]})["trace_level"] == ["TIMESTAMPS"]
    infer_http(url, "on-1")
    infer_http(url, "on-2")
    records = json.loads(served.trace_file.read_text())
    assert [r["request_id"] for r in records] == ["on-1", "on-2"]
    for record in records:
        assert (record["model_name"], record["model_version"]) == (SIMPLE, 1)
        assert [t["name"] for t in record["timestamps"]] == STAGES
        times = [t["ns"] for t in record["timestamps"]]
        assert times == sorted(times)
    assert records[0]["id"] != records[1]["id"]

    # Every 2nd request, 2 traces at most: of r-0 .. r-5 only r-1 and r-3; then none are left.
    settings = post(url, "/v2/trace/setting", {"trace_rate": "2", "trace_count": "2"})
    assert (settings["trace_rate"], settings["trace_count"]) == ("2", "2")
    for i in range(6):
        infer_http(url, f"r-{i}")
    assert traced_ids(served.trace_file) == ["on-1", "on-2", "r-1", "r-3"]
    assert get(url, "/v2/trace/setting")["trace_count"] == "0"

    post(url, "/v2/trace/setting", {"trace_count": "-1", "trace_rate": "1", "trace_level": ["OFF"]})
    infer_http(url, "off-2")
    assert traced_ids(served.trace_file) == ["on-1", "on-2", "r-1", "r-3"]


def test_http_model_trace_settings_override_the_global_ones(served: Served) -> None:
    url = served.url
    post(url, "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]})
    own = post(url, f"/v2/models/{SIMPLE}/trace/setting", {"trace_level": ["OFF"]})
    assert own["trace_level"] == ["OFF"] and own["trace_rate"] == "1"  # the rest copied from the global settings
    assert get(url, "/v2/trace/setting")["trace_level"] == ["TIMESTAMPS"]
    assert get(url, f"/v2/models/{AUTO}/trace/setting")["trace_level"] == ["TIMESTAMPS"]
    infer_http(url, "simple-1")
    infer_http(url, "auto-1", AUTO)
    assert traced_ids(served.trace_file) == ["auto-1"]

    # null clears the model's own value: it follows the global setting again.
    assert post(url, f"/v2/models/{SIMPLE}/trace/setting", {"trace_level": None})["trace_level"] == ["TIMESTAMPS"]
    infer_http(url, "simple-2")
    assert traced_ids(served.trace_file) == ["auto-1", "simple-2"]


@pytest.mark.parametrize("path, body, message", [
    ("/v2/trace/setting", {"trace_file": "/tmp/elsewhere.json"}, "can not be updated through network protocol"),
    ("/v2/trace/setting", {"trace_level": ["OFF", "TIMESTAMPS"]}, "only one trace level 'OFF'"),
    ("/v2/trace/setting", {"trace_level": ["LOUD"]}, "unknown trace level"),
    ("/v2/trace/setting", {"trace_rate": "often"}, "Unable to parse 'trace_rate'"),
    ("/v2/trace/setting", {"trace_count": "-2"}, "Unable to parse 'trace_count'"),
    ("/v2/models/no_such_model/trace/setting", {}, "Request for unknown model : no_such_model"),
])
def test_bad_trace_settings_are_rejected(unchanged: Served, path: str, body: dict[str, Any], message: str) -> None:
    assert message in post(unchanged.url, path, body, status=400)["error"]
    assert get(unchanged.url, "/v2/trace/setting")["trace_level"] == ["OFF"]


def test_grpc_trace_settings(served: Served) -> None:
    with grpcclient.InferenceServerClient(served.process.grpc_url) as client:
        settings = client.get_trace_settings(as_json=True)["settings"]
        assert settings["trace_level"]["value"] == ["OFF"]
        assert settings["trace_file"]["value"] == [str(served.trace_file)]

        updated = client.update_trace_settings(model_name=SIMPLE, settings={"trace_level": ["TIMESTAMPS"]},
                                               as_json=True)["settings"]
        assert updated["trace_level"]["value"] == ["TIMESTAMPS"]
        assert client.get_trace_settings(as_json=True)["settings"]["trace_level"]["value"] == ["OFF"]
        infer_grpc(client, "grpc-1")
        infer_http(served.url, "auto-1", AUTO)  # its model is not traced
        assert traced_ids(served.trace_file) == ["grpc-1"]

        client.update_trace_settings(model_name=SIMPLE, settings={"trace_level": None})  # follow global: OFF
        infer_grpc(client, "grpc-2")
        assert traced_ids(served.trace_file) == ["grpc-1"]

        with pytest.raises(InferenceServerException, match="can not be updated through network protocol") as exc:
            client.update_trace_settings(settings={"trace_file": "/tmp/elsewhere.json"})
        assert exc.value.status() == "StatusCode.UNIMPLEMENTED"  # as Triton
        with pytest.raises(InferenceServerException, match="Request for unknown model"):
            client.get_trace_settings(model_name="no_such_model")


def test_tritonclient_http_trace_settings(served: Served) -> None:
    client = httpclient.InferenceServerClient(served.process.http_url)
    try:
        assert client.get_trace_settings()["trace_level"] == ["OFF"]
        assert client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS", "TENSORS"]})["trace_level"] == \
            ["TIMESTAMPS", "TENSORS"]
        a, b = simple_data(1)
        client.infer(SIMPLE, simple_inputs(httpclient, a, b), request_id="tensors-1")
    finally:
        client.close()
    [record] = json.loads(served.trace_file.read_text())
    tensors = {(t["activity"], t["name"]): t for t in record["tensors"]}
    assert tensors[("TENSOR_BACKEND_INPUT", "INPUT0")]["data"] == a.ravel().tolist()
    assert tensors[("TENSOR_BACKEND_OUTPUT", "OUTPUT0")]["data"] == (a + b).ravel().tolist()
    assert tensors[("TENSOR_BACKEND_OUTPUT", "OUTPUT0")]["datatype"] == "INT32"


def test_bad_trace_config_stops_the_server(repository: Path, tmp_path: Path) -> None:
    process = ServerProcess(repository, tmp_path / "server.out", "--trace-config", "level=TIMESTAMPS")
    assert process.wait_exit() == 1
    assert "needs a trace file" in process.log()


# ---- logging ----

def request_lines(log_file: Path, request_id: str) -> list[str]:
    return [line for line in log_file.read_text().splitlines() if f"request '{request_id}'" in line]


def test_http_log_settings_change_verbosity(served: Served) -> None:
    url = served.url
    assert get(url, "/v2/logging") == {"log_file": str(served.log_file), "log_info": True, "log_warning": True,
                                       "log_error": True, "log_verbose_level": 0, "log_format": "default"}
    assert "started HTTPService" in served.log_file.read_text()  # the log goes to --log-file
    infer_http(url, "quiet-1")
    assert request_lines(served.log_file, "quiet-1") == []

    assert post(url, "/v2/logging", {"log_verbose_level": 1})["log_verbose_level"] == 1
    infer_http(url, "loud-1")
    [line] = request_lines(served.log_file, "loud-1")
    assert "DEBUG" in line and f"model '{SIMPLE}' version 1: ok" in line

    post(url, "/v2/logging", {"log_format": "ISO8601"})
    infer_http(url, "loud-2")
    [line] = request_lines(served.log_file, "loud-2")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line), line

    assert post(url, "/v2/logging", {"log_verbose_level": 0})["log_verbose_level"] == 0
    infer_http(url, "quiet-2")
    assert request_lines(served.log_file, "quiet-2") == []


@pytest.mark.parametrize("body, message", [
    ({"log_file": "/tmp/elsewhere.log"}, "log file location can not be updated through network protocol"),
    ({"log_info": "yes"}, "expect boolean for 'log_info'"),
    ({"log_verbose_level": -1}, "expect an unsigned integer"),
    ({"log_format": "fancy"}, "invalid argument for log_format"),
    ({"log_warnings": False}, "unknown log setting"),
])
def test_bad_log_settings_are_rejected(unchanged: Served, body: dict[str, Any], message: str) -> None:
    assert message in post(unchanged.url, "/v2/logging", body, status=400)["error"]
    assert get(unchanged.url, "/v2/logging")["log_verbose_level"] == 0


def test_grpc_log_settings_change_verbosity(served: Served) -> None:
    with grpcclient.InferenceServerClient(served.process.grpc_url) as client:
        settings = client.get_log_settings(as_json=True)["settings"]
        assert settings["log_file"]["string_param"] == str(served.log_file)
        assert settings["log_info"]["bool_param"] is True

        client.update_log_settings({"log_verbose_level": 1})
        assert client.get_log_settings(as_json=True)["settings"]["log_verbose_level"]["uint32_param"] == 1
        infer_grpc(client, "grpc-loud")
        assert len(request_lines(served.log_file, "grpc-loud")) == 1

        client.update_log_settings({"log_verbose_level": 0, "log_warning": False})
        settings = client.get_log_settings(as_json=True)["settings"]
        assert settings["log_warning"]["bool_param"] is False
        infer_grpc(client, "grpc-quiet")
        assert request_lines(served.log_file, "grpc-quiet") == []

        with pytest.raises(InferenceServerException, match="log file location") as exc:
            client.update_log_settings({"log_file": "/tmp/elsewhere.log"})
        assert exc.value.status() == "StatusCode.UNIMPLEMENTED"  # as Triton


def test_tritonclient_http_log_settings(served: Served) -> None:
    client = httpclient.InferenceServerClient(served.process.http_url)
    try:
        assert client.update_log_settings({"log_verbose_level": 2})["log_verbose_level"] == 2
        assert client.get_log_settings()["log_verbose_level"] == 2
    finally:
        client.close()
    infer_http(served.url, "tc-loud")
    assert len(request_lines(served.log_file, "tc-loud")) == 1
