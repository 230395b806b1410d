"""Python models (`model.py`): inferd's own class API and Triton's python backend, served by a real `inferd serve`.

Each model runs in an instance process of its own. Outputs are compared with numpy computing the same thing in this
process; they are exact (the same float32 operations on the same values), so the comparisons are exact too. The
Triton add_sub model is NVIDIA's python-backend example as written for Triton (same calls, same config).
The crash tests kill a model's process in the middle of a request (SIGKILL, `os._exit`, a segfault) and check that
the request gets an error, the process comes back, and the server and the other models go on serving.
"""

from __future__ import annotations

import json
import os
import signal
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

from clients import infer_tensors
from serving import ServerProcess, start_server

MINIMAL = "py_minimal"  # inferd API, no config.pbtxt: I/O declared by the class, hooks, a sibling module
ASYNC = "py_async"  # inferd API, async load / predict, config.pbtxt
ADD_SUB = "add_sub"  # Triton's python backend example, unchanged
STRINGS = "py_strings"  # Triton API with BYTES tensors, the response sender and error responses
RAISES = "py_raises"  # inferd API whose predict raises
CRASH = "py_crash"  # dies on demand: hangs (to be killed), os._exit, segfault
SYNTAX = "py_syntax"  # model.py does not parse
NO_IO = "py_no_io"  # no config.pbtxt and no declared I/O
IMPORT_ERROR = "py_import_error"  # model.py imports a module that does not exist
INIT_FAILS = "py_init_fails"  # TritonPythonModel.initialize raises
PROTOCOLS = ["http", "grpc"]
WAIT_S = 60.0

MINIMAL_PY = """
    import os

    import numpy as np

    from scaling import FACTOR  # a module beside model.py


    class Doubler:
        inputs = [{"name": "x", "datatype": "FP32", "shape": [4]}]
        outputs = [
            {"name": "y", "datatype": "FP32", "shape": [4]},
            {"name": "model", "data_type": "TYPE_STRING", "dims": [1]},
            {"name": "pid", "datatype": "INT64", "shape": [1]},
        ]
        max_batch_size = 8

        def __init__(self, config):
            self.name = config["name"]
            self.loaded = False

        def load(self):
            self.loaded = True

        def preprocess(self, inputs):
            return {"x": inputs["x"] + np.float32(1)}

        def predict(self, inputs):
            assert self.loaded
            return {"y": inputs["x"] * np.float32(FACTOR)}

        def postprocess(self, outputs):
            rows = outputs["y"].shape[0]
            outputs["model"] = [[self.name]] * rows  # str: served as BYTES
            outputs["pid"] = np.full((rows, 1), os.getpid())
            return outputs
"""

ASYNC_PY = """
    import asyncio

    import numpy as np


    class Model:
        async def load(self):
            await asyncio.sleep(0)
            self.loop = asyncio.get_running_loop()

        async def predict(self, inputs):
            await asyncio.sleep(0.01)
            x = inputs["x"]
            return {
                "total": np.cumsum(x.astype(np.float64)),  # float64 here, FP32 in the config: converted
                "same_loop": np.array([asyncio.get_running_loop() is self.loop]),
            }
"""

ASYNC_CONFIG = """
    name: "py_async"
    backend: "python"
    input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [
      { name: "total" data_type: TYPE_FP32 dims: [ -1 ] },
      { name: "same_loop" data_type: TYPE_BOOL dims: [ 1 ] }
    ]
"""

# Triton's python_backend examples/add_sub: model.py and config.pbtxt as Triton serves them.
ADD_SUB_PY = """
    import json

    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.model_config = model_config = json.loads(args["model_config"])
            output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
            output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
            self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
            self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

        def execute(self, requests):
            output0_dtype = self.output0_dtype
            output1_dtype = self.output1_dtype
            responses = []
            for request in requests:
                in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
                in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
                out_0, out_1 = (
                    in_0.as_numpy() + in_1.as_numpy(),
                    in_0.as_numpy() - in_1.as_numpy(),
                )
                out_tensor_0 = pb_utils.Tensor("OUTPUT0", out_0.astype(output0_dtype))
                out_tensor_1 = pb_utils.Tensor("OUTPUT1", out_1.astype(output1_dtype))
                inference_response = pb_utils.InferenceResponse(output_tensors=[out_tensor_0, out_tensor_1])
                responses.append(inference_response)
            return responses

        def finalize(self):
            print("Cleaning up...")
"""

