"""KServe InferenceGraphs served by the real `inferd serve` as models of their names: each router type (Sequence
with a nested node and $response, Switch picking by a request parameter, Ensemble, Splitter), Soft and Hard
dependencies, called over V2 HTTP and gRPC (tritonclient), V1 and Seldon's protocol; graphs KServe would refuse are
listed UNAVAILABLE with the reason. The graph files are checked against KServe's own CRD schema as well."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from onnx import TensorProto, helper, numpy_helper

from models import make_model, write_model
from serving import ServerProcess, start_server

# KServe's CRD schema, copied into the tests' data (tests/data/k8s-schemas/README.md says from where).
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "k8s-schemas" / "kserve-inferencegraph-v1alpha1.json"

GRAPHS = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: seq}
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
      - {name: first, serviceName: plus}
      - {name: second, nodeName: doubling, data: $response}
    doubling:
      routerType: Sequence
      steps:
      - {serviceName: times}
---
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: switch}
spec:
  nodes:
    root:
      routerType: Switch
      steps:
      - {serviceName: plus, condition: '[@this].#(parameters.route=="add")'}
      - {serviceName: times, condition: '[@this].#(parameters.route=="mul")'}
---
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: ens}
spec:
  nodes:
    root:
      routerType: Ensemble
      steps:
      - {name: p, serviceName: plus}
      - {name: t, serviceName: times}
      - {name: bad, serviceName: three, dependency: Soft}
---
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: ens-hard}
spec:
  nodes:
    root:
      routerType: Ensemble
      steps:
      - {name: p, serviceName: plus}
      - {name: bad, serviceName: three, dependency: Hard}
"""

SPLITTER = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: split}
spec:
  nodes:
    root:
      routerType: Splitter
      steps:
      - {serviceName: plus, weight: 30}
      - {serviceName: times, weight: 70}
"""

REFUSED = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: bad-weights}
spec:
  nodes:
    root:
      routerType: Splitter
      steps:
      - {serviceName: plus, weight: 30}
      - {serviceName: times, weight: 30}
---
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: bad-field}
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
      - {serviceName: plus, retries: 3}
---
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: bad-condition}
spec:
  nodes:
    root:
      routerType: Switch
      steps:
      - {serviceName: plus, condition: 'parameters.@reverse'}
---
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {name: no-root}
spec:
  nodes:
    start:
      routerType: Sequence
      steps:
      - {serviceName: plus}
"""


def unary_model(op: str, operand: float, width: int) -> bytes:
    """OUTPUT0 = INPUT0 (op) operand, FP32 [batch, width]."""
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n in ("INPUT0", "OUTPUT0")]
    k = numpy_helper.from_array(np.array(operand, dtype=np.float32), "K")
    return make_model([helper.make_node(op, ["INPUT0", "K"], ["OUTPUT0"])], io[:1], io[1:], [k])


def config(name: str, width: int) -> str:
    return (f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
            f'input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [{width}] }}]\n'
            f'output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [{width}] }}]\n')


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inference-graphs")
    repo = root / "models"
    write_model(repo, "plus", unary_model("Add", 1.0, 2), config("plus", 2))
    write_model(repo, "times", unary_model("Mul", 2.0, 2), config("times", 2))
    write_model(repo, "three", unary_model("Add", 0.0, 3), config("three", 3))  # takes 3 values: fails on 2
    (repo / "deployments").mkdir()
    (repo / "deployments" / "graphs.yaml").write_text(GRAPHS)
    (repo / "deployments" / "refused.yaml").write_text(REFUSED)
    (root / "split.json").write_text(json.dumps(yaml.safe_load(SPLITTER)))
    return root


