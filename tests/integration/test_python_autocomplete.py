"""Triton's `TritonPythonModel.auto_complete_config`, served by a real `inferd serve`.

The two example models are NVIDIA's python_backend `examples/auto_complete` models in the example's form (the same
pb_utils calls; one without config.pbtxt, one whose config.pbtxt says only backend and max_batch_size). Their
completed configs are checked field by field at /v2/models/{m}/config, as the example's client does, and their
sums and differences against numpy: exact (the same float32 additions on the same values). The method runs in a
short-lived process of its own; what goes wrong there (it raises, conflicts with config.pbtxt, crashes, hangs)
makes only that model UNAVAILABLE, with the reason.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_model_environments import requirements, write_wheel

from clients import infer_tensors, unavailable_reason
from serving import ServerProcess, start_server

BATCH = "batch_auto_complete"  # no config.pbtxt at all
NOBATCH = "nobatch_auto_complete"  # config.pbtxt: backend and max_batch_size only
PARTIAL = "ac_partial"  # config.pbtxt names INPUT1 and an instance group: they stay, the rest is added
ENV = "ac_env"  # auto_complete_config imports a package only the model's requirements.txt provides
RAISES = "ac_raises"
CONFLICT = "ac_conflict"  # config.pbtxt says INPUT0 is INT32, the model says FP32
DECOUPLED = "ac_decoupled"  # sets model_transaction_policy decoupled: refused at load
CRASH = "ac_crash"  # the auto-complete process dies
HANGS = "ac_hangs"  # never returns: the timeout (short here, through the server's environment)
SERVING = (BATCH, NOBATCH, PARTIAL, ENV)
TIMEOUT_S = 10
PROTOCOLS = ["http", "grpc"]
WAIT_S = 120.0

EXAMPLE_PY = """
    import json

    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        @staticmethod
        def auto_complete_config(auto_complete_model_config):
            inputs = [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
                      {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4]}]
            outputs = [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]},
                       {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [4]}]
            config = auto_complete_model_config.as_dict()
            input_names = [i["name"] for i in config["input"]]
            output_names = [o["name"] for o in config["output"]]
            for spec in inputs:
                if spec["name"] not in input_names:
                    auto_complete_model_config.add_input(spec)
            for spec in outputs:
                if spec["name"] not in output_names:
                    auto_complete_model_config.add_output(spec)
            auto_complete_model_config.set_max_batch_size(MAX_BATCH_SIZE)
            BATCHING
            return auto_complete_model_config

        def initialize(self, args):
            self.model_config = model_config = json.loads(args["model_config"])
            out0 = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
            out1 = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
            self.output0_dtype = pb_utils.triton_string_to_numpy(out0["data_type"])
            self.output1_dtype = pb_utils.triton_string_to_numpy(out1["data_type"])

        def execute(self, requests):
            responses = []
            for request in requests:
                in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
                out_0 = pb_utils.Tensor("OUTPUT0", (in_0 + in_1).astype(self.output0_dtype))
                out_1 = pb_utils.Tensor("OUTPUT1", (in_0 - in_1).astype(self.output1_dtype))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out_0, out_1]))
            return responses

        def finalize(self):
            print("Cleaning up...")
"""


def _example(max_batch_size: int) -> str:
    batching = "auto_complete_model_config.set_dynamic_batching()" if max_batch_size else "pass"
    return EXAMPLE_PY.replace("MAX_BATCH_SIZE", str(max_batch_size)).replace("BATCHING", batching)


def _completing(*bodies: str, head: str = "") -> str:
    """A Triton model whose auto_complete_config runs `bodies` before it returns the config."""
    body = "\n".join(textwrap.dedent(b).strip() for b in bodies)
    return (f"{head}\nclass TritonPythonModel:\n    @staticmethod\n    def auto_complete_config(config):\n"
            + textwrap.indent(body, " " * 8)
            + "\n        return config\n\n    def execute(self, requests):\n        return []\n")


ADD_X = """
    config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [1]})
    config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [1]})
"""

# add_input checks every input against config.pbtxt (the example skips names the config already has).
ADD_INPUT0 = """
    config.add_input({"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]})
    config.add_output({"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]})
"""

ENV_PY = _completing("""
    major = int(inferd_test_dep.VERSION.split(".")[0])
    config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [2 * major]})
    config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [2 * major]})
""", head="import inferd_test_dep\n") + """
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils

    def execute(self, requests):
        x = self.pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
        return [self.pb_utils.InferenceResponse([self.pb_utils.Tensor("Y", inferd_test_dep.transform(x))])]
