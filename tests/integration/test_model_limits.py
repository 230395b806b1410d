"""Per-model limits of config.pbtxt, served by a real `inferd serve`: `request_timeout_ms` and
`instance_memory_limit_bytes` on Python models (each instance in a process of its own).

A model that hangs on demand gets its request failed at the timeout (504 / DEADLINE_EXCEEDED), its process killed
and replaced, and other models go on answering meanwhile; a model that allocates what it is asked gets a memory
error naming the limit past it, and a fresh process for the next call. Bad values are load errors.
"""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients import infer_tensors, unavailable_reason
from serving import ServerProcess, start_server

HANG = "limit_hang"  # hangs when its input is 1; request_timeout_ms 300, no batching
HANG_BATCHED = "limit_hang_batched"  # the same behind a dynamic batcher
OTHER = "limit_other"  # a plain model, no limits
ALLOC = "limit_alloc"  # allocates the bytes its input asks for; instance_memory_limit_bytes 300 MB
LOAD_OVER = "limit_load_over"  # allocates 1 GB as it loads, with a limit of 300 MB
BAD = {"limit_bad_timeout": ("request_timeout_ms", "soon"), "limit_zero_timeout": ("request_timeout_ms", "0"),
       "limit_bad_memory": ("instance_memory_limit_bytes", "-5")}
TIMEOUT_MS = 300
LIMIT = 300_000_000
WAIT_S = 60.0

HANG_PY = """
    import os
    import time

    import numpy as np


    class Model:
        def predict(self, inputs):
            if int(inputs["x"].reshape(-1)[0]) == 1:
                time.sleep(3600)  # hung: the request timeout ends this process
            return {"pid": np.full(inputs["x"].shape, os.getpid(), dtype=np.int64)}
"""

ALLOC_PY = """
    import os

    import numpy as np


    class Model:
        def predict(self, inputs):
            block = np.ones(int(inputs["x"][0]), dtype=np.uint8)
            return {"pid": np.array([os.getpid()], dtype=np.int64) + 0 * int(block[-1])}
"""

LOAD_OVER_PY = """
    import numpy as np


    class Model:
        def load(self):
            self.weights = np.ones(1_000_000_000, dtype=np.uint8)

        def predict(self, inputs):
            return {"pid": inputs["x"].astype(np.int64)}
"""

CONFIG = """
    backend: "python"
    {batching}
    input [ {{ name: "x" data_type: {dtype} dims: [ 1 ] }} ]
    output [ {{ name: "pid" data_type: TYPE_INT64 dims: [ 1 ] }} ]
    {parameters}
"""


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'


def _write(repo: Path, name: str, model_py: str, *, parameters: str = "", batched: bool = False,
           dtype: str = "TYPE_INT32") -> None:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent(model_py))
    batching = "max_batch_size: 4\ndynamic_batching { }" if batched else ""
    (repo / name / "config.pbtxt").write_text(textwrap.dedent(CONFIG).format(
        batching=batching, dtype=dtype, parameters=parameters))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("model-limits") / "models"
    timeout = _parameter("request_timeout_ms", str(TIMEOUT_MS))
    _write(repo, HANG, HANG_PY, parameters=timeout)
    _write(repo, HANG_BATCHED, HANG_PY, parameters=timeout, batched=True)
    _write(repo, OTHER, HANG_PY)
    _write(repo, ALLOC, ALLOC_PY, parameters=_parameter("instance_memory_limit_bytes", str(LIMIT)),
           dtype="TYPE_INT64")
    _write(repo, LOAD_OVER, LOAD_OVER_PY, parameters=_parameter("instance_memory_limit_bytes", str(LIMIT)))
    for name, (key, value) in BAD.items():
        _write(repo, name, HANG_PY, parameters=_parameter(key, value))
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-limits.log", "--strict-readiness=false")
    deadline = time.monotonic() + WAIT_S
    while not all(_ready(process, m) for m in (HANG, HANG_BATCHED, OTHER, ALLOC)) or _loading(process):
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.1)
    yield process
    process.stop()


