"""`inferd serve --workers 2`: two HTTP worker processes on the port, one server behind them.

What a user checks: answers equal the model run by hand (JSON and binary data, small tensors and ones that cross
through shared memory), from many connections at once, served by both workers; statistics, metrics, the
repository API and system shared memory answer as one server; errors are the single process's, byte for byte;
the model is loaded once (only the main process maps ONNX Runtime); SIGTERM ends every process.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException
from tritonclient.utils import shared_memory as shm

from clients import make_input, simple_data, simple_inputs
from models import (
    SIMPLE,
    SIMPLE_CONFIG,
    SLOW,
    add_slow,
    identity_config,
    identity_model,
    identity_name,
    simple_model,
    write_model,
)
from observing import metric, model_stats, scrape
from serving import HOST, ServerProcess, start_server

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="looks at processes through /proc")

IDENTITY = identity_name("FP32")  # FP32 [batch, n] -> the same: big inputs and outputs cross through the arenas
BIG = 40_000  # FP32 elements: 160 kB, over the 64 KiB that go inline in a message
CONNECTIONS = 16


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("workers") / "models"
    write_model(repo, SIMPLE, simple_model(), SIMPLE_CONFIG)
    write_model(repo, IDENTITY, identity_model("FP32"), identity_config("FP32"))
    add_slow(repo)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-workers.log", "--workers", "2",
                           "--model-control-mode", "explicit", "--load-model", SIMPLE, "--load-model", IDENTITY,
                           "--load-model", SLOW, "--allow-client-shm=true")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def single(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The same repository served by one process, to compare answers with."""
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-single.log",
                           "--model-control-mode", "explicit", "--load-model", SIMPLE, "--load-model", IDENTITY)
    yield process
    process.stop()


