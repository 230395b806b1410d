"""Seldon Core inference graphs from SeldonDeployment files, served by the real `inferd serve` as models.

The graph: a Python transformer class -> an epsilon-greedy router -> two ONNX models -> a Python output
transformer (classes written to a folder as Seldon users write them, declared as Seldon declares them:
componentSpecs containers with MODEL_NAME / SERVICE_TYPE env and workingDir). Called over Seldon's protocol
(`/seldon/{namespace}/{name}/api/v1.0/predictions` and `.../feedback`) and over V2 (tritonclient); feedback
rewards teach the router, after which it sends most requests to the rewarded model (fixed seed; counted). A
second graph's node is a remote endpoint: the first server, reached over Seldon's REST API.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LinearRegression

from models import make_model, write_model
from serving import Microservice, ServerProcess, start_server

# ---- what the test builds: two ONNX models, two Seldon classes, the deployment files ----

SHIFT = '''
import numpy as np

class Shift:
    """Adds `by` to its input (transformer), subtracts it from its output (output transformer)."""
    def __init__(self, by=1.0):
        self.by = by
    def transform_input(self, X, names, meta=None):
        return np.asarray(X, dtype=float) + self.by
    def transform_output(self, X, names, meta=None):
        return np.asarray(X, dtype=float) - self.by
    def tags(self):
        return {"shift": self.by}
'''

TRIPLE = '''
import numpy as np

class Triple:
    def predict(self, X, names, meta=None):
        return np.asarray(X, dtype=float) * 3
'''

PICKER = '''
import numpy as np

class Picker:
    """A router class: the request's first feature picks the branch; feedback is remembered and shown in tags."""
    def __init__(self):
        self.feedback = []
    def route(self, X, names, meta=None):
        return int(np.asarray(X).ravel()[0])
    def send_feedback(self, X, names, reward, truth, routing=None):
        self.feedback.append([routing, reward])
    def tags(self):
        return {"feedback": self.feedback}
'''

MEAN = '''
import numpy as np

class Mean:
    def aggregate(self, features_list, names_list):
        return np.mean([np.asarray(f, dtype=float) for f in features_list], axis=0)