def _loading(server: ServerProcess) -> bool:
    rows = httpx.post(f"{server.base_url}/v2/repository/index", timeout=30).json()
    return any(row.get("state") == "LOADING" for row in rows)


def _ready(server: ServerProcess, model: str) -> bool:
    return httpx.get(f"{server.base_url}/v2/models/{model}/ready", timeout=30).status_code == 200


def _post(server: ServerProcess, model: str, value: int, datatype: str = "INT32") -> httpx.Response:
    shape = [1, 1] if model == HANG_BATCHED else [1]
    payload: dict[str, Any] = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": [value]}]}
    return httpx.post(f"{server.base_url}/v2/models/{model}/infer", json=payload, timeout=WAIT_S)


def _pid(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return int(response.json()["outputs"][0]["data"][0])


@pytest.mark.parametrize("model", [HANG, HANG_BATCHED])
def test_a_hung_request_times_out_and_the_instance_is_replaced(server: ServerProcess, model: str) -> None:
    before = _pid(_post(server, model, 0))
    others: list[float] = []

    def call_other() -> None:  # while the model hangs, another model answers at once
        time.sleep(0.1)
        start = time.monotonic()
        _pid(_post(server, OTHER, 0))
        others.append(time.monotonic() - start)

    thread = threading.Thread(target=call_other)
    thread.start()
    start = time.monotonic()
    response = _post(server, model, 1)
    elapsed = time.monotonic() - start
    thread.join()
    assert response.status_code == 504, response.text
    assert f"did not answer within {TIMEOUT_MS} ms (request_timeout_ms)" in response.json()["error"], response.text
    assert f"'{model}'" in response.json()["error"]
    assert 0.25 <= elapsed < 2.0, elapsed
    assert others and others[0] < 1.0, others
    after = _answer_after_restart(server, model)  # a fresh process (the hung one was killed) answers
    assert after != before


def _answer_after_restart(server: ServerProcess, model: str) -> int:
    """The pid of the first answer: requests made while the new process loads (slower than the timeout here)
    time out as well."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = _post(server, model, 0)
        if response.status_code == 200 or time.monotonic() > deadline:
            return _pid(response)
        assert response.status_code == 504 and "request_timeout_ms" in response.text, response.text


def test_a_hung_request_over_grpc_is_deadline_exceeded(server: ServerProcess) -> None:
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as caught:
        infer_tensors("grpc", server, HANG, {"x": (np.array([1], dtype=np.int32), "INT32")}, ["pid"])
    assert time.monotonic() - start < 2.0
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED", caught.value
    assert "request_timeout_ms" in str(caught.value)
    assert _answer_after_restart(server, HANG) > 0


def test_an_allocation_past_the_memory_limit_fails_and_the_instance_is_replaced(server: ServerProcess) -> None:
    before = _pid(_post(server, ALLOC, 50_000_000, "INT64"))
    response = _post(server, ALLOC, 1_000_000_000, "INT64")
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert f"model '{ALLOC}' went over its memory limit of {LIMIT} bytes" in error, error
    assert "instance_memory_limit_bytes" in error
    after = _pid(_post(server, ALLOC, 1000, "INT64"))
    assert after != before
    assert _pid(_post(server, ALLOC, 50_000_000, "INT64")) == after


@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid_limits_are_load_errors(server: ServerProcess, name: str) -> None:
    key, value = BAD[name]
    reason = unavailable_reason(server.base_url, name)
    assert f"parameter '{key}' must be a positive integer, got '{value}'" in reason, reason
    assert "\n" not in reason


def test_a_load_past_the_memory_limit_names_it(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, LOAD_OVER)
    assert "MemoryError" in reason and f"memory limit {LIMIT} bytes" in reason, reason