@pytest.fixture(scope="module")
def server(workspace: Path) -> Iterator[ServerProcess]:
    process = start_server(workspace / "models", workspace / "inferd.log", "--strict-readiness=false",
                           "--deployment", str(workspace / "split.json"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


X = np.array([[1.0, 2.0]], dtype=np.float32)


def infer(client: httpclient.InferenceServerClient, model: str, parameters: dict[str, Any] | None = None,
          x: np.ndarray = X) -> httpclient.InferResult:
    given = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    given.set_data_from_numpy(x)
    return client.infer(model, [given], parameters=parameters)


def test_the_resources_are_valid_for_kserve() -> None:
    import jsonschema

    schema = json.loads(SCHEMA.read_text())["openAPIV3Schema"]
    for doc in [*yaml.safe_load_all(GRAPHS), yaml.safe_load(SPLITTER)]:
        jsonschema.validate(doc, schema)
    bad_field = list(yaml.safe_load_all(REFUSED))[1]
    schema["properties"]["spec"]["properties"]["nodes"]["additionalProperties"]["properties"]["steps"]["items"][
        "additionalProperties"] = False  # the API server's strict field validation
    with pytest.raises(jsonschema.ValidationError, match="retries"):
        jsonschema.validate(bad_field, schema)


def test_sequence_passes_the_response_on(client: httpclient.InferenceServerClient) -> None:
    result = infer(client, "seq")
    assert np.array_equal(result.as_numpy("OUTPUT0"), (X + 1) * 2)


def test_sequence_over_grpc_and_v1(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        given = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
        given.set_data_from_numpy(X)
        assert np.array_equal(grpc.infer("seq", [given]).as_numpy("OUTPUT0"), (X + 1) * 2)
    reply = httpx.post(f"{server.base_url}/v1/models/seq:predict", json={"instances": [[3.0, 4.0]]}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"predictions": [[8.0, 10.0]]}


def test_switch_picks_by_a_request_field(client: httpclient.InferenceServerClient, server: ServerProcess) -> None:
    assert np.array_equal(infer(client, "switch", {"route": "add"}).as_numpy("OUTPUT0"), X + 1)
    assert np.array_equal(infer(client, "switch", {"route": "mul"}).as_numpy("OUTPUT0"), X * 2)
    with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        given = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
        given.set_data_from_numpy(X)
        assert np.array_equal(grpc.infer("switch", [given], parameters={"route": "mul"}).as_numpy("OUTPUT0"), X * 2)


def test_switch_without_a_matching_route_is_404(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}],
            "parameters": {"route": "div"}}
    reply = httpx.post(f"{server.base_url}/v2/models/switch/infer", json=body, timeout=30)
    assert reply.status_code == 404
    assert reply.json()["error"] == "None of the routes matched with the switch condition"
    del body["parameters"]
    assert httpx.post(f"{server.base_url}/v2/models/switch/infer", json=body, timeout=30).status_code == 404


def test_ensemble_answers_each_step(client: httpclient.InferenceServerClient, server: ServerProcess) -> None:
    result = infer(client, "ens")
    assert np.array_equal(result.as_numpy("p.OUTPUT0"), X + 1)
    assert np.array_equal(result.as_numpy("t.OUTPUT0"), X * 2)
    assert result.as_numpy("bad.OUTPUT0") is None  # a Soft step that failed: no outputs
    # over Seldon's protocol the answer is KServe's own JSON: {step: response}, a failed Soft step's error
    body = {"jsonData": {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}}
    reply = httpx.post(f"{server.base_url}/seldon/default/ens/api/v1.0/predictions", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    answer = reply.json()["jsonData"]
    assert answer["p"]["model_name"] == "plus"
    assert answer["p"]["outputs"][0]["data"] == [2.0, 3.0]
    assert answer["t"]["outputs"][0]["data"] == [2.0, 4.0]
    assert "unexpected shape for input 'INPUT0' for model 'three'" in answer["bad"]["error"]


def test_a_hard_step_that_fails_fails_the_graph(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(Exception, match="unexpected shape for input 'INPUT0' for model 'three'"):
        infer(client, "ens-hard")
    assert np.array_equal(infer(client, "seq").as_numpy("OUTPUT0"), (X + 1) * 2)  # still serving


def test_splitter_splits_by_weight(client: httpclient.InferenceServerClient) -> None:
    n, p = 2000, 0.3
    plus = 0
    for _ in range(n):
        out = infer(client, "split").as_numpy("OUTPUT0")
        if np.array_equal(out, X + 1):
            plus += 1
        else:
            assert np.array_equal(out, X * 2)
    # binomial(2000, 0.3): mean 600, standard deviation 20.5; 4 sigma is 82
    assert abs(plus - n * p) <= 4 * math.sqrt(n * p * (1 - p)), plus


def test_graphs_kserve_would_refuse_say_why(server: ServerProcess) -> None:
    index = httpx.post(f"{server.base_url}/v2/repository/index", json={}, timeout=30).json()
    rows = {row["name"]: row for row in index}
    for ready in ("seq", "switch", "ens", "ens-hard", "split"):
        assert rows[ready]["state"] == "READY", rows[ready]
    assert "must add up to 100" in rows["bad-weights"]["reason"]
    assert "unknown field 'retries'" in rows["bad-field"]["reason"]
    assert "@reverse" in rows["bad-condition"]["reason"]
    assert "no 'root' node" in rows["no-root"]["reason"]
    for refused in ("bad-weights", "bad-field", "bad-condition", "no-root"):
        assert rows[refused]["state"] == "UNAVAILABLE"


def test_explicit_mode_loads_the_steps_and_service_urls_reach_other_servers(workspace: Path,
                                                                            server: ServerProcess) -> None:
    """In explicit mode a graph's models load with it; a `serviceUrl` step POSTs the document to a URL (here the
    first server's V2 endpoint, as KServe's router calls a service)."""
    graph = workspace / "remote.yaml"
    graph.write_text(f"""
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata: {{name: remote-seq}}
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
      - {{serviceUrl: "http://127.0.0.1:{server.http_port}/v2/models/plus/infer"}}
      - {{serviceName: times, data: $response}}
""")
    repo = workspace / "explicit-models"
    write_model(repo, "times", unary_model("Mul", 2.0, 2), config("times", 2))
    write_model(repo, "idle", unary_model("Mul", 2.0, 2), config("idle", 2))
    second = start_server(repo, workspace / "explicit.log", "--model-control-mode=explicit",
                          "--strict-readiness=false", "--deployment", str(graph))
    try:
        index = {row["name"]: row for row in httpx.post(f"{second.base_url}/v2/repository/index", json={},
                                                        timeout=30).json()}
        assert index["remote-seq"]["state"] == "READY"
        assert index["times"]["state"] == "READY"  # loaded for the graph
        assert index["idle"].get("state") != "READY"  # explicit mode: what no graph needs stays unloaded
        with httpclient.InferenceServerClient(second.http_url) as other:
            assert np.array_equal(infer(other, "remote-seq").as_numpy("OUTPUT0"), (X + 1) * 2)
            other.unload_model("remote-seq")  # the repository API unloads a graph, and loads it from its file
            assert not other.is_model_ready("remote-seq")
            other.load_model("remote-seq")
            assert np.array_equal(infer(other, "remote-seq").as_numpy("OUTPUT0"), (X + 1) * 2)
    finally:
        second.stop()
