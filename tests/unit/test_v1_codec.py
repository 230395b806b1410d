"""TF-Serving's REST API (V1): the row and columnar request forms, b64 bytes, outputs back as predictions.

Requests go through the HTTP application (`HttpFrontend.handle`, no socket) to an in-process Server whose models run
on the test's function backend, so each test sees what a client would (status and JSON) and what the model got.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

import inferd
from function_backend import BEHAVIOURS, Tensors, behaviour, registered, write_model
from inferd.config import ConfigError
from inferd.frontends.http import HttpFrontend

# A batching model with one FP32 input [2], doubled.
DOUBLE = ("double", """
max_batch_size: 8
input { name: "x" data_type: TYPE_FP32 dims: [2] }
output { name: "y" data_type: TYPE_FP32 dims: [2] }
""")
# Two named inputs (one BYTES) and two outputs, one of them BYTES named *_bytes.
TWO = ("two", """
max_batch_size: 4
input { name: "a" data_type: TYPE_INT64 dims: [2] }
input { name: "text" data_type: TYPE_STRING dims: [1] }
output { name: "total" data_type: TYPE_INT64 dims: [1] }
output { name: "echo_bytes" data_type: TYPE_STRING dims: [1] }
""")
# One required input and one optional: an unnamed value is for the required one.
OPTIONAL = ("optional", """
max_batch_size: 4
input { name: "x" data_type: TYPE_INT32 dims: [1] }
input { name: "bias" data_type: TYPE_INT32 dims: [1] optional: true }
output { name: "y" data_type: TYPE_INT32 dims: [1] }
""")
# The config reshapes: clients send the model's own shape (a scalar per row), the core checks dims [1].
RESHAPED = ("reshaped", """
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: [1] reshape { shape: [] } }
output { name: "y" data_type: TYPE_FP32 dims: [1] reshape { shape: [] } }
""")
STRINGS = ("strings", """
input { name: "s" data_type: TYPE_STRING dims: [-1] }
output { name: "s_out" data_type: TYPE_STRING dims: [-1] }
output { name: "raw_bytes" data_type: TYPE_STRING dims: [-1] }
""")
# Three versions, all served; version 2 fails to load.
VERSIONS = ("versions", """
max_batch_size: 4
version_policy { all {} }
input { name: "x" data_type: TYPE_FP32 dims: [1] }
output { name: "y" data_type: TYPE_FP32 dims: [1] }
""")

DEFAULTS = {
    "double": lambda i: {"y": i["x"] * 2},
    "two": lambda i: {"total": i["a"].sum(axis=1, keepdims=True), "echo_bytes": i["text"]},
    "optional": lambda i: {"y": i["x"] + 1},
    "reshaped": lambda i: {"y": i["x"] * 10},
    "strings": lambda i: {"s_out": i["s"], "raw_bytes": i["s"]},
    "versions": lambda i: {"y": i["x"]},
}
SEEN: list[tuple[str, Tensors]] = []  # (model, inputs) of every execution of the current test


def _recording(model: str, function: Any) -> Any:
    def execute(inputs: Tensors) -> Tensors:
        SEEN.append((model, inputs))
        return function(inputs)
    return execute


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFrontend]:
    repo = tmp_path_factory.mktemp("v1") / "models"
    for name, config in (DOUBLE, TWO, OPTIONAL, RESHAPED, STRINGS):
        write_model(repo, name, config)
    write_model(repo, *VERSIONS, versions=(1, 2, 3))
    with registered(), pytest.MonkeyPatch.context() as patch:
        # Nothing is in flight when the server closes: retiring need not wait for stragglers.
        patch.setattr("inferd.manager._RETIRE_GRACE_S", 0.0, raising=False)
        failing = behaviour("versions")
        failing.load_error, failing.failing_versions = ConfigError("weights are missing"), (2,)
        with inferd.Server(model_repository=repo, strict_readiness=False) as server:
            yield HttpFrontend(server)


@pytest.fixture(autouse=True)
def models(app: HttpFrontend) -> Iterator[None]:
    """Each test starts from the default behaviours and an empty record of executions."""
    for name, function in DEFAULTS.items():
        behaviour(name).execute = _recording(name, function)
    SEEN.clear()
    yield
    assert set(BEHAVIOURS) >= set(DEFAULTS)


def _set(model: str, function: Any) -> None:
    behaviour(model).execute = _recording(model, function)


async def _call(app: HttpFrontend, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = b"" if body is None else orjson.dumps(body)
    status, payload, headers = await app.handle(method, path, {b"content-type": b"application/json"}, raw)
    assert dict(headers)[b"content-type"] == b"application/json"
    return status, orjson.loads(payload)


async def _predict(app: HttpFrontend, model: str, body: Any) -> Any:
    status, doc = await _call(app, "POST", f"/v1/models/{model}:predict", body)
    assert status == 200, doc
    return doc


async def _error(app: HttpFrontend, path: str, body: Any, status: int, *words: str, method: str = "POST") -> str:
    got, doc = await _call(app, method, path, body)
    assert got == status, doc
    for word in words:
        assert word in doc["error"]
    return str(doc["error"])


def _inputs(model: str) -> Tensors:
    [(name, inputs)] = SEEN
    assert name == model
    return inputs


# ---- the row form ----

async def test_row_form_unnamed_stacks_instances(app: HttpFrontend) -> None:
    doc = await _predict(app, "double", {"instances": [[1, 2], [3, 4], [5, 6]]})
    x = _inputs("double")["x"]
    assert x.dtype == np.float32  # the config's datatype, whatever JSON numbers were sent
    assert x.tolist() == [[1, 2], [3, 4], [5, 6]]
    assert doc == {"predictions": [[2, 4], [6, 8], [10, 12]]}


async def test_row_form_named_inputs_and_outputs_split_per_instance(app: HttpFrontend) -> None:
    doc = await _predict(app, "two", {"instances": [{"a": [1, 2], "text": ["x"]},
                                                    {"a": [3, 4], "text": [{"b64": "eQ=="}]}]})
    inputs = _inputs("two")
    assert inputs["a"].tolist() == [[1, 2], [3, 4]]
    assert inputs["text"].tolist() == [[b"x"], [b"y"]]
    # An output whose name ends with _bytes is always b64 (TF-Serving's rule), even when it is valid UTF-8.
    assert doc == {"predictions": [{"total": [3], "echo_bytes": [{"b64": "eA=="}]},
                                   {"total": [7], "echo_bytes": [{"b64": "eQ=="}]}]}


async def test_row_form_output_without_a_row_per_instance(app: HttpFrontend) -> None:
    # A model that is not batching may answer any shape; the row form needs one output row per instance.
    _set("strings", lambda i: {"s_out": i["s"][:1], "raw_bytes": i["s"][:1]})
    await _error(app, "/v1/models/strings:predict", {"instances": ["a", "b"]}, 400,
                 "has 1 rows for 2 instances", "columnar")


async def test_row_form_mixing_named_and_unnamed(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/two:predict", {"instances": [{"a": [1, 2]}, [1, 2]]}, 400, "mixes named")


async def test_row_form_instances_giving_different_inputs(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/two:predict", {"instances": [{"a": [1, 2], "text": ["x"]}, {"a": [2, 3]}]}, 400,
                 "instance 1", "same inputs")


async def test_row_form_needs_a_non_empty_list(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/double:predict", {"instances": []}, 400, "non-empty list")
    await _error(app, "/v1/models/double:predict", {"instances": {"x": [1, 2]}}, 400, "non-empty list")


async def test_ragged_rows(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/double:predict", {"instances": [[1, 2], [3]]}, 400, "'x'", "FP32")


# ---- the columnar form ----

async def test_columnar_form_unnamed_gives_the_one_output_alone(app: HttpFrontend) -> None:
    doc = await _predict(app, "double", {"inputs": [[1, 2]]})
    assert _inputs("double")["x"].tolist() == [[1, 2]]
    assert doc == {"outputs": [[2, 4]]}


async def test_columnar_form_named_gives_outputs_by_name(app: HttpFrontend) -> None:
    doc = await _predict(app, "two", {"inputs": {"a": [[1, 2], [3, 4]], "text": [["é"], ["b"]]}})
    inputs = _inputs("two")
    assert inputs["a"].dtype == np.int64
    assert inputs["text"].tolist() == [["é".encode()], [b"b"]]
    assert doc == {"outputs": {"total": [[3], [7]], "echo_bytes": [[{"b64": base64.b64encode("é".encode()).decode()}],
                                                                   [{"b64": "Yg=="}]]}}


async def test_unnamed_value_for_a_model_of_several_inputs(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/two:predict", {"inputs": [[1, 2]]}, 400, "2 inputs", "a, text", "name them")


async def test_unnamed_value_goes_to_the_one_required_input(app: HttpFrontend) -> None:
    doc = await _predict(app, "optional", {"instances": [[1], [2]]})
    assert list(_inputs("optional")) == ["x"]
    assert doc == {"predictions": [[2], [3]]}


async def test_unknown_input_name(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/double:predict", {"inputs": {"z": [[1, 2]]}}, 400,
                 "unexpected inference input 'z'")


async def test_exactly_one_form(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/double:predict", {"instances": [[1, 2]], "inputs": [[1, 2]]}, 400, "exactly one")
    await _error(app, "/v1/models/double:predict", {"signature_name": "serving_default"}, 400, "exactly one")


# ---- bytes ----

async def test_b64_values_and_text_outputs(app: HttpFrontend) -> None:
    doc = await _predict(app, "strings", {"inputs": {"s": [{"b64": base64.b64encode("é".encode()).decode()},
                                                          "plain"]}})
    assert _inputs("strings")["s"].tolist() == ["é".encode(), b"plain"]
    assert doc["outputs"]["s_out"] == ["é", "plain"]  # valid UTF-8: text
    assert doc["outputs"]["raw_bytes"] == [{"b64": "w6k="}, {"b64": "cGxhaW4="}]  # the _bytes suffix: always b64


async def test_an_output_with_an_element_that_is_not_utf8_is_all_b64(app: HttpFrontend) -> None:
    doc = await _predict(app, "strings", {"inputs": {"s": [{"b64": "/wE="}, "plain"]}})
    assert _inputs("strings")["s"].tolist() == [b"\xff\x01", b"plain"]
    assert doc["outputs"]["s_out"] == [{"b64": "/wE="}, {"b64": "cGxhaW4="}]


async def test_bad_b64(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/strings:predict", {"inputs": {"s": [{"b64": "not base64!"}]}}, 400,
                 "'s'", "not valid base64")


async def test_bytes_input_given_a_number(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/strings:predict", {"inputs": {"s": [3]}}, 400, "'s'", "BYTES", "int")


async def test_ragged_bytes_lists(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/strings:predict", {"inputs": {"s": [["a"], ["b", "c"]]}}, 400,
                 "'s'", "different lengths")


# ---- shapes and types ----

async def test_model_shape_is_checked_in_the_config_dims_and_sent_back_in_its_own(app: HttpFrontend) -> None:
    doc = await _predict(app, "reshaped", {"instances": [1.5, 2.5]})
    assert _inputs("reshaped")["x"].tolist() == [1.5, 2.5]  # the model gets its own shape: a scalar per row
    assert doc == {"predictions": [15.0, 25.0]}


async def test_fp16_output_is_sent_as_numbers(app: HttpFrontend) -> None:
    _set("strings", lambda i: {"s_out": i["s"], "raw_bytes": np.array([0.5, 1.5], np.float16)})
    doc = await _predict(app, "strings", {"inputs": {"s": ["a", "b"]}})
    assert doc["outputs"]["raw_bytes"] == [0.5, 1.5]


async def test_numbers_that_do_not_fit_the_datatype(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/two:predict", {"inputs": {"a": [["x", "y"]], "text": [["t"]]}}, 400, "'a'", "INT64")


async def test_values_are_strict_as_in_v2(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/two:predict", {"inputs": {"a": [[1.5, 2]], "text": [["t"]]}}, 400,
                 "'a'", "INT64", "integers", "1.5")
    await _error(app, "/v1/models/double:predict", {"instances": [[1.0, True]]}, 400, "'x'", "FP32", "true")
    await _error(app, "/v1/models/double:predict", {"instances": [[1e39, 1.0]]}, 400, "'x'", "out of the range")
    assert SEEN == []


async def test_deep_nesting_is_a_bad_request(app: HttpFrontend) -> None:
    body = b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    status, payload, _ = await app.handle("POST", "/v1/models/double:predict", {}, body)
    assert status == 400, payload


async def test_shape_that_does_not_fit_the_config(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/double:predict", {"instances": [[1, 2, 3]]}, 400, "'x'", "[-1,2]", "[1,3]")
    assert SEEN == []


async def test_body_must_be_a_json_object(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/double:predict", [[1, 2]], 400, "object")


# ---- signature, verbs, paths ----

async def test_signature_name(app: HttpFrontend) -> None:
    await _predict(app, "double", {"signature_name": "serving_default", "instances": [[1, 2]]})
    await _error(app, "/v1/models/double:predict", {"signature_name": "other", "instances": [[1, 2]]}, 400,
                 "no signature 'other'", "serving_default")


async def test_versioned_predict(app: HttpFrontend) -> None:
    await _predict(app, "versions/versions/1", {"instances": [[1.0]]})
    await _error(app, "/v1/models/versions/versions/2:predict", {"instances": [[1.0]]}, 404, "versions", "2")
    await _error(app, "/v1/models/double/versions/5:predict", {"instances": [[1, 2]]}, 404, "double")


async def test_classify_and_regress_are_not_supported(app: HttpFrontend) -> None:
    for verb in ("classify", "regress"):
        await _error(app, f"/v1/models/double:{verb}", {"examples": []}, 400, f":{verb}", ":predict")


async def test_predict_needs_post(app: HttpFrontend) -> None:
    status, _, headers = await app.handle("GET", "/v1/models/double:predict", {}, b"")
    assert status == 405
    assert dict(headers)[b"allow"] == b"POST"


@pytest.mark.parametrize("path", ["/v1", "/v1/models", "/v1/other/double", "/v1/models/double/labels",
                                  "/v1/models/double/versions/1/labels"])
async def test_unknown_paths_are_not_found(app: HttpFrontend, path: str) -> None:
    await _error(app, path, None, 404, method="GET")


async def test_unknown_model(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/nope:predict", {"instances": [1]}, 404, "nope")


# ---- status and metadata ----

async def test_status_of_every_version_newest_first(app: HttpFrontend) -> None:
    status, doc = await _call(app, "GET", "/v1/models/versions")
    assert status == 200
    rows = doc["model_version_status"]
    assert [(r["version"], r["state"], r["status"]["error_code"]) for r in rows] == [
        ("3", "AVAILABLE", "OK"), ("2", "END", "UNAVAILABLE"), ("1", "AVAILABLE", "OK")]
    assert "weights are missing" in rows[1]["status"]["error_message"]
    assert rows[0]["status"]["error_message"] == rows[2]["status"]["error_message"] == ""
    _, one = await _call(app, "GET", "/v1/models/versions/versions/2")
    assert [row["version"] for row in one["model_version_status"]] == ["2"]


async def test_status_errors(app: HttpFrontend) -> None:
    await _error(app, "/v1/models/double/versions/7", None, 404, "version 7", method="GET")
    await _error(app, "/v1/models/double/versions/x", None, 400, "non-negative integer", method="GET")
    await _error(app, "/v1/models/nope", None, 404, "nope", method="GET")
    status, _, headers = await app.handle("PUT", "/v1/models/double", {}, b"")
    assert status == 405
    assert b"GET" in dict(headers)[b"allow"]


async def test_metadata_is_tf_servings_signature(app: HttpFrontend) -> None:
    status, doc = await _call(app, "GET", "/v1/models/two/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": "two", "signature_name": "", "version": "1"}
    signature = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    # The batch dimension first.
    assert signature["inputs"]["a"] == {"dtype": "DT_INT64", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "2"}]},
                                        "name": "a"}
    assert signature["inputs"]["text"]["dtype"] == "DT_STRING"
    _, plain = await _call(app, "GET", "/v1/models/strings/metadata")
    s = plain["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["s"]
    assert s["tensor_shape"] == {"dim": [{"size": "-1"}]}  # no batching: the dims alone


async def test_concurrent_requests_get_their_own_rows(app: HttpFrontend) -> None:
    docs = await asyncio.gather(*(_predict(app, "double", {"instances": [[i, i]]}) for i in range(8)))
    assert [d["predictions"] for d in docs] == [[[2 * i, 2 * i]] for i in range(8)]

