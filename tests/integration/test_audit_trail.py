"""The audit trail over the wire: a real `inferd serve --auth-config` with its audit database (sqlite in the state
folder, or a real PostgreSQL), called over V2 HTTP, V2 gRPC, V1 and TorchServe by two tenants and the admin,
answered or refused. The table is then read directly with SQLAlchemy: exactly one record per call, each with the
right fields; /v2/usage and `inferd usage` total the same; and SIGTERM under load loses no answered call.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from audit_rows import stored
from inferd.gateway.audit import AuditRecord
from models import (
    SIMPLE,
    SIMPLE_CONFIG,
    add_simple,
    identity_config,
    identity_model,
    identity_name,
    simple_model,
    write_model,
)
from postgres import postgres_url  # noqa: F401 - the fixture
from serving import INFERD, ServerProcess, start_server

ACME_KEY = "acme-audit-key-0123456789"
BETA_KEY = "beta-audit-key-9876543210"
ADMIN_KEY = "admin-audit-key-5555555555"
HIDDEN = "hidden"  # a model that exists, granted to beta only: acme is answered 404 as for a missing one
ECHO = identity_name("BYTES")  # BYTES [batch, -1] -> the same: TorchServe's body in, the same bytes out
PAYLOAD_BYTES = 2 * 16 * 4  # simple: two INT32 [1, 16] in, two INT32 [1, 16] out
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
ADDRESS = re.compile(r"^127\.0\.0\.1:\d+$")
V2_INFER = "/v2/models/{model_name}/infer"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
V1_PREDICT = "/v1/models/{model_name}:predict"
TS_PREDICT = "/predictions/{model_name}"


@dataclasses.dataclass
class Backend:
    name: str
    args: tuple[str, ...]  # the server's audit arguments
    url: str  # where the records are, for SQLAlchemy


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    state = tmp_path / "state"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return Backend("postgres", ("--state-dir", str(state), "--audit-db", url), url)
    return Backend("sqlite", ("--state-dir", str(state)), f"sqlite:///{state / 'audit.db'}")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit-trail")
    repo = root / "models"
    add_simple(repo)
    write_model(repo, HIDDEN, simple_model(), SIMPLE_CONFIG.replace(f'name: "{SIMPLE}"', f'name: "{HIDDEN}"'))
    write_model(repo, ECHO, identity_model("BYTES"), identity_config("BYTES"))
    auth = root / "auth.json"
    auth.write_text(json.dumps({"admin_keys": [ADMIN_KEY], "tenants": [
        {"name": "acme", "keys": [ACME_KEY], "models": [SIMPLE, ECHO]},
        {"name": "beta", "keys": [BETA_KEY], "models": [SIMPLE, ECHO, HIDDEN]},
    ]}))
    return root


@pytest.fixture
def server(repository: Path, backend: Backend, tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server(repository / "models", tmp_path / "inferd.log", "--auth-config",
                           str(repository / "auth.json"), *backend.args)
    try:
        yield process
    finally:
        process.stop()


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def tensors() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(16, dtype=np.int32).reshape(1, 16), np.ones((1, 16), dtype=np.int32)


@dataclasses.dataclass
class Expected:
    """What one call's record must say; `request_id` None: a generated hex id (or `answer_id`, the id answered);
    bytes -1: not checked."""

    tenant: str | None
    model: str
    version: str
    protocol: str
    endpoint: str
    status: int
    request_id: str | None = None
    answer_id: str | None = None
    answered: bool = True  # the pipeline ran it (a door's refusal has no latency or bytes)
    bytes_in: int = PAYLOAD_BYTES
    bytes_out: int = PAYLOAD_BYTES


class Caller:
    """Sends the calls, one protocol each, and notes what each call's record must be."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.expected: list[Expected] = []
        self.http = httpx.Client(base_url=server.base_url, timeout=30)

    def close(self) -> None:
        self.http.close()

    def v2_http(self, key: str | None, tenant: str | None, model: str = SIMPLE, *, request_id: str = "",
                header_id: str | None = None, status: int = 200, door: bool = False) -> None:
        headers = {**bearer(key), **({"X-Request-Id": header_id} if header_id else {})}
        with httpclient.InferenceServerClient(self.server.http_url) as client:
            inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            for tensor, value in zip(inputs, tensors(), strict=True):
                tensor.set_data_from_numpy(value)
            try:
                result = client.infer(model, inputs, request_id=request_id, headers=headers)
            except InferenceServerException as exc:
                assert exc.status() == str(status), exc
                answer_id = None
            else:
                assert status == 200
                answer_id = result.get_response()["id"]
        refused = status == 401 or door  # answered at the HTTP door: no latency, no bytes
        self.expected.append(Expected(tenant, model, "" if refused or status != 200 else "1", "v2-http", V2_INFER,
                                      status, request_id or header_id, answer_id, not refused,
                                      0 if refused else PAYLOAD_BYTES, PAYLOAD_BYTES if status == 200 else 0))

    def v2_grpc(self, key: str | None, tenant: str | None, model: str = SIMPLE, *, request_id: str = "",
                header_id: str | None = None, status: int = 200) -> None:
        headers = {**({"authorization": f"Bearer {key}"} if key else {}),
                   **({"x-request-id": header_id} if header_id else {})}
        with grpcclient.InferenceServerClient(self.server.grpc_url) as client:
            inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            for tensor, value in zip(inputs, tensors(), strict=True):
                tensor.set_data_from_numpy(value)
            try:
                result = client.infer(model, inputs, request_id=request_id, headers=headers)
            except InferenceServerException as exc:
                assert exc.status() == {401: "StatusCode.UNAUTHENTICATED", 404: "StatusCode.NOT_FOUND"}[status], exc
                answer_id = None
            else:
                assert status == 200
                answer_id = result.get_response().id
        refused = status == 401  # answered by the interceptor: no latency, no bytes
        self.expected.append(Expected(tenant, model, "" if refused or status != 200 else "1", "v2-grpc",
                                      GRPC_INFER, status, request_id or header_id, answer_id, not refused,
                                      0 if refused else PAYLOAD_BYTES, PAYLOAD_BYTES if status == 200 else 0))

    def v2_http_undecodable(self, key: str, tenant: str, body: bytes, model: str = SIMPLE, *,
                            header_id: str | None = None, status: int = 400) -> None:
        """A V2 HTTP call answered before the pipeline: its body cannot be decoded (or the model is unknown)."""
        headers = {**bearer(key), **({"X-Request-Id": header_id} if header_id else {})}
        response = self.http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        assert response.status_code == status, response.text
        self.expected.append(Expected(tenant, model, "", "v2-http", V2_INFER, status, header_id, None, True, 0, 0))

    def v2_grpc_undecodable(self, key: str, tenant: str, *, request_id: str = "", header_id: str | None = None
                            ) -> None:
        """A ModelInfer whose raw tensor has the wrong size: INVALID_ARGUMENT before the pipeline."""
        request = service_pb2.ModelInferRequest(model_name=SIMPLE, id=request_id)
        for name in ("INPUT0", "INPUT1"):
            tensor = request.inputs.add(name=name, datatype="INT32")
            tensor.shape.extend([1, 16])
        request.raw_input_contents.extend([bytes(10), bytes(64)])
        metadata = [("authorization", f"Bearer {key}"), *([("x-request-id", header_id)] if header_id else [])]
        with grpc.insecure_channel(self.server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(request, metadata=metadata, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
        self.expected.append(Expected(tenant, SIMPLE, "", "v2-grpc", GRPC_INFER, 400, request_id or header_id, None,
                                      True, 0, 0))

    def v1(self, key: str | None, tenant: str | None, model: str = SIMPLE, *, header_id: str | None = None,
           status: int = 200, door: bool = False) -> None:
        a, b = tensors()
        body = {"instances": [{"INPUT0": a[0].tolist(), "INPUT1": b[0].tolist()}]}
        headers = {**bearer(key), **({"X-Request-Id": header_id} if header_id else {})}
        response = self.http.post(f"/v1/models/{model}:predict", json=body, headers=headers)
        assert response.status_code == status, response.text
        refused = status == 401 or door  # answered at the HTTP door: no latency, no bytes
        self.expected.append(Expected(tenant, model, "" if refused or status != 200 else "1", "v1", V1_PREDICT,
                                      status, header_id, None, not refused, 0 if refused else PAYLOAD_BYTES,
                                      PAYLOAD_BYTES if status == 200 else 0))

    def torchserve(self, key: str | None, tenant: str | None, model: str = ECHO, *, header_id: str | None = None,
                   status: int = 200, door: bool = False) -> None:
        body = f"payload for {model} from {tenant}".encode()
        headers = {**bearer(key), **({"X-Request-Id": header_id} if header_id else {})}
        response = self.http.post(f"/predictions/{model}", content=body, headers=headers)
        assert response.status_code == status, response.text
        if status == 200:
            assert response.content == body
        refused = status == 401 or door  # answered at the HTTP door: no latency, no bytes
        size = len(body) if status == 200 else -1 if not refused else 0  # -1: not checked
        version = "1" if status in (200, 400) else ""  # a 400 comes from the resolved model: no BYTES input
        self.expected.append(Expected(tenant, model, version, "torchserve", TS_PREDICT, status,
                                      header_id, None, not refused, size, size))


def check(record: AuditRecord, expected: Expected) -> None:
    assert record.tenant == expected.tenant
    assert record.model == expected.model
    assert record.version == expected.version
    assert record.protocol == expected.protocol
    assert record.endpoint == expected.endpoint
    assert record.status == expected.status
    if expected.request_id is not None:
        assert record.request_id == expected.request_id
    else:
        assert HEX_ID.match(record.request_id), record.request_id
    if expected.answer_id is not None:
        assert record.request_id == expected.answer_id
    if expected.bytes_in >= 0:
        assert (record.bytes_in, record.bytes_out) == (expected.bytes_in, expected.bytes_out)
    if expected.answered:
        assert record.latency_ms > 0
    else:
        assert record.latency_ms >= 0
    if expected.protocol == "v2-grpc":
        assert ADDRESS.match(record.client), record.client
    else:
        assert record.client == "" or ADDRESS.match(record.client), record.client
    assert abs(record.time - time.time()) < 120


def test_every_call_has_one_record_with_its_fields_and_usage_totals_match(
        server: ServerProcess, backend: Backend) -> None:
    started = time.time()
    caller = Caller(server)
    try:
        for _ in range(2):
            caller.v2_http(ACME_KEY, "acme")
            caller.v2_grpc(BETA_KEY, "beta")
            caller.v1(BETA_KEY, "beta")
            caller.torchserve(ACME_KEY, "acme")
        caller.v2_http(ACME_KEY, "acme", request_id="v2-acme-1")
        caller.v2_http(BETA_KEY, "beta", header_id="xr-beta-http")
        caller.v2_http(ADMIN_KEY, "admin", request_id="v2-admin-1", header_id="xr-loses-to-the-v2-id")
        caller.v2_http(None, None, header_id="xr-nokey-http", status=401)
        caller.v2_http("not-a-key", None, status=401)
        caller.v2_grpc(ACME_KEY, "acme", request_id="grpc-acme-1")
        caller.v2_grpc(BETA_KEY, "beta", header_id="xr-beta-grpc")
        caller.v2_grpc(ADMIN_KEY, "admin")
        caller.v2_grpc(ACME_KEY, "acme", HIDDEN, request_id="grpc-hidden", status=404)
        caller.v2_grpc(None, None, SIMPLE, request_id="grpc-nokey", status=401)
        caller.v2_grpc(None, None, SIMPLE, header_id="xr-nokey-grpc", status=401)
        caller.v1(ACME_KEY, "acme", header_id="xr-acme-v1")
        caller.v1(ADMIN_KEY, "admin")
        caller.v1(None, None, status=401)
        caller.torchserve(BETA_KEY, "beta", header_id="xr-beta-ts")
        # A model acme is not granted: 404 at the HTTP door (in the pipeline on gRPC), as for a missing model.
        caller.v2_http(ACME_KEY, "acme", HIDDEN, header_id="xr-v2-hidden", status=404, door=True)
        caller.v2_http(ACME_KEY, "acme", HIDDEN, status=404, door=True)
        caller.v1(ACME_KEY, "acme", HIDDEN, header_id="xr-v1-hidden", status=404, door=True)
        caller.torchserve(ACME_KEY, "acme", HIDDEN, header_id="xr-ts-hidden", status=404, door=True)
        # Answered before the pipeline (the request cannot be decoded): recorded all the same.
        caller.v2_http_undecodable(ACME_KEY, "acme", b"{not json", header_id="xr-bad-json")
        caller.v2_http_undecodable(BETA_KEY, "beta", json.dumps({"id": "short", "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [1, 2, 3]}]}).encode())
        caller.v2_http_undecodable(ADMIN_KEY, "admin", b"{not json", "no_such_model", status=404)
        caller.v2_grpc_undecodable(ACME_KEY, "acme", request_id="grpc-bad-raw")
        caller.v2_grpc_undecodable(BETA_KEY, "beta", header_id="xr-grpc-bad-raw")
        caller.torchserve(None, None, status=401)
        caller.torchserve(None, None, SIMPLE, header_id="xr-nokey-ts", status=401)
        # /v2/usage (it flushes the trail first): the admin sees everyone, a tenant itself only.
        everyone = caller.http.get("/v2/usage", headers=bearer(ADMIN_KEY))
        assert everyone.status_code == 200, everyone.text
        acme = caller.http.get("/v2/usage", headers=bearer(ACME_KEY))
        assert acme.status_code == 200, acme.text
        beta_by_hour = caller.http.get("/v2/usage?tenant=beta&group_by=hour", headers=bearer(BETA_KEY))
        assert beta_by_hour.status_code == 200, beta_by_hour.text
        assert caller.http.get("/v2/usage?tenant=beta", headers=bearer(ACME_KEY)).status_code == 403
        cli = subprocess.run([str(INFERD), "usage", "--url", server.base_url, "--key", ADMIN_KEY, "--csv"],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
    finally:
        caller.close()
    assert server.stop() == 0, server.log()
    records = stored(backend.url)
    expected = caller.expected
    assert len(records) == len(expected), _shown(records)
    for index, (record, want) in enumerate(zip(records, expected, strict=True)):
        try:
            check(record, want)
        except AssertionError as exc:
            raise AssertionError(f"call {index}: {record} does not match {want}") from exc
        assert record.time >= started - 1
    generated = [r.request_id for r in records if HEX_ID.match(r.request_id)]
    assert len(set(generated)) == len(generated)
    # Usage totals equal the records (the usage queries came after every call: usage() flushes first).
    totals = _totals(records)
    assert _row_totals(everyone.json()) == totals
    assert {row["tenant"] for row in everyone.json()} == {"acme", "beta", "admin", None}
    assert {row["tenant"] for row in acme.json()} == {"acme"}
    assert _row_totals(acme.json()) == _totals([r for r in records if r.tenant == "acme"])
    assert {row["tenant"] for row in beta_by_hour.json()} == {"beta"}
    assert _row_totals(beta_by_hour.json()) == _totals([r for r in records if r.tenant == "beta"])
    cli_rows = list(csv.DictReader(io.StringIO(cli.stdout)))
    assert _row_totals(cli_rows) == totals
    assert {row["tenant"] for row in cli_rows} == {"acme", "beta", "admin", ""}


def test_torchserve_refusing_a_model_without_bytes_inputs_is_recorded(server: ServerProcess, backend: Backend
                                                                        ) -> None:
    caller = Caller(server)
    try:
        caller.torchserve(ACME_KEY, "acme", SIMPLE, header_id="xr-ts-simple", status=400)
    finally:
        caller.close()
    _check_stopped(server, backend, caller)


def _check_stopped(server: ServerProcess, backend: Backend, caller: Caller) -> None:
    """Stop the server; then its table holds exactly the calls' records (bytes and latency not checked)."""
    assert server.stop() == 0, server.log()
    records = stored(backend.url)
    assert len(records) == len(caller.expected), _shown(records)
    for record, want in zip(records, caller.expected, strict=True):
        check(record, dataclasses.replace(want, bytes_in=-1, answered=False))


def _shown(records: list[AuditRecord]) -> str:
    return "records:\n" + "\n".join(map(str, records))


def _totals(records: list[AuditRecord]) -> tuple[int, int, int, int]:
    return (len(records), sum(r.status >= 400 for r in records), sum(r.bytes_in for r in records),
            sum(r.bytes_out for r in records))


def _row_totals(rows: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    return tuple(sum(int(row[c]) for row in rows)  # type: ignore[return-value]
                 for c in ("requests", "errors", "bytes_in", "bytes_out"))


# ---- SIGTERM under load ----

LOAD_THREADS = 4
LOAD_S = 1.0


class Load:
    """One client thread sending inference requests back to back, each with an id of its own, until the server
    stops answering; `answered` holds the ids of the calls answered 200."""

    def __init__(self, server: ServerProcess, index: int) -> None:
        self.server = server
        self.prefix = f"load-{index}-"
        self.grpc = index % 2 == 1
        self.answered: list[str] = []
        self.failures: list[str] = []  # what ended the thread: a non-200 answer or an error
        self.early: list[str] = []  # those before SIGTERM was sent (none expected)
        self.terminated = threading.Event()  # set just before SIGTERM is sent
        self.thread = threading.Thread(target=self._run, name=f"load-{index}")

    def _run(self) -> None:
        try:
            (self._grpc if self.grpc else self._http)()
        except Exception as exc:  # the server going away ends the thread
            self._failed(f"{type(exc).__name__}: {exc}")

    def _failed(self, text: str) -> None:
        self.failures.append(text)
        if not self.terminated.is_set():
            self.early.append(text)

    def _http(self) -> None:
        a, b = tensors()
        with httpx.Client(base_url=self.server.base_url, timeout=30, headers=bearer(ACME_KEY)) as client:
            for n in range(10**9):
                request_id = f"{self.prefix}{n}"
                body = {"id": request_id, "inputs": [
                    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a.ravel().tolist()},
                    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b.ravel().tolist()}]}
                response = client.post(f"/v2/models/{SIMPLE}/infer", json=body)
                if response.status_code != 200:
                    self._failed(f"HTTP {response.status_code}: {response.text}")
                    return
                assert response.json()["id"] == request_id
                self.answered.append(request_id)

    def _grpc(self) -> None:
        with grpcclient.InferenceServerClient(self.server.grpc_url) as client:
            inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            for tensor, value in zip(inputs, tensors(), strict=True):
                tensor.set_data_from_numpy(value)
            for n in range(10**9):
                request_id = f"{self.prefix}{n}"
                client.infer(SIMPLE, inputs, request_id=request_id, headers={"authorization": f"Bearer {BETA_KEY}"},
                             client_timeout=30)
                self.answered.append(request_id)


def test_sigterm_under_load_loses_no_answered_call(server: ServerProcess, backend: Backend) -> None:
    loads = [Load(server, i) for i in range(LOAD_THREADS)]
    for load in loads:
        load.thread.start()
    time.sleep(LOAD_S)
    for load in loads:
        load.terminated.set()
    server.terminate()
    code = server.wait_exit()
    for load in loads:
        load.thread.join(30)
        assert not load.thread.is_alive()
    assert not [text for load in loads for text in load.early], [load.early for load in loads]
    assert all(load.answered for load in loads)
    assert code == 0, server.log()
    records = stored(backend.url)
    recorded = {r.request_id for r in records if r.status == 200}
    answered = [request_id for load in loads for request_id in load.answered]
    assert len(recorded) == sum(r.status == 200 for r in records)  # no id twice
    missing = set(answered) - recorded
    assert not missing, f"{len(missing)} answered call(s) without a 200 record, e.g. {sorted(missing)[:5]}"
    # A call may be recorded and its answer lost with the connection: at most the one in flight per thread.
    assert len(recorded) - len(answered) <= LOAD_THREADS
    assert {r.tenant for r in records if r.status == 200} == {"acme", "beta"}
    print(f"{backend.name}: {len(answered)} answered 200, {len(recorded)} records of 200, {len(records)} records",
          [load.failures[-1][:90] for load in loads])