def run_in_threads(target: Callable[[int], None], count: int) -> None:
    """target(0) ... target(count - 1), each on its own thread, all at once; returns when every one has ended."""
    threads = [threading.Thread(target=target, args=(seed,)) for seed in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children")
        if children.exists():
            found += [int(c) for c in children.read_text().split()]
    return found


def _workers(server: ServerProcess) -> list[int]:
    """The server's HTTP worker processes (its children running inferd.frontends.workers)."""
    pids = []
    for child in _children(server.process.pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"inferd.frontends.workers" in command:
            pids.append(child)
    return pids


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_sockets(port: int) -> dict[int, str]:
    """inode -> state ("0A" listening, "01" established) of the TCP sockets whose local port is `port` (IPv6 ones
    too: grpcio listens on 127.0.0.1 through an IPv6 socket's IPv4-mapped address)."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                sockets[int(fields[9])] = fields[3]
    return sockets


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended: its parent has yet to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_the_workers_listen_and_main_does_not(server: ServerProcess) -> None:
    workers = _workers(server)
    assert len(workers) == 2, workers
    listening = {inode for inode, state in _tcp_sockets(server.http_port).items() if state == "0A"}
    assert len(listening) == 2  # one socket per worker (SO_REUSEPORT)
    for pid in workers:
        assert len(_socket_inodes(pid) & listening) == 1
    assert not _socket_inodes(server.process.pid) & listening


def test_answers_equal_the_model_from_many_connections(server: ServerProcess) -> None:
    before = {model: model_stats(server.base_url, model)["inference_count"] for model in (SIMPLE, IDENTITY)}
    sent = {SIMPLE: 0, IDENTITY: 0}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        try:
            for i in range(6):
                binary = bool((seed + i) % 2)
                a, b = simple_data(1 + i % 3, seed=seed * 100 + i)
                result = client.infer(SIMPLE, simple_inputs(httpclient, a, b, binary), outputs=[
                    httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
                    httpclient.InferRequestedOutput("OUTPUT1", binary_data=not binary)])
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
                x = np.random.default_rng(seed * 100 + i).standard_normal((1, BIG)).astype(np.float32)
                result = client.infer(IDENTITY, [make_input(httpclient, "INPUT0", x, "FP32", binary)],
                                      outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)])
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
                with lock:
                    sent[SIMPLE] += 1 + i % 3  # inference_count counts a batch's rows
                    sent[IDENTITY] += 1
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)
        finally:
            client.close()

    run_in_threads(run, 8)
    assert not errors, errors
    for model in (SIMPLE, IDENTITY):  # one server: every worker's requests in one model's statistics
        assert model_stats(server.base_url, model)["inference_count"] - before[model] == sent[model]
    samples = scrape(server.metrics_port)
    assert metric(samples, "nv_inference_request_success", model=IDENTITY, version="1") >= sent[IDENTITY]
    assert metric(samples, "nv_inference_count", model=SIMPLE, version="1") >= sent[SIMPLE]


def test_connections_are_served_by_both_workers(server: ServerProcess) -> None:
    body = json.dumps({"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                                  for n in ("INPUT0", "INPUT1")]})
    connections = [http.client.HTTPConnection(HOST, server.http_port, timeout=30) for _ in range(CONNECTIONS)]
    try:
        for connection in connections:  # keep-alive: each stays open, held by the worker that accepted it
            connection.request("POST", f"/v2/models/{SIMPLE}/infer", body=body)
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["outputs"][0]["data"][1] == 2
        established = {inode for inode, state in _tcp_sockets(server.http_port).items() if state == "01"}
        held = {pid: len(_socket_inodes(pid) & established) for pid in _workers(server)}
        assert sum(held.values()) == CONNECTIONS, held
        # SO_REUSEPORT spreads connections by their address hash: 16 all landing on one worker is 2 in 65,536.
        assert all(count > 0 for count in held.values()), held
    finally:
        for connection in connections:
            connection.close()


REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", f"/v2/models/{SIMPLE}/infer", {}, json.dumps({"id": "a", "inputs": [
        {"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))} for n in ("INPUT0", "INPUT1")],
        "parameters": {"binary_data_output": False}}).encode()),
    ("POST", f"/v2/models/{SIMPLE}/versions/1/infer", {"Inference-Header-Content-Length": "0"}, b""),
    ("POST", f"/v2/models/{SIMPLE}/infer", {}, b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", '
                                                b'"shape": [1, 3], "data": [1, 2, 3]}]}'),
    ("POST", f"/v2/models/{SIMPLE}/infer", {}, b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", '
                                                b'"shape": [1, 16], "data": [1]}]}'),
    ("POST", f"/v2/models/{SIMPLE}/infer", {}, b"{not json"),
    ("POST", "/v2/models/nope/infer", {}, b'{"inputs": []}'),
    ("GET", f"/v2/models/{SIMPLE}/infer", {}, b""),
    ("GET", f"/v2/models/{SIMPLE}/config", {}, b""),
    ("GET", "/v2/health/ready", {}, b""),
]


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_answers_are_the_single_process_answers(server: ServerProcess, single: ServerProcess, index: int) -> None:
    method, path, headers, body = REQUESTS[index]
    answers = []
    for target in (server, single):
        response = httpx.request(method, f"{target.base_url}{path}", headers=headers, content=body, timeout=30)
        answers.append((response.status_code, response.content,
                        sorted((k, v) for k, v in response.headers.items() if k != "date")))
    assert answers[0] == answers[1]


def test_binary_answers_are_the_single_process_answers(server: ServerProcess, single: ServerProcess) -> None:
    x = np.arange(BIG, dtype=np.float32).reshape(1, BIG)
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, BIG],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    answers = []
    for target in (server, single):
        response = httpx.post(f"{target.base_url}/v2/models/{IDENTITY}/infer", content=header + x.tobytes(),
                              headers={"Inference-Header-Content-Length": str(len(header))}, timeout=30)
        assert response.status_code == 200, response.text
        answers.append((response.content, response.headers["inference-header-content-length"]))
    assert answers[0] == answers[1]
    length = int(answers[0][1])
    np.testing.assert_array_equal(np.frombuffer(answers[0][0][length:], dtype=np.float32), x.ravel())


def test_repository_load_and_unload(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    a, b = simple_data(1)
    try:
        client.unload_model(SIMPLE)
        with pytest.raises(InferenceServerException):
            client.infer(SIMPLE, simple_inputs(httpclient, a, b))
        assert not client.is_model_ready(SIMPLE)
        client.load_model(SIMPLE)
        assert client.is_model_ready(SIMPLE)
        result = client.infer(SIMPLE, simple_inputs(httpclient, a, b))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    finally:
        client.load_model(SIMPLE)
        client.close()


def test_system_shared_memory(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    tag = f"workers-{os.getpid()}"
    size = 16 * 4
    inputs_region = shm.create_shared_memory_region(f"{tag}-in", f"/{tag}-in", 2 * size)
    outputs_region = shm.create_shared_memory_region(f"{tag}-out", f"/{tag}-out", 2 * size)
    try:
        client.register_system_shared_memory(f"{tag}-in", f"/{tag}-in", 2 * size)
        client.register_system_shared_memory(f"{tag}-out", f"/{tag}-out", 2 * size)
        a, b = simple_data(1, seed=7)
        shm.set_shared_memory_region(inputs_region, [a, b])
        tensors = simple_inputs(httpclient, a, b)
        tensors[0].set_shared_memory(f"{tag}-in", size)
        tensors[1].set_shared_memory(f"{tag}-in", size, offset=size)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in ("OUTPUT0", "OUTPUT1")]
        outputs[0].set_shared_memory(f"{tag}-out", size)
        outputs[1].set_shared_memory(f"{tag}-out", size, offset=size)
        client.infer(SIMPLE, tensors, outputs=outputs)
        np.testing.assert_array_equal(shm.get_contents_as_numpy(outputs_region, np.int32, [1, 16]), a + b)
        np.testing.assert_array_equal(shm.get_contents_as_numpy(outputs_region, np.int32, [1, 16], offset=size),
                                      a - b)
        status = client.get_system_shared_memory_status()
        assert {region["name"] for region in status} == {f"{tag}-in", f"{tag}-out"}
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inputs_region)
        shm.destroy_shared_memory_region(outputs_region)
        client.close()


def test_the_model_is_loaded_once(server: ServerProcess) -> None:
    def maps_onnxruntime(pid: int) -> bool:
        return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()

    assert maps_onnxruntime(server.process.pid)
    for pid in _workers(server):
        assert not maps_onnxruntime(pid)
        assert _rss_kb(pid) < _rss_kb(server.process.pid)


def test_with_tenants_every_request_reaches_the_main_process(repo: Path, tmp_path: Path) -> None:
    """--auth-config: the workers pass every request on as it came (the gateway reads the key in main)."""
    key = "workers-key-0123456789abcdef"
    auth = tmp_path / "auth.yaml"
    auth.write_text(yaml.safe_dump({"tenants": [{"name": "acme", "keys": [key], "models": [SIMPLE]}]}))
    process = start_server(repo, tmp_path / "inferd.log", "--workers", "2", "--auth-config", str(auth),
                           "--state-dir", str(tmp_path / "state"), "--model-control-mode", "explicit",
                           "--load-model", SIMPLE, "--load-model", IDENTITY)
    try:
        body = {"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": list(range(16))}
                           for n in ("INPUT0", "INPUT1")]}
        url = f"{process.base_url}/v2/models/{SIMPLE}/infer"
        refused = httpx.post(url, json=body, timeout=30)
        assert refused.status_code == 401 and "error" in refused.json()
        assert refused.headers["www-authenticate"].startswith("Bearer")
        hidden = httpx.post(f"{process.base_url}/v2/models/{IDENTITY}/infer", json=body, timeout=30,
                            headers={"Authorization": f"Bearer {key}"})
        assert hidden.status_code == 404, hidden.text
        answer = httpx.post(url, json=body, timeout=30,
                            headers={"Authorization": f"Bearer {key}", "X-Request-Id": "r-1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [2 * i for i in range(16)]
        assert answer.headers["x-request-id"] == "r-1"
        client = grpcclient.InferenceServerClient(process.grpc_url)  # gRPC: every call proxied to main's server
        a, b = simple_data(1)
        try:
            code, message = _grpc_error(lambda: client.infer(SIMPLE, simple_inputs(grpcclient, a, b)))
            assert code == "StatusCode.UNAUTHENTICATED", message
            result = client.infer(SIMPLE, simple_inputs(grpcclient, a, b), headers={"authorization": f"Bearer {key}"})
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        finally:
            client.close()
    finally:
        process.stop()


def test_workers_end_with_a_killed_main_process(repo: Path, tmp_path: Path) -> None:
    process = start_server(repo, tmp_path / "inferd.log", "--workers", "2", "--model-control-mode", "explicit",
                           "--load-model", SIMPLE)
    workers = _workers(process)
    assert len(workers) == 2
    os.kill(process.process.pid, signal.SIGKILL)
    process.wait_exit()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _running(pid)]


def test_a_worker_that_dies_is_replaced(server: ServerProcess) -> None:
    first, *_ = workers = _workers(server)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = _workers(server)
        if len(now) == len(workers) and first not in now:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no worker replaced {first}:\n{server.log()}")
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for seed in range(8):
            a, b = simple_data(1, seed=seed)
            result = client.infer(SIMPLE, simple_inputs(httpclient, a, b))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    finally:
        client.close()
    assert "ended unexpectedly" in server.log()


def _grpc_error(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as exc:
        call()
    return str(exc.value.status()), exc.value.message()


def test_grpc_is_served_by_the_workers_and_main_does_not_listen(server: ServerProcess) -> None:
    deadline = time.monotonic() + 30  # a worker replaced by an earlier test may still be starting
    while True:
        workers = _workers(server)
        listening = {inode for inode, state in _tcp_sockets(server.grpc_port).items() if state == "0A"}
        if len(listening) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(listening) == 2  # one socket per worker (SO_REUSEPORT)
    for pid in workers:
        assert len(_socket_inodes(pid) & listening) == 1
    assert not _socket_inodes(server.process.pid) & listening
    # A subchannel pool of its own per client: else grpc shares one connection among channels to one address.
    clients = [grpcclient.InferenceServerClient(server.grpc_url, channel_args=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(CONNECTIONS)]
    try:
        for client in clients:  # each client its own connection, held by the worker that accepted it
            assert client.is_server_live()
        established = {inode for inode, state in _tcp_sockets(server.grpc_port).items() if state == "01"}
        held = {pid: len(_socket_inodes(pid) & established) for pid in workers}
        assert sum(held.values()) == CONNECTIONS, held
        assert all(held.values()), held  # 2 ** -15 that the kernel gave every connection to one worker
    finally:
        for client in clients:
            client.close()


def test_grpc_and_http_answers_equal_the_model_from_parallel_clients(server: ServerProcess) -> None:
    before = {model: model_stats(server.base_url, model)["inference_count"] for model in (SIMPLE, IDENTITY)}
    sent = {SIMPLE: 0, IDENTITY: 0}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
        http_client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
        try:
            for i in range(6):
                a, b = simple_data(1 + i % 3, seed=seed * 100 + i)
                result = grpc_client.infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id=f"r{seed}-{i}")
                assert result.get_response().id == f"r{seed}-{i}"
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
                x = np.random.default_rng(seed * 100 + i).standard_normal((1, BIG)).astype(np.float32)
                result = grpc_client.infer(IDENTITY, [make_input(grpcclient, "INPUT0", x, "FP32")],
                                           outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
                result = http_client.infer(SIMPLE, simple_inputs(httpclient, a, b, True))
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
                with lock:
                    sent[SIMPLE] += 2 * (1 + i % 3)  # inference_count counts a batch's rows
                    sent[IDENTITY] += 1
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)
        finally:
            grpc_client.close()
            http_client.close()

    run_in_threads(run, 8)
    assert not errors, errors
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for model in (SIMPLE, IDENTITY):  # one server: both doors and every worker in one model's statistics
            assert model_stats(server.base_url, model)["inference_count"] - before[model] == sent[model]
            stats = grpc_client.get_inference_statistics(model, as_json=True)["model_stats"][0]
            assert int(stats["inference_count"]) - before[model] == sent[model]
    finally:
        grpc_client.close()


def test_grpc_api_through_the_workers(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    a, b = simple_data(1)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(SIMPLE)
        assert client.get_server_metadata().name
        metadata = client.get_model_metadata(SIMPLE, as_json=True)
        assert metadata["name"] == SIMPLE and [i["name"] for i in metadata["inputs"]] == ["INPUT0", "INPUT1"]
        assert client.get_model_config(SIMPLE, as_json=True)["config"]["name"] == SIMPLE
        assert SIMPLE in {row["name"] for row in client.get_model_repository_index(as_json=True)["models"]}
        client.unload_model(SIMPLE)
        assert not client.is_model_ready(SIMPLE)
        code, _ = _grpc_error(lambda: client.infer(SIMPLE, simple_inputs(grpcclient, a, b)))
        assert code == "StatusCode.UNAVAILABLE" or code.startswith("StatusCode.")
        client.load_model(SIMPLE)
        assert client.is_model_ready(SIMPLE)
        np.testing.assert_array_equal(client.infer(SIMPLE, simple_inputs(grpcclient, a, b)).as_numpy("OUTPUT0"),
                                      a + b)
    finally:
        client.load_model(SIMPLE)
        client.close()
    with grpc.insecure_channel(server.grpc_url) as channel:  # grpc.health.v1 answers as main would
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_errors_are_the_single_process_errors(server: ServerProcess, single: ServerProcess) -> None:
    a, b = simple_data(1)
    clients = [grpcclient.InferenceServerClient(s.grpc_url) for s in (server, single)]
    try:
        cases: list[Callable[[grpcclient.InferenceServerClient], object]] = [
            lambda c: c.infer("no_such_model", simple_inputs(grpcclient, a, b)),
            lambda c: c.infer(SIMPLE, simple_inputs(grpcclient, a, b), model_version="5"),
            lambda c: c.infer(SIMPLE, [make_input(grpcclient, "INPUT0", a, "INT32")]),
            lambda c: c.get_model_metadata("no_such_model"),
        ]
        for case in cases:
            workers, alone = (_grpc_error(functools.partial(case, c)) for c in clients)
            assert workers == alone
            assert workers[0] != "StatusCode.OK"
    finally:
        for client in clients:
            client.close()


def test_grpc_stream_infer_through_a_worker(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    sent = {}
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(5):
            a, b = simple_data(1, seed=i)
            sent[f"s{i}"] = a + b
            client.async_stream_infer(SIMPLE, simple_inputs(grpcclient, a, b), request_id=f"s{i}")
        for _ in range(5):
            result, error = answers.get(timeout=30)
            assert error is None, error
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), sent[result.get_response().id])
    finally:
        client.stop_stream()
        client.close()


def test_sigterm_answers_the_request_in_flight_and_ends_every_process(server: ServerProcess) -> None:
    """Last: it stops the module's server."""
    workers = _workers(server)
    assert workers
    answer: list[httpx.Response] = []
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]},
                       {"name": "DELAY", "datatype": "INT64", "shape": [1], "data": [3000]}]}
    caller = threading.Thread(target=lambda: answer.append(
        httpx.post(f"{server.base_url}/v2/models/{SLOW}/infer", json=body, timeout=60)))
    caller.start()
    deadline = time.monotonic() + 10  # until a worker holds its connection (a busy machine may take a while)
    while time.monotonic() < deadline and not any(
            _socket_inodes(pid) & {i for i, state in _tcp_sockets(server.http_port).items() if state == "01"}
            for pid in workers):
        time.sleep(0.02)
    time.sleep(0.5)  # its request read, decoded and running in the main process
    assert caller.is_alive(), "the slow request ended before the signal"
    os.kill(server.process.pid, signal.SIGTERM)
    caller.join(60)
    assert answer and answer[0].status_code == 200, answer
    assert answer[0].json()["outputs"][0]["data"] == [1, 2, 3, 4]
    assert server.wait_exit() == 0
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _running(pid)]
