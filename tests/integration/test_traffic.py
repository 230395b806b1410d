"""Canary splits, sticky sessions and shadows on a real `inferd serve`.

`split` has two versions of an ONNX model (version 1 adds 1, version 2 adds 2: the answer itself says which
served) with `canary: "2:10"`; `mirrored` copies each request to `watcher` (counted in its statistics) and to
`broken` (which takes rows of 3 values: every copy fails, never the request).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

import inferd
from models import add_constant_model, tensor_config, write_model
from serving import ServerProcess, start_server

REQUESTS = 2000
CANARY_SHARE = 0.10


def config(name: str, extra: str = "") -> str:
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\nversion_policy {{ all {{ }} }}\n'
            f'{tensor_config("input", "INPUT0", "TYPE_INT32", [-1])}\n'
            f'{tensor_config("output", "OUTPUT0", "TYPE_INT32", [-1])}\n{extra}')


def param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("traffic")
    write_model(repo, "split", None, config("split", param("canary", "2:10")),
                versions={1: add_constant_model(1), 2: add_constant_model(2)})
    write_model(repo, "sticky", None, config("sticky", param("canary", "2:50") + param("sticky_header", "X-User")),
                versions={1: add_constant_model(1), 2: add_constant_model(2)})
    write_model(repo, "mirrored", add_constant_model(1), config("mirrored", param("shadow", "watcher,broken")))
    write_model(repo, "watcher", add_constant_model(5), config("watcher"))
    # It takes rows of 3 values: every copy (rows of 1) fails.
    write_model(repo, "broken", add_constant_model(7), config("broken").replace("dims: [ -1 ]", "dims: [ 3 ]"))
    server = start_server(repo, tmp_path_factory.mktemp("log") / "server.log")
    try:
        yield server
    finally:
        server.stop()


def body(value: int) -> dict[str, object]:
    return {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 1], "data": [value]}]}


def added(answer: httpx.Response) -> int:
    assert answer.status_code == 200, answer.text
    return int(answer.json()["outputs"][0]["data"][0])


def test_canary_split_within_a_binomial_bound(served: ServerProcess) -> None:
    canary = 0
    with httpx.Client(base_url=served.base_url, timeout=30) as client:
        for _ in range(REQUESTS):
            answer = client.post("/v2/models/split/infer", json=body(0))
            version = answer.json()["model_version"]
            assert added(answer) == int(version)
            assert answer.headers["x-inferd-variant"] == ("canary" if version == "2" else "primary")
            canary += version == "2"
        # A request that names its version is not split.
        pinned = [client.post("/v2/models/split/versions/1/infer", json=body(0)) for _ in range(20)]
        assert {added(a) for a in pinned} == {1}
        assert all("x-inferd-variant" not in a.headers for a in pinned)
    mean = REQUESTS * CANARY_SHARE
    sigma = math.sqrt(REQUESTS * CANARY_SHARE * (1 - CANARY_SHARE))
    assert abs(canary - mean) <= 4 * sigma, (canary, mean, sigma)
    # The split actually served is in the metrics.
    text = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10).text
    counts = dict(re.findall(r'inferd_traffic_requests_total\{model="split",variant="(\w+)"\} (\d+)', text))
    assert {k: int(float(v)) for k, v in counts.items()} == {"canary": canary, "primary": REQUESTS - canary}


def test_a_sticky_header_keeps_a_client_on_one_variant(served: ServerProcess) -> None:
    seen: dict[str, set[int]] = {}
    with httpx.Client(base_url=served.base_url, timeout=30) as client:
        for _ in range(40):
            user = uuid.uuid4().hex
            seen[user] = {added(client.post("/v2/models/sticky/infer", json=body(0), headers={"X-User": user}))
                          for _ in range(10)}
    assert all(len(versions) == 1 for versions in seen.values()), seen
    # Different users still land on both variants (50/50: all 40 on one side has odds 2^-39).
    assert {next(iter(v)) for v in seen.values()} == {1, 2}


def test_the_variant_over_grpc_trailing_metadata(served: ServerProcess) -> None:
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="sticky")
        tensor = request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 1])
        tensor.contents.int_contents.append(0)
        variants = set()
        for user in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"):
            response, call = stub.ModelInfer.with_call(request, metadata=(("x-user", user),))
            trailing = dict(call.trailing_metadata())
            variant = trailing["x-inferd-variant"]
            assert variant == ("canary" if response.model_version == "2" else "primary")
            again, call = stub.ModelInfer.with_call(request, metadata=(("x-user", user),))
            assert again.model_version == response.model_version
            variants.add(variant)
    assert variants <= {"canary", "primary"}


def test_shadows_get_copies_and_never_change_the_answer(served: ServerProcess) -> None:
    base = served.base_url

    def successes(model: str) -> int:
        stats = httpx.get(f"{base}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]
        return int(stats["inference_stats"]["success"]["count"])

    before = successes("watcher")
    with httpx.Client(base_url=base, timeout=30) as client:
        answers = [added(client.post("/v2/models/mirrored/infer", json=body(i))) - i for i in range(50)]
    # The answer is mirrored's own (adds 1), never the watcher's (5) nor broken's failure.
    assert answers == [1] * 50
    text = ""
    for _ in range(100):  # the copies run beside the requests: wait until all 50 are counted
        text = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10).text
        done = re.findall(r'inferd_shadow_requests_total\{model="mirrored",shadow="(\w+)",outcome="(\w+)"\} (\S+)',
                          text)
        counts = {(shadow, outcome): int(float(n)) for shadow, outcome, n in done}
        if counts.get(("watcher", "success"), 0) + counts.get(("watcher", "dropped"), 0) >= 50 and \
                counts.get(("broken", "failure"), 0) + counts.get(("broken", "dropped"), 0) >= 50:
            break
        time.sleep(0.1)
    assert counts[("watcher", "success")] >= 1 and counts[("broken", "failure")] >= 1, text
    assert successes("watcher") - before == counts[("watcher", "success")]
    # The failing shadow left the server serving.
    assert httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 200


def test_a_malformed_split_is_a_load_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "bad", add_constant_model(1), config("bad", param("canary", "two:ten")))
    server = start_server(repo, tmp_path / "server.log")
    try:
        rows = {r["name"]: r for r in httpx.post(f"{server.base_url}/v2/repository/index", timeout=10).json()}
        assert rows["bad"]["state"] == "UNAVAILABLE"
        assert "'canary' must be 'VERSION:PERCENT'" in rows["bad"]["reason"]
    finally:
        server.stop()



SELDON_SPLIT = """
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata:
  name: abtest
