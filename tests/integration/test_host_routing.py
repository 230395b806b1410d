"""Routing by host and by path on a real `inferd serve --host-routing '{model}.models.example.com'`: the Host header
(gRPC: the call's authority) names the model on V2, V1 and Seldon routes; KServe's /serving/{namespace}/{name}/
prefix does the same; a host or prefix naming no model is 404; a path naming another model is 400; other hosts and
the plain paths route as usual."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from test_seldon_everywhere import MLP, build_repository, mlp_expected
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from inferd import Server
from inferd.frontends.http import HttpFrontend
from models import SIMPLE
from serving import ServerProcess, start_server

PATTERN = "{model}.models.example.com"
X = np.array([[1, 2, 3, 4], [0.5, -1, 2, 8]], dtype=np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("host_routing") / "models")


@pytest.fixture(scope="module")
def routed(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("host_routing_log") / "server.log"
    process = start_server(repository, log, "--host-routing", PATTERN)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def http(routed: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=routed.base_url, timeout=30.0) as client:
        yield client


def _v2_body(x: np.ndarray = X) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def _scores(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def _error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    text = str(response.json()["error"])
    for word in words:
        assert word in text, text
    return text


# ---- the host names the model ----

@pytest.mark.parametrize("host", ["mlp.models.example.com", "MLP.Models.Example.COM", "mlp.models.example.com:8000",
                                  "mlp.models.example.com:443"])
def test_v2_infer_takes_the_model_from_the_host(http: httpx.Client, host: str) -> None:
    response = http.post("/v2/infer", json=_v2_body(), headers={"Host": host})
    np.testing.assert_allclose(_scores(response), mlp_expected(X), rtol=1e-6)
    assert response.json()["model_name"] == MLP


def test_several_hosts_several_models(http: httpx.Client) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    body = {"inputs": [{"name": f"INPUT{i}", "datatype": "INT32", "shape": [1, 16], "data": a.ravel().tolist()}
                       for i in (0, 1)]}
    response = http.post("/v2/infer", json=body, headers={"Host": "simple.models.example.com"})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs == {"OUTPUT0": (2 * a).ravel().tolist(), "OUTPUT1": [0] * 16}
    response = http.post("/v2/infer", json=_v2_body(), headers={"Host": "mlp.models.example.com"})
    np.testing.assert_allclose(_scores(response), mlp_expected(X), rtol=1e-6)


def test_ordinary_v2_paths_with_the_hosts_model(http: httpx.Client) -> None:
    host = {"Host": "mlp.models.example.com"}
    assert http.get(f"/v2/models/{MLP}/ready", headers=host).status_code == 200
    assert http.get(f"/v2/models/{MLP}", headers=host).json()["name"] == MLP
    assert http.get(f"/v2/models/{MLP}/config", headers=host).json()["name"] == MLP
    np.testing.assert_allclose(_scores(http.post(f"/v2/models/{MLP}/infer", json=_v2_body(), headers=host)),
                               mlp_expected(X), rtol=1e-6)
    assert http.get("/v2/health/ready", headers=host).status_code == 200


def test_v1_and_seldon_with_the_hosts_model(http: httpx.Client) -> None:
    host = {"Host": "mlp.models.example.com"}
    response = http.post(f"/v1/models/{MLP}:predict", json={"instances": X.tolist()}, headers=host)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], mlp_expected(X), rtol=1e-6)
    response = http.post("/api/v1.0/predictions", json={"data": {"ndarray": X.tolist()}}, headers=host)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["data"]["ndarray"], mlp_expected(X), rtol=1e-6)
    assert response.json()["meta"]["requestPath"] == {MLP: f"{MLP}:1"}


def test_tritonclient_through_the_host(routed: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(routed.http_url)
    try:
        inputs = [httpclient.InferInput("input", list(X.shape), "FP32")]
        inputs[0].set_data_from_numpy(X)
        result = client.infer(MLP, inputs, headers={"Host": "mlp.models.example.com"})
        np.testing.assert_allclose(result.as_numpy("scores"), mlp_expected(X), rtol=1e-6)
        with pytest.raises(InferenceServerException, match="host") as caught:
            client.infer(MLP, inputs, headers={"Host": "simple.models.example.com"})
        assert caught.value.status() == "400"
    finally:
        client.close()


# ---- conflicts and unknown hosts ----

def test_a_path_naming_another_model_is_a_400(http: httpx.Client) -> None:
    host = {"Host": "mlp.models.example.com"}
    text = _error(http.post(f"/v2/models/{SIMPLE}/infer", json=_v2_body(), headers=host), 400, SIMPLE, MLP)
    assert "host" in text
    _error(http.get(f"/v2/models/{SIMPLE}", headers=host), 400, SIMPLE)
    _error(http.get(f"/v2/models/{SIMPLE}/config", headers=host), 400, SIMPLE)
    _error(http.post(f"/v1/models/{SIMPLE}:predict", json={"instances": [[1]]}, headers=host), 400, SIMPLE)
    response = http.post(f"/seldon/default/{SIMPLE}/api/v1.0/predictions", json={"data": {"ndarray": [[1]]}},
                         headers=host)
    assert response.status_code == 400
    assert response.json()["status"]["status"] == "FAILURE" and MLP in response.json()["status"]["info"]


def test_a_host_naming_no_model_is_a_404(http: httpx.Client) -> None:
    host = {"Host": "nope.models.example.com"}
    _error(http.post("/v2/infer", json=_v2_body(), headers=host), 404, "nope")
    _error(http.get("/v2/models/nope/ready", headers=host), 404, "nope")
    _error(http.get("/v2/health/ready", headers=host), 404, "nope")
    _error(http.post("/v1/models/nope:predict", json={"instances": [[1]]}, headers=host), 404, "nope")
    response = http.post("/api/v1.0/predictions", json={"data": {"ndarray": [[1]]}}, headers=host)
    assert response.status_code == 404 and response.json()["status"]["code"] == 404


def test_other_hosts_route_as_usual(http: httpx.Client, routed: ServerProcess) -> None:
    for host in ("api.example.com", "models.example.com", "a.b.models.example.com", f"127.0.0.1:{routed.http_port}"):
        response = http.post(f"/v2/models/{MLP}/infer", json=_v2_body(), headers={"Host": host})
        np.testing.assert_allclose(_scores(response), mlp_expected(X), rtol=1e-6)
        _error(http.post("/v2/infer", json=_v2_body(), headers={"Host": host}), 400, "names no model")
    assert http.get("/v2/health/ready", headers={"Host": "api.example.com"}).status_code == 200


def test_seldon_model_header_in_front_of_v2(http: httpx.Client) -> None:
    response = http.post("/v2/infer", json=_v2_body(), headers={"Host": "api.example.com", "Seldon-Model": MLP})
    np.testing.assert_allclose(_scores(response), mlp_expected(X), rtol=1e-6)


# ---- KServe's /serving/{namespace}/{name}/ prefix ----

def test_kserve_serving_paths(http: httpx.Client) -> None:
    np.testing.assert_allclose(_scores(http.post(f"/serving/default/{MLP}/v2/models/{MLP}/infer", json=_v2_body())),
                               mlp_expected(X), rtol=1e-6)
    np.testing.assert_allclose(_scores(http.post(f"/serving/team-a/{MLP}/v2/infer", json=_v2_body())),
                               mlp_expected(X), rtol=1e-6)
    response = http.post(f"/serving/default/{MLP}/v1/models/{MLP}:predict", json={"instances": X.tolist()})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["predictions"], mlp_expected(X), rtol=1e-6)
    assert http.get(f"/serving/default/{MLP}/v2/models/{MLP}/ready").status_code == 200
    assert http.get(f"/serving/default/{MLP}/v2/health/live").status_code == 200
    _error(http.post(f"/serving/default/{MLP}/v2/models/{SIMPLE}/infer", json=_v2_body()), 400, SIMPLE, MLP)
    _error(http.post("/serving/default/nope/v2/infer", json=_v2_body()), 404, "nope")
    assert http.post("/serving/default", json={}).status_code == 404


# ---- gRPC: the authority names the model when ModelInfer names none ----

def _grpc_request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    tensor.contents.fp32_contents.extend(X.ravel().tolist())
    return request


def _grpc_scores(response: pb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(list(output.shape))


def test_grpc_host_metadata_names_the_model(routed: ServerProcess) -> None:
    with grpc.insecure_channel(routed.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(_grpc_request(""), metadata=[("host", "mlp.models.example.com")], timeout=30)
        assert answer.model_name == MLP
        np.testing.assert_allclose(_grpc_scores(answer), mlp_expected(X), rtol=1e-6)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_grpc_request(SIMPLE), metadata=[("host", "mlp.models.example.com")], timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and MLP in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_grpc_request(""), metadata=[("host", "nope.models.example.com")], timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        answer = stub.ModelInfer(_grpc_request(MLP), metadata=[("host", "api.example.com")], timeout=30)
        assert answer.model_name == MLP


def test_tritonclient_grpc_with_a_host_header(routed: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(routed.grpc_url)
    try:
        inputs = [grpcclient.InferInput("input", list(X.shape), "FP32")]
        inputs[0].set_data_from_numpy(X)
        result = client.infer(MLP, inputs, headers={"host": "mlp.models.example.com"})
        np.testing.assert_allclose(result.as_numpy("scores"), mlp_expected(X), rtol=1e-6)
    finally:
        client.close()


@pytest.mark.skipif(not hasattr(grpc.aio.ServicerContext, "experimental_authority"),
                    reason="this grpcio does not give a Python server the call's :authority (grpc/grpc#38906): "
                    "the server takes the authority from the `host` metadata entry instead")
def test_grpc_default_authority_names_the_model(routed: ServerProcess) -> None:
    options = [("grpc.default_authority", "mlp.models.example.com")]
    with grpc.insecure_channel(routed.grpc_url, options=options) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_grpc_request(""), timeout=30)
    np.testing.assert_allclose(_grpc_scores(answer), mlp_expected(X), rtol=1e-6)


# ---- off: no stage, and the Host header means nothing ----

def test_without_host_routing_the_host_is_ignored(repository: Path) -> None:
    with Server(repository) as plain, Server(repository, host_routing=PATTERN, start=False) as with_routing:
        assert "route" not in plain.pipeline.names
        names = with_routing.pipeline.names
        assert names.index("route") < names.index("resolve")
        frontend = HttpFrontend(plain)
        body = httpx.Request("POST", "http://x", json=_v2_body()).read()
        status, payload, _ = asyncio.run(frontend.handle(
            "POST", f"/v2/models/{MLP}/infer", {b"host": b"simple.models.example.com"}, body))
        assert status == 200, payload
        status, payload, _ = asyncio.run(frontend.handle(
            "POST", "/v2/infer", {b"host": b"mlp.models.example.com"}, body))
        assert status == 400 and b"names no model" in payload