'''

CUSTOM = """
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {name: custom}
spec:
  predictors:
  - name: default
    componentSpecs:
    - spec:
        containers:
        - {name: picker, image: example.org/picker:2, workingDir: ../../components,
           env: [{name: MODEL_NAME, value: Picker}, {name: SERVICE_TYPE, value: ROUTER}]}
        - {name: mean, image: example.org/mean:1, workingDir: ../../components,
           env: [{name: MODEL_NAME, value: "Mean.Mean"}, {name: SERVICE_TYPE, value: COMBINER}]}
    graph:
      name: picker
      type: ROUTER
      children:
      - name: mean
        type: COMBINER
        children:
        - {name: double, type: MODEL}
        - {name: tenfold, type: MODEL}
      - {name: stub, implementation: SIMPLE_MODEL}
"""

BANDIT = """
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata:
  name: bandit
spec:
  name: bandit
  predictors:
  - name: default
    replicas: 1
    componentSpecs:
    - spec:
        containers:
        - name: pre
          image: example.org/shift:1.0
          workingDir: ../../components
          env:
          - {name: MODEL_NAME, value: Shift}
          - {name: SERVICE_TYPE, value: TRANSFORMER}
        - name: post
          image: example.org/shift:1.0
          workingDir: ../../components
          env:
          - {name: MODEL_NAME, value: Shift}
          - {name: SERVICE_TYPE, value: OUTPUT_TRANSFORMER}
    graph:
      name: pre
      type: TRANSFORMER
      parameters: [{name: by, value: "1", type: FLOAT}]
      children:
      - name: post
        type: OUTPUT_TRANSFORMER
        parameters: [{name: by, value: "0.5", type: FLOAT}]
        children:
        - name: eg-router
          type: ROUTER
          implementation: EPSILON_GREEDY
          parameters:
          - {name: n_branches, value: "2", type: INT}
          - {name: epsilon, value: "0.1", type: FLOAT}
          - {name: seed, value: "7", type: INT}
          children:
          - {name: double, type: MODEL}
          - {name: tenfold, type: MODEL}
"""

BROKEN = """
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {name: broken}
spec:
  predictors:
  - name: default
    graph:
      name: far-away
      type: MODEL
      endpoint: {service_host: 127.0.0.1, service_port: 9, type: GRPC}
---
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {name: orphan}
spec:
  predictors:
  - name: default
    graph: {name: no-such-model, type: MODEL}
"""


BUILTINS = """
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {name: abtest}
spec:
  predictors:
  - name: main
    graph:
      name: ab
      implementation: RANDOM_ABTEST
      parameters: [{name: ratioA, value: "0.5", type: FLOAT}]
      children:
      - {name: double, type: MODEL}
      - {name: tenfold, type: MODEL}
---
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {name: combo}
spec:
  predictors:
  - name: main
    graph:
      name: avg
      implementation: AVERAGE_COMBINER
      children:
      - {name: double, implementation: TRITON_SERVER, modelUri: ../../triton}
      - {name: tenfold, implementation: TRITON_SERVER, modelUri: ../../triton}
---
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {name: sk}
spec:
  predictors:
  - name: main
    graph: {name: regressor, implementation: SKLEARN_SERVER, modelUri: ../../sklearn-model}
---
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {name: multi}
spec:
  predictors:
  - name: main
    traffic: 75
    graph: {name: stub, implementation: SIMPLE_MODEL}
  - name: canary
    traffic: 25
    graph: {name: double, type: MODEL}
"""


def scale_model(factor: float) -> bytes:
    """OUTPUT0 = factor * INPUT0, FP64 [batch, 3]."""
    io = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, ["batch", 3]) for n in ("INPUT0", "OUTPUT0")]
    k = numpy_helper.from_array(np.array(factor, dtype=np.float64), "K")
    return make_model([helper.make_node("Mul", ["INPUT0", "K"], ["OUTPUT0"])], io[:1], io[1:], [k])


def scale_config(name: str) -> str:
    return (f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
            'input [{ name: "INPUT0" data_type: TYPE_FP64 dims: [3] }]\n'
            'output [{ name: "OUTPUT0" data_type: TYPE_FP64 dims: [3] }]\n')


def expected(x: list[float], branch: int) -> list[float]:
    """What the graph computes: (x + 1) * (2 or 10) - 0.5."""
    factor = (2.0, 10.0)[branch]
    return [(v + 1.0) * factor - 0.5 for v in x]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seldon-graphs")
    repo = root / "models"
    write_model(repo, "double", scale_model(2.0), scale_config("double"))
    write_model(repo, "tenfold", scale_model(10.0), scale_config("tenfold"))
    (root / "components").mkdir()
    (root / "components" / "Shift.py").write_text(SHIFT)
    (root / "components" / "Triple.py").write_text(TRIPLE)
    (root / "components" / "Picker.py").write_text(PICKER)
    (root / "components" / "Mean.py").write_text(MEAN)
    (repo / "deployments").mkdir()
    (repo / "deployments" / "bandit.yaml").write_text(BANDIT)
    (repo / "deployments" / "broken.yml").write_text(BROKEN)
    (repo / "deployments" / "builtins.yaml").write_text(BUILTINS)
    (repo / "deployments" / "custom.yaml").write_text(CUSTOM)
    write_model(root / "triton", "double", scale_model(2.0), scale_config("double"))
    write_model(root / "triton", "tenfold", scale_model(10.0), scale_config("tenfold"))
    (root / "sklearn-model").mkdir()
    features = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 3.0]])
    regression = LinearRegression().fit(features, features[:, 0] + 2 * features[:, 1])
    joblib.dump(regression, root / "sklearn-model" / "model.joblib")
    return root


@pytest.fixture(scope="module")
def server(workspace: Path) -> Iterator[ServerProcess]:
    process = start_server(workspace / "models", workspace / "inferd.log", "--strict-readiness=false")
    yield process
    process.stop()


_CLIENT = httpx.Client(timeout=30)  # one client: a new httpx client per call costs far more than the call


def predict(server: ServerProcess, body: dict[str, Any], name: str = "bandit") -> httpx.Response:
    return _CLIENT.post(f"{server.base_url}/seldon/default/{name}/api/v1.0/predictions", json=body)


def feedback(server: ServerProcess, body: dict[str, Any], name: str = "bandit") -> httpx.Response:
    return _CLIENT.post(f"{server.base_url}/seldon/default/{name}/api/v1.0/feedback", json=body)


def test_the_graph_answers_over_seldons_protocol(server: ServerProcess) -> None:
    reply = predict(server, {"data": {"ndarray": [[1.0, 2.0, 3.0]]}, "meta": {"puid": "p-1", "tags": {"t": "x"}}})
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    meta = answer["meta"]
    branch = meta["routing"]["eg-router"]
    assert branch in (0, 1)
    assert answer["data"]["ndarray"] == [expected([1.0, 2.0, 3.0], branch)]
    assert meta["puid"] == "p-1"
    assert meta["tags"]["t"] == "x"
    assert meta["tags"]["shift"] == 0.5  # the output transformer's tags, last
    model = ("double", "tenfold")[branch]
    assert meta["requestPath"]["pre"] == "example.org/shift:1.0"
    assert meta["requestPath"]["post"] == "example.org/shift:1.0"
    assert meta["requestPath"]["eg-router"] == "EPSILON_GREEDY"
    assert model in meta["requestPath"]


def test_a_request_without_puid_gets_one(server: ServerProcess) -> None:
    reply = predict(server, {"data": {"tensor": {"shape": [1, 3], "values": [0.0, 0.0, 0.0]}}})
    assert reply.status_code == 200, reply.text
    meta = reply.json()["meta"]
    assert isinstance(meta["puid"], str) and len(meta["puid"]) >= 20


def test_the_graph_answers_over_v2(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready("bandit")
    x = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    given = httpclient.InferInput("input", list(x.shape), "FP64")
    given.set_data_from_numpy(x)
    result = client.infer("bandit", [given]).as_numpy("output")
    assert result.shape == (2, 3)
    assert any(np.array_equal(result, np.array([expected(list(row), b) for row in x])) for b in (0, 1))


def test_the_graph_answers_over_grpc_and_v1(server: ServerProcess) -> None:
    x = np.array([[1.0, 2.0, 3.0]])
    with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        given = grpcclient.InferInput("input", list(x.shape), "FP64")
        given.set_data_from_numpy(x)
        result = grpc.infer("bandit", [given]).as_numpy("output")
    assert result.tolist() in ([expected(x[0].tolist(), 0)], [expected(x[0].tolist(), 1)])
    reply = _CLIENT.post(f"{server.base_url}/v1/models/bandit:predict", json={"instances": [[1.0, 2.0, 3.0]]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"] in ([expected([1.0, 2.0, 3.0], 0)], [expected([1.0, 2.0, 3.0], 1)])


def test_seldons_builtin_ab_test_routes_both_ways(server: ServerProcess) -> None:
    seen = set()
    for _ in range(60):
        answer = predict(server, {"data": {"ndarray": [[1.0, 2.0, 3.0]]}}, "abtest").json()
        branch = answer["meta"]["routing"]["ab"]
        assert answer["data"]["ndarray"] == [[v * (2.0, 10.0)[branch] for v in (1.0, 2.0, 3.0)]]
        seen.add(branch)
    assert seen == {0, 1}


def test_average_combiner_over_prepackaged_triton_models(server: ServerProcess) -> None:
    answer = predict(server, {"data": {"ndarray": [[1.0, 2.0, 3.0]]}}, "combo").json()
    assert answer["data"]["ndarray"] == [[6.0, 12.0, 18.0]]  # (2x + 10x) / 2
    assert set(answer["meta"]["requestPath"]) == {"avg", "double", "tenfold"}


def test_a_prepackaged_sklearn_server(server: ServerProcess) -> None:
    answer = predict(server, {"data": {"ndarray": [[1.0, 1.0], [2.0, 0.5]]}}, "sk").json()
    assert np.allclose(answer["data"]["ndarray"], [3.0, 3.0], atol=1e-9), answer


def test_several_predictors_are_served_by_name(server: ServerProcess) -> None:
    """Each predictor is a model `{deployment}-{predictor}`; `{deployment}` is split between them by traffic."""
    body = {"data": {"ndarray": [[1.0, 2.0, 3.0]]}}
    stub = predict(server, body, "multi-main").json()["data"]
    assert stub["tensor"] == {"shape": [1, 3], "values": [0.1, 0.9, 0.5]}  # Seldon's SIMPLE_MODEL
    canary = predict(server, body, "multi-canary").json()["data"]
    assert canary["ndarray"] == [[2.0, 4.0, 6.0]]
    for _ in range(10):
        assert predict(server, body, "multi").json()["data"] in (stub, canary)


def test_rewards_teach_the_router(server: ServerProcess) -> None:
    """Reward only the tenfold model's answers; then it serves most requests (epsilon 0.1: 90 % expected)."""
    x = [[1.0, 1.0, 1.0]]
    for _ in range(100):
        answer = predict(server, {"data": {"ndarray": x}}).json()
        branch = answer["meta"]["routing"]["eg-router"]
        reply = feedback(server, {"request": {"data": {"ndarray": x}}, "response": answer,
                                  "reward": 1.0 if branch == 1 else 0.0})
        assert reply.status_code == 200, reply.text
    counts = [0, 0]
    for _ in range(500):
        answer = predict(server, {"data": {"ndarray": x}}).json()
        branch = answer["meta"]["routing"]["eg-router"]
        assert answer["data"]["ndarray"] == [expected(x[0], branch)]
        counts[branch] += 1
    bound = 4 * math.sqrt(500 * 0.9 * 0.1)
    assert counts[1] >= 500 * 0.9 - bound, counts


def test_feedback_by_puid_alone_reaches_the_router(server: ServerProcess) -> None:
    answer = predict(server, {"data": {"ndarray": [[2.0, 2.0, 2.0]]}, "meta": {"puid": "remember-me"}}).json()
    reply = feedback(server, {"request": {"data": {"ndarray": [[2.0, 2.0, 2.0]]}},
                              "response": {"meta": {"puid": "remember-me"}}, "reward": 1.0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["meta"]["routing"] == answer["meta"]["routing"]


def test_router_and_combiner_classes(server: ServerProcess) -> None:
    """A Python router class picks the branch and gets the feedback with its own choice; a combiner class
    aggregates its children's answers."""
    answer = predict(server, {"data": {"ndarray": [[0.0, 1.0, 2.0]]}}, "custom").json()
    assert answer["meta"]["routing"] == {"picker": 0}
    assert answer["data"]["ndarray"] == [[0.0, 6.0, 12.0]]  # the mean of 2x and 10x
    assert set(answer["meta"]["requestPath"]) == {"picker", "mean", "double", "tenfold"}
    assert answer["meta"]["requestPath"]["mean"] == "example.org/mean:1"
    other = predict(server, {"data": {"ndarray": [[1.0, 1.0, 1.0]]}}, "custom").json()
    assert other["meta"]["routing"] == {"picker": 1}
    assert other["data"]["tensor"]["values"] == [0.1, 0.9, 0.5]
    reply = feedback(server, {"request": {"data": {"ndarray": [[1.0, 1.0, 1.0]]}}, "response": other, "reward": 0.5},
                     "custom")
    assert reply.status_code == 200, reply.text
    later = predict(server, {"data": {"ndarray": [[1.0, 1.0, 1.0]]}}, "custom").json()
    assert later["meta"]["tags"]["feedback"] == [[1, 0.5]]


def test_bad_messages_get_seldons_error_and_the_graph_keeps_serving(server: ServerProcess) -> None:
    reply = predict(server, {"data": {"ndarray": [[1.0, 2.0]]}})  # the models take 3 features
    assert reply.status_code == 400, reply.text
    status = reply.json()["status"]
    assert status["status"] == "FAILURE" and status["code"] == 400
    assert "unexpected shape for input 'INPUT0' for model 'double'" in status["info"] \
        or "for model 'tenfold'" in status["info"]
    reply = feedback(server, {"reward": "much"})
    assert reply.status_code == 400
    assert reply.json()["status"]["info"] == "'reward' must be a number"
    reply = predict(server, {"jsonData": {"x": 1}})  # the transformer class raises on it: its error, 500
    assert reply.status_code == 500
    assert "TypeError" in reply.json()["status"]["info"]
    assert predict(server, {"data": {"ndarray": [[1.0, 2.0, 3.0]]}}).status_code == 200


@pytest.mark.parametrize(("name", "body", "words"), [
    ("bandit", "text", "a SeldonMessage is a JSON object"),
    ("bandit", {"meta": 5}, "'meta' must be a JSON object"),
    ("bandit", {"binData": "!!"}, "not valid base64"),
    ("bandit", {"data": {"tensor": {"shape": [5], "values": [1]}}}, "cannot reshape"),
    ("custom", {"data": {"ndarray": [[7.0, 1.0, 1.0]]}}, "router 'picker' chose child 7"),
])
def test_hostile_messages_are_refused(server: ServerProcess, name: str, body: Any, words: str) -> None:
    reply = predict(server, body, name)
    assert 400 <= reply.status_code < 600 and reply.status_code != 503, reply.text
    assert words in reply.json()["status"]["info"]
    assert predict(server, {"data": {"ndarray": [[0.0, 1.0, 1.0]]}}, "custom").status_code == 200


def test_feedback_with_a_broken_routing_still_reaches_the_classes(server: ServerProcess) -> None:
    body = {"request": {"data": {"ndarray": [[1.0, 1.0, 1.0]]}}, "response": {"meta": {"routing": "x"}}, "reward": 1}
    reply = feedback(server, body, "custom")
    assert reply.status_code == 200, reply.text
    assert reply.json()["meta"]["routing"] == {}


def test_graphs_that_cannot_be_served_say_why(server: ServerProcess) -> None:
    index = httpx.post(f"{server.base_url}/v2/repository/index", json={}, timeout=30).json()
    rows = {row["name"]: row for row in index}
    assert rows["bandit"]["state"] == "READY"
    assert rows["bandit.pre"]["state"] == "READY"  # the Python classes serve as models of their own
    assert rows["broken"]["state"] == "UNAVAILABLE"
    assert "GRPC is not supported" in rows["broken"]["reason"]
    assert rows["orphan"]["state"] == "UNAVAILABLE"
    assert "no-such-model" in rows["orphan"]["reason"]


@pytest.fixture(scope="module")
def triple(workspace: Path) -> Iterator[Microservice]:
    service = Microservice(workspace / "components", workspace / "triple.log", "Triple")
    service.wait_live()
    yield service
    service.stop()


def test_a_remote_node_spans_servers(workspace: Path, server: ServerProcess, triple: Microservice) -> None:
    """A graph on a second inferd whose nodes are remote REST endpoints: `inferd microservice` running a class, and
    the first `inferd serve` (its model `double`, reached by Seldon's API with the Seldon-Model header)."""
    deployment = workspace / "remote.yaml"
    deployment.write_text(f"""
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {{name: spanning}}
spec:
  predictors:
  - name: default
    graph:
      name: triple
      type: MODEL
      endpoint: {{service_host: 127.0.0.1, service_port: {triple.http_port}, type: REST}}
      children:
      - name: double
        type: MODEL
        endpoint: {{service_host: 127.0.0.1, service_port: {server.http_port}, type: REST}}
""")
    empty = workspace / "empty-repo"
    empty.mkdir(exist_ok=True)
    second = start_server(empty, workspace / "second.log", "--deployment", str(deployment))
    try:
        reply = predict(second, {"data": {"ndarray": [[1.0, 2.0, 3.0]]}}, "spanning")
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["data"]["ndarray"] == [[6.0, 12.0, 18.0]]  # tripled there, doubled on the first server
        assert set(answer["meta"]["requestPath"]) == {"triple", "double"}
    finally:
        second.stop()


def shifted(by: float) -> str:
    return f"""
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata: {{name: live}}
spec:
  predictors:
  - name: default
    componentSpecs:
    - spec:
        containers:
        - name: pre
          workingDir: {{components}}
          env: [{{name: MODEL_NAME, value: Shift}}, {{name: SERVICE_TYPE, value: TRANSFORMER}}]
    graph:
      name: pre
      type: TRANSFORMER
      parameters: [{{name: by, value: "{by}", type: FLOAT}}]
      children: [{{name: double, type: MODEL}}]
"""


def wait_for(check: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the poll did not apply the change in time"
        time.sleep(0.2)


def test_poll_mode_applies_changed_and_removed_deployment_files(workspace: Path) -> None:
    repo = workspace / "polled"
    write_model(repo, "double", scale_model(2.0), scale_config("double"))
    (repo / "deployments").mkdir()
    file = repo / "deployments" / "live.yaml"
    components = str(workspace / "components")
    file.write_text(shifted(1.0).replace("{components}", components))
    polled = start_server(repo, workspace / "polled.log", "--model-control-mode=poll",
                          "--repository-poll-secs=0.5")
    body = {"data": {"ndarray": [[1.0, 2.0, 3.0]]}}
    try:
        assert predict(polled, body, "live").json()["data"]["ndarray"] == [[4.0, 6.0, 8.0]]
        file.write_text(shifted(10.0).replace("{components}", components))  # a new class object, by=10
        wait_for(lambda: predict(polled, body, "live").json().get("data", {}).get("ndarray") == [[22.0, 24.0, 26.0]])
        file.unlink()
        wait_for(lambda: predict(polled, body, "live").status_code == 404)

        def states() -> dict[str, str]:
            rows = _CLIENT.post(f"{polled.base_url}/v2/repository/index", json={}).json()
            return {row["name"]: row.get("state", "") for row in rows}

        wait_for(lambda: states().get("live.pre") == "UNAVAILABLE")  # the class's model goes with its graph
        assert states()["double"] == "READY"
    finally:
        polled.stop()