ADD_SUB_CONFIG = """
    name: "add_sub"
    backend: "python"

    input [
      {
        name: "INPUT0"
        data_type: TYPE_FP32
        dims: [ 4 ]
      }
    ]
    input [
      {
        name: "INPUT1"
        data_type: TYPE_FP32
        dims: [ 4 ]
      }
    ]
    output [
      {
        name: "OUTPUT0"
        data_type: TYPE_FP32
        dims: [ 4 ]
      }
    ]
    output [
      {
        name: "OUTPUT1"
        data_type: TYPE_FP32
        dims: [ 4 ]
      }
    ]

    instance_group [{ kind: KIND_CPU }]
"""

STRINGS_PY = """
    import json

    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            self.args = args
            pb_utils.Logger.log_info(f"initialized {args['model_name']} version {args['model_version']}")

        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
                words = [t.decode("utf-8") for t in texts.flat]
                if "fail" in words:
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("cannot shout 'fail'")),
                                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                if "missing" in words:
                    error = pb_utils.TritonError("no such word", pb_utils.TritonError.NOT_FOUND)
                    sender.send(pb_utils.InferenceResponse(error=error),
                                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                upper = np.array([w.upper() for w in words], dtype=np.object_).reshape(texts.shape)
                lengths = np.array([len(w) for w in words], dtype=np.int32).reshape(texts.shape)
                info = np.array([json.dumps({k: self.args[k] for k in sorted(self.args) if k != "model_config"})],
                                dtype=np.object_)
                tensors = [pb_utils.Tensor("UPPER", upper), pb_utils.Tensor("LENGTH", lengths),
                           pb_utils.Tensor("ARGS", info)]
                sender.send(pb_utils.InferenceResponse(output_tensors=tensors),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""

STRINGS_CONFIG = """
    name: "py_strings"
    backend: "python"
    input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [
      { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] },
      { name: "LENGTH" data_type: TYPE_INT32 dims: [ -1 ] },
      { name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] }
    ]
"""

RAISES_PY = """
    import os

    import numpy as np


    class Model:
        inputs = [{"name": "x", "datatype": "FP32", "shape": [-1]}]
        outputs = [{"name": "y", "datatype": "FP32", "shape": [-1]}, {"name": "pid", "datatype": "INT64", "shape": [1]}]

        def predict(self, inputs):
            x = inputs["x"]
            if (x < 0).any():
                raise ValueError("negative input")
            return {"y": np.sqrt(x), "pid": np.array([os.getpid()])}
"""

CRASH_PY = """
    import ctypes
    import os
    import time
    from pathlib import Path

    import numpy as np

    BUSY = Path(__file__).parent / "busy.pid"


    class Model:
        inputs = [{"name": "x", "datatype": "INT32", "shape": [1]}]
        outputs = [{"name": "pid", "datatype": "INT64", "shape": [1]}]

        def predict(self, inputs):
            action = int(inputs["x"][0])
            if action == 1:  # hang, having said who we are: the test kills this process
                BUSY.write_text(str(os.getpid()))
                time.sleep(120)
            elif action == 2:
                os._exit(3)
            elif action == 3:
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            return {"pid": np.array([os.getpid()])}
"""

SYNTAX_PY = """
    import numpy as np


    class Model
        def predict(self, inputs):
            return inputs
"""

NO_IO_PY = """
    class Model:
        def predict(self, inputs):
            return inputs
"""

IMPORT_ERROR_PY = """
    import inferd_no_such_module


    class Model:
        def predict(self, inputs):
            return inputs
"""

IMPORT_ERROR_CONFIG = """
    backend: "python"
    input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""

INIT_FAILS_PY = """
    class TritonPythonModel:
        def initialize(self, args):
            raise FileNotFoundError("weights.bin is missing")

        def execute(self, requests):
            return []
"""