"""


def _write(repo: Path, name: str, model_py: str, config: str | None = None) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent(model_py))
    if config is not None:
        (repo / name / "config.pbtxt").write_text(textwrap.dedent(config))
    return version


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("python-autocomplete")
    root = base / "models"
    wheels = base / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "2.0.0")
    _write(root, BATCH, _example(4))
    _write(root, NOBATCH, _example(0), 'backend: "python"\nmax_batch_size: 0\n')
    _write(root, PARTIAL, _example(4), """
        backend: "python"
        input [ { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
    """)
    (_write(root, ENV, ENV_PY) / "requirements.txt").write_text(requirements(wheels, "2.0.0"))
    _write(root, RAISES, _completing('raise RuntimeError("cannot find weights/manifest.json")'))
    _write(root, CONFLICT, _completing(ADD_INPUT0), """
        backend: "python"
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] } ]
    """)
    _write(root, DECOUPLED, _completing(ADD_X, 'config.set_model_transaction_policy({"decoupled": True})'))
    _write(root, CRASH, _completing(ADD_X, "os._exit(3)", head="import os\n"))
    _write(root, HANGS, _completing(ADD_X, "time.sleep(600)", head="import time\n"))
    return {"repo": root, "envs": base / "envs", "logs": base / "logs"}


@pytest.fixture(scope="module")
def server(setup: dict[str, Path]) -> Iterator[ServerProcess]:
    setup["logs"].mkdir()
    process = start_server(setup["repo"], setup["logs"] / "inferd.log", "--strict-readiness=false",
                           "--model-env-dir", str(setup["envs"]),
                           env={"INFERD_AUTO_COMPLETE_TIMEOUT": str(TIMEOUT_S)})
    deadline = time.monotonic() + WAIT_S
    names = {*SERVING, RAISES, CONFLICT, DECOUPLED, CRASH, HANGS}
    while True:
        rows = httpx.post(f"{process.base_url}/v2/repository/index", timeout=30).json()
        if {r["name"] for r in rows if r.get("state") in ("READY", "UNAVAILABLE")} >= names:
            break
        assert time.monotonic() < deadline, process.log()
        time.sleep(0.2)
    yield process
    process.stop()


def _config(server: ServerProcess, model: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/v2/models/{model}/config", timeout=30)
    assert response.status_code == 200, (response.text, server.log())
    return dict(response.json())


def _tensors(entries: list[dict[str, Any]]) -> list[tuple[str, str, list[int]]]:
    return [(e["name"], e["data_type"], e["dims"]) for e in entries]


EXPECTED_INPUTS = [("INPUT0", "TYPE_FP32", [4]), ("INPUT1", "TYPE_FP32", [4])]
EXPECTED_OUTPUTS = [("OUTPUT0", "TYPE_FP32", [4]), ("OUTPUT1", "TYPE_FP32", [4])]


def test_example_without_config_is_completed(server: ServerProcess) -> None:
    config = _config(server, BATCH)
    assert config["name"] == BATCH and config["backend"] == "python"
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert _tensors(config["input"]) == EXPECTED_INPUTS
    assert _tensors(config["output"]) == EXPECTED_OUTPUTS
    assert [i["optional"] for i in config["input"]] == [False, False]
    assert not config.get("model_transaction_policy", {}).get("decoupled", False)


def test_example_with_minimal_config_is_completed(server: ServerProcess) -> None:
    config = _config(server, NOBATCH)
    assert config["max_batch_size"] == 0
    assert "dynamic_batching" not in config
    assert _tensors(config["input"]) == EXPECTED_INPUTS
    assert _tensors(config["output"]) == EXPECTED_OUTPUTS


def test_config_pbtxt_entries_stay(server: ServerProcess) -> None:
    config = _config(server, PARTIAL)
    assert _tensors(config["input"]) == [("INPUT1", "TYPE_FP32", [4]), ("INPUT0", "TYPE_FP32", [4])]
    assert _tensors(config["output"]) == EXPECTED_OUTPUTS
    assert [(g["count"], g["kind"]) for g in config["instance_group"]] == [(2, "KIND_CPU")]
    assert config["max_batch_size"] == 4


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("model", "shape"), [(BATCH, (3, 4)), (NOBATCH, (4,)), (PARTIAL, (2, 4))])
def test_completed_models_infer(protocol: str, model: str, shape: tuple[int, ...], server: ServerProcess) -> None:
    rng = np.random.default_rng(7)
    a, b = rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)
    out = infer_tensors(protocol, server, model, {"INPUT0": (a, "FP32"), "INPUT1": (b, "FP32")},
                        ["OUTPUT0", "OUTPUT1"])
    assert out["OUTPUT0"].dtype == np.float32 and out["OUTPUT0"].shape == shape
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_auto_complete_runs_in_the_models_environment(protocol: str, server: ServerProcess) -> None:
    config = _config(server, ENV)
    assert _tensors(config["input"]) == [("X", "TYPE_FP32", [4])]  # 2 * major version of the model's package
    x = np.arange(4, dtype=np.float32)
    out = infer_tensors(protocol, server, ENV, {"X": (x, "FP32")}, ["Y"])
    np.testing.assert_array_equal(out["Y"], x * np.float32(2) + np.float32(1))


def test_raising_auto_complete_is_unavailable_with_its_message(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, RAISES)
    assert "auto_complete_config raised RuntimeError: cannot find weights/manifest.json" in reason, reason


def test_conflict_with_config_pbtxt_is_unavailable(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, CONFLICT)
    assert (f"unable to load model '{CONFLICT}', configuration expects datatype TYPE_INT32 for input 'INPUT0', "
            "model provides TYPE_FP32") in reason, reason


def test_decoupled_policy_is_refused(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, DECOUPLED)
    assert "decoupled" in reason and "not supported" in reason, reason


def test_crashing_auto_complete_is_unavailable(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, CRASH)
    assert "auto_complete_config process exited with code 3" in reason, reason


def test_hanging_auto_complete_times_out(server: ServerProcess) -> None:
    reason = unavailable_reason(server.base_url, HANGS)
    assert f"auto_complete_config did not return within {TIMEOUT_S} s" in reason, reason


def test_failures_leave_the_others_serving(server: ServerProcess) -> None:
    for model in SERVING:
        assert httpx.get(f"{server.base_url}/v2/models/{model}/ready", timeout=30).status_code == 200
    assert httpx.get(f"{server.base_url}/v2/health/live", timeout=30).status_code == 200