spec:
  predictors:
    - name: main
      traffic: 75
      graph: {name: plus1, type: MODEL, children: []}
    - name: candidate
      traffic: 25
      graph: {name: plus2, type: MODEL, children: []}
    - name: mirror
      shadow: true
      graph: {name: plus5, type: MODEL, children: []}
"""


def seldon_split_repository(repo: Path) -> Path:
    """plus1, plus2 and plus5 (ONNX models adding 1, 2, 5) and deployments/abtest.yaml splitting between them."""
    for name, constant in (("plus1", 1), ("plus2", 2), ("plus5", 5)):
        write_model(repo, name, add_constant_model(constant), config(name))
    (repo / "deployments").mkdir()
    (repo / "deployments" / "abtest.yaml").write_text(SELDON_SPLIT)
    return repo


def test_seldon_predictors_split_by_traffic_and_shadow(tmp_path: Path) -> None:
    repo = seldon_split_repository(tmp_path / "repo")
    with inferd.Server(model_repository=repo, strict_readiness=False) as server:
        x = np.zeros((1, 1), np.int32)
        served = {"main": 0, "candidate": 0}
        for _ in range(REQUESTS):
            response = server.infer("abtest", {"INPUT0": x})
            value = int(next(iter(response.outputs.values())).ravel()[0])
            assert value == {"main": 1, "candidate": 2}[response.variant]
            served[response.variant] += 1
        mean, share = REQUESTS * 0.25, 0.25
        assert abs(served["candidate"] - mean) <= 4 * math.sqrt(REQUESTS * share * (1 - share)), served
        assert server.traffic.metrics.counts() == {("abtest", "main"): served["main"],
                                                   ("abtest", "candidate"): served["candidate"]}
        # The shadow predictor got copies (its model counts them; beyond 64 in flight a copy is dropped, and
        # counted); its answers never reached the caller.
        copies: dict[str, int] = {}
        for _ in range(300):
            copies = {outcome: n for (_, _, outcome), n in server.traffic.metrics.shadow_counts().items()}
            if sum(copies.values()) >= REQUESTS:
                break
            time.sleep(0.1)
        assert sum(copies.values()) == REQUESTS and copies.get("failure", 0) == 0, copies
        mirrored = server.manager.get("abtest-mirror").stats.to_json()["inference_stats"]["success"]["count"]
        assert mirrored == copies["success"] > 0


def test_a_removed_deployment_takes_its_split_along(tmp_path: Path) -> None:
    repo = seldon_split_repository(tmp_path / "repo")
    with inferd.Server(model_repository=repo, strict_readiness=False, model_control_mode="poll",
                       repository_poll_secs=0.2) as server:
        x = np.zeros((1, 1), np.int32)
        assert server.infer("abtest", {"INPUT0": x}).variant in ("main", "candidate")
        (repo / "deployments" / "abtest.yaml").unlink()
        for _ in range(100):
            try:
                server.infer("abtest", {"INPUT0": x})
            except inferd.InferError as exc:
                assert "unknown model" in exc.message
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the removed deployment still answers")
        # Its predictors' own names went too, and the other models still serve.
        with pytest.raises(inferd.InferError, match="unknown model"):
            server.infer("abtest-main", {"INPUT0": x})
        assert int(server.infer("plus2", {"INPUT0": x}).outputs["OUTPUT0"].ravel()[0]) == 2


def test_every_http_protocol_names_the_variant(served: ServerProcess) -> None:
    """V1, Seldon and TorchServe answers carry X-Inferd-Variant as V2's do; the sticky header keeps one variant."""
    with httpx.Client(base_url=served.base_url, timeout=30) as client:
        headers = {"X-User": "carol"}
        v2 = client.post("/v2/models/sticky/infer", json=body(0), headers=headers)
        variant = v2.headers["x-inferd-variant"]
        v1 = client.post("/v1/models/sticky:predict", json={"instances": [[0]]}, headers=headers)
        assert v1.status_code == 200, v1.text
        assert v1.headers["x-inferd-variant"] == variant
        seldon = client.post("/seldon/default/sticky/api/v1.0/predictions", json={"data": {"ndarray": [[0]]}},
                             headers=headers)
        assert seldon.status_code == 200, seldon.text
        assert seldon.headers["x-inferd-variant"] == variant
        # A name with no split carries no variant.
        plain = client.post("/v1/models/watcher:predict", json={"instances": [[0]]})
        assert plain.status_code == 200 and "x-inferd-variant" not in plain.headers