def _write(repo: Path, name: str, model_py: str, config: str | None = None,
           extra: dict[str, str] | None = None) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent(model_py))
    for filename, text in (extra or {}).items():
        (version / filename).write_text(textwrap.dedent(text))
    if config is not None:
        (repo / name / "config.pbtxt").write_text(textwrap.dedent(config))
    return version


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("python-models") / "models"
    _write(root, MINIMAL, MINIMAL_PY, extra={"scaling.py": "FACTOR = 2.5\n"})
    _write(root, ASYNC, ASYNC_PY, ASYNC_CONFIG)
    _write(root, ADD_SUB, ADD_SUB_PY, ADD_SUB_CONFIG)
    _write(root, STRINGS, STRINGS_PY, STRINGS_CONFIG)
    _write(root, RAISES, RAISES_PY)
    _write(root, CRASH, CRASH_PY)
    _write(root, SYNTAX, SYNTAX_PY)
    _write(root, NO_IO, NO_IO_PY)
    _write(root, IMPORT_ERROR, IMPORT_ERROR_PY, IMPORT_ERROR_CONFIG)
    _write(root, INIT_FAILS, INIT_FAILS_PY, IMPORT_ERROR_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-python.log", "--strict-readiness=false")
    deadline = time.monotonic() + WAIT_S
    while not all(_ready(process, m) for m in (MINIMAL, ASYNC, ADD_SUB, STRINGS, RAISES, CRASH)):
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.1)
    yield process
    process.stop()


def _ready(server: ServerProcess, model: str) -> bool:
    return httpx.get(f"{server.base_url}/v2/models/{model}/ready", timeout=30).status_code == 200


def _post(server: ServerProcess, model: str, inputs: list[dict[str, Any]], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v2/models/{model}/infer", json={"inputs": inputs}, timeout=timeout)


def _index(server: ServerProcess) -> dict[str, dict[str, str]]:
    response = httpx.post(f"{server.base_url}/v2/repository/index", timeout=30)
    assert response.status_code == 200, response.text
    return {row["name"]: row for row in response.json()}


# ---- inferd's own API ----


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_minimal_api_with_hooks(protocol: str, server: ServerProcess) -> None:
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    served = infer_tensors(protocol, server, MINIMAL, {"x": (x, "FP32")}, ["y", "model", "pid"])
    expected = (x + np.float32(1)) * np.float32(2.5)  # preprocess, then predict with the sibling module's factor
    assert served["y"].dtype == np.float32
    np.testing.assert_array_equal(served["y"], expected)
    assert served["model"].ravel().tolist() == [b"py_minimal"] * 3  # the constructor got the config
    assert served["pid"].shape == (3, 1)
    assert int(served["pid"][0, 0]) not in (os.getpid(), server.process.pid)  # ran in an instance process


def test_minimal_api_config_is_completed_from_the_class(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}/v2/models/{MINIMAL}/config", timeout=30)
    assert response.status_code == 200, response.text
    config = response.json()
    assert config["backend"] == "python"
    assert config["max_batch_size"] == 8
    assert "dynamic_batching" in config
    fields = {t["name"]: (t["data_type"], t["dims"]) for t in config["input"] + config["output"]}
    assert fields == {"x": ("TYPE_FP32", [4]), "y": ("TYPE_FP32", [4]), "model": ("TYPE_STRING", [1]),
                      "pid": ("TYPE_INT64", [1])}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_predict(protocol: str, server: ServerProcess) -> None:
    x = np.array([0.5, 1.25, -2.0, 8.0, 3.0], dtype=np.float32)
    served = infer_tensors(protocol, server, ASYNC, {"x": (x, "FP32")}, ["total", "same_loop"])
    assert served["total"].dtype == np.float32
    np.testing.assert_array_equal(served["total"], np.cumsum(x.astype(np.float64)).astype(np.float32))
    assert served["same_loop"].tolist() == [True]  # load and predict ran on the instance's one event loop


def test_concurrent_requests_to_a_batching_model(server: ServerProcess) -> None:
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(12)]
    results: list[dict[str, np.ndarray] | None] = [None] * len(rows)

    def call(i: int) -> None:
        results[i] = infer_tensors("http", server, MINIMAL, {"x": (rows[i], "FP32")}, ["y"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    for row, result in zip(rows, results, strict=True):
        assert result is not None
        np.testing.assert_array_equal(result["y"], (row + np.float32(1)) * np.float32(2.5))


# ---- Triton's python backend ----


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_add_sub_example(protocol: str, server: ServerProcess) -> None:
    rng = np.random.default_rng(4)
    input0, input1 = rng.random(4).astype(np.float32), rng.random(4).astype(np.float32)
    served = infer_tensors(protocol, server, ADD_SUB, {"INPUT0": (input0, "FP32"), "INPUT1": (input1, "FP32")},
                    ["OUTPUT0", "OUTPUT1"])
    np.testing.assert_array_equal(served["OUTPUT0"], input0 + input1)
    np.testing.assert_array_equal(served["OUTPUT1"], input0 - input1)
    assert served["OUTPUT0"].dtype == np.float32


def test_python_models_over_v1(server: ServerProcess) -> None:
    """TF-Serving / KServe V1 clients reach Python models too: row form for a batching one, columnar for add_sub."""
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    response = httpx.post(f"{server.base_url}/v1/models/{MINIMAL}:predict",
                          json={"instances": [{"x": row} for row in x.tolist()]}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    np.testing.assert_array_equal(np.array([p["y"] for p in predictions], dtype=np.float32),
                                  (x + np.float32(1)) * np.float32(2.5))
    input0, input1 = np.arange(4, dtype=np.float32), np.full(4, 0.5, dtype=np.float32)
    response = httpx.post(f"{server.base_url}/v1/models/{ADD_SUB}:predict",
                          json={"inputs": {"INPUT0": input0.tolist(), "INPUT1": input1.tolist()}}, timeout=30)
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    np.testing.assert_array_equal(np.array(outputs["OUTPUT0"], dtype=np.float32), input0 + input1)
    np.testing.assert_array_equal(np.array(outputs["OUTPUT1"], dtype=np.float32), input0 - input1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_bytes_tensors(protocol: str, server: ServerProcess) -> None:
    words = ["hello", "Triton", "naïve"]
    text = np.array([w.encode("utf-8") for w in words], dtype=np.object_)
    served = infer_tensors(protocol, server, STRINGS, {"TEXT": (text, "BYTES")}, ["UPPER", "LENGTH", "ARGS"])
    assert served["UPPER"].tolist() == [w.upper().encode("utf-8") for w in words]
    np.testing.assert_array_equal(served["LENGTH"], np.array([len(w) for w in words], dtype=np.int32))
    args = json.loads(served["ARGS"][0])
    assert args["model_name"] == STRINGS
    assert args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_device_id"] == "0"
    assert Path(args["model_repository"]).name == STRINGS


def test_triton_model_config_argument_is_tritons_json(server: ServerProcess) -> None:
    """`args["model_config"]` is what `/config` answers (the add_sub model reads its data types from it)."""
    served = httpx.get(f"{server.base_url}/v2/models/{ADD_SUB}/config", timeout=30).json()
    assert served["output"][0]["data_type"] == "TYPE_FP32"
    assert served["output"][0]["dims"] == [4]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_triton_error_responses(protocol: str, server: ServerProcess) -> None:
    for word, http_status, grpc_status in (("fail", 400, "StatusCode.INVALID_ARGUMENT"),
                                           ("missing", 404, "StatusCode.NOT_FOUND")):
        text = np.array([b"ok", word.encode()], dtype=np.object_)
        if protocol == "http":
            response = _post(server, STRINGS, [{"name": "TEXT", "shape": [2], "datatype": "BYTES",
                                                "data": ["ok", word]}])
            assert response.status_code == http_status, response.text
            assert "cannot shout 'fail'" in response.json()["error"] or "no such word" in response.json()["error"]
        else:
            with pytest.raises(InferenceServerException) as caught:
                infer_tensors(protocol, server, STRINGS, {"TEXT": (text, "BYTES")}, ["UPPER"])
            assert caught.value.status() == grpc_status
            assert ("cannot shout" if word == "fail" else "no such word") in caught.value.message()


# ---- a model that raises ----


def test_model_that_raises_fails_only_that_request(server: ServerProcess) -> None:
    good = _post(server, RAISES, [{"name": "x", "shape": [2], "datatype": "FP32", "data": [4.0, 9.0]}])
    assert good.status_code == 200, good.text
    pid = {o["name"]: o["data"] for o in good.json()["outputs"]}["pid"]
    bad = _post(server, RAISES, [{"name": "x", "shape": [2], "datatype": "FP32", "data": [4.0, -1.0]}])
    assert bad.status_code == 500, bad.text  # the model failed: a server-side error, with the model's message
    assert "ValueError: negative input" in bad.json()["error"]
    with pytest.raises(InferenceServerException) as caught:
        infer_tensors("grpc", server, RAISES, {"x": (np.array([-2.0], dtype=np.float32), "FP32")}, ["y"])
    assert caught.value.status() == "StatusCode.INTERNAL"
    assert "ValueError: negative input" in caught.value.message()
    again = _post(server, RAISES, [{"name": "x", "shape": [1], "datatype": "FP32", "data": [16.0]}])
    assert again.status_code == 200, again.text
    outputs = {o["name"]: o["data"] for o in again.json()["outputs"]}
    assert outputs["y"] == [4.0]
    assert outputs["pid"] == pid  # an exception is not a crash: the same process serves on


# ---- a model that crashes its process ----


def _crash_pid(server: ServerProcess) -> int:
    response = _post(server, CRASH, [{"name": "x", "shape": [1], "datatype": "INT32", "data": [0]}])
    assert response.status_code == 200, response.text
    return int(response.json()["outputs"][0]["data"][0])


def _assert_others_serve(server: ServerProcess) -> None:
    a, b = np.ones(4, dtype=np.float32), np.arange(4, dtype=np.float32)
    served = infer_tensors("grpc", server, ADD_SUB, {"INPUT0": (a, "FP32"), "INPUT1": (b, "FP32")}, ["OUTPUT0"])
    np.testing.assert_array_equal(served["OUTPUT0"], a + b)
    assert httpx.get(f"{server.base_url}/v2/health/live", timeout=30).status_code == 200


def test_killed_mid_request(server: ServerProcess, repo: Path) -> None:
    busy = repo / CRASH / "1" / "busy.pid"
    busy.unlink(missing_ok=True)
    pid = _crash_pid(server)
    answer: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: answer.append(
        _post(server, CRASH, [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}], timeout=WAIT_S)))
    caller.start()
    deadline = time.monotonic() + WAIT_S
    while not (busy.exists() and busy.read_text()):
        assert time.monotonic() < deadline, "the model never started the request"
        time.sleep(0.02)
    assert int(busy.read_text()) == pid  # the request is in the model's process now
    _assert_others_serve(server)  # while it hangs
    os.kill(pid, signal.SIGKILL)
    caller.join(WAIT_S)
    assert answer, "the request in flight was never answered"
    assert answer[0].status_code == 500, answer[0].text
    assert "killed by SIGKILL" in answer[0].json()["error"]
    new_pid = _crash_pid(server)  # the instance restarted its process
    assert new_pid != pid
    _assert_others_serve(server)


@pytest.mark.parametrize(("action", "words"), [(2, "exited with code 3"), (3, "killed by SIGSEGV")])
def test_process_exits_mid_request(server: ServerProcess, action: int, words: str) -> None:
    pid = _crash_pid(server)
    response = _post(server, CRASH, [{"name": "x", "shape": [1], "datatype": "INT32", "data": [action]}])
    assert response.status_code == 500, response.text
    assert words in response.json()["error"]
    assert _crash_pid(server) != pid
    _assert_others_serve(server)


# ---- models that cannot load ----


def test_syntax_error_is_unavailable_with_the_reason(server: ServerProcess) -> None:
    row = _index(server)[SYNTAX]
    assert row["state"] == "UNAVAILABLE"
    assert "model.py line 5: SyntaxError" in row["reason"], row
    assert not _ready(server, SYNTAX)
    response = _post(server, SYNTAX, [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}])
    assert response.status_code == 404, response.text  # as Triton: a model with no available version
    assert "py_syntax" in response.json()["error"]


def test_no_config_and_no_declared_io_is_unavailable(server: ServerProcess) -> None:
    row = _index(server)[NO_IO]
    assert row["state"] == "UNAVAILABLE"
    assert "no inputs and outputs" in row["reason"] and "config.pbtxt" in row["reason"], row


def test_import_error_is_unavailable_with_the_reason(server: ServerProcess) -> None:
    row = _index(server)[IMPORT_ERROR]
    assert row["state"] == "UNAVAILABLE"
    assert "ModuleNotFoundError" in row["reason"] and "inferd_no_such_module" in row["reason"], row


def test_failing_initialize_is_unavailable_with_the_reason(server: ServerProcess) -> None:
    row = _index(server)[INIT_FAILS]
    assert row["state"] == "UNAVAILABLE"
    assert "initialize raised FileNotFoundError: weights.bin is missing" in row["reason"], row
