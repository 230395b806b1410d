"""Triton's shared-memory extensions with tritonclient, over HTTP and gRPC: system shared memory end to end, every
misuse answered with INVALID_ARGUMENT (the server keeps serving and keeps no mapping), the limits (off by default,
the server's own segments refused, a bounded number of regions), and the CUDA endpoints' "not supported" subset."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor
from tritonclient.utils import shared_memory as shm

from clients import make_input, simple_data
from models import (
    SIMPLE,
    SIMPLE_STRING,
    SIMPLE_STRING_CONFIG,
    SLOW,
    add_simple,
    add_slow,
    simple_string_model,
    write_model,
)
from observing import metric, scrape
from serving import ServerProcess, start_server

PROTOCOLS = ("http", "grpc")
SIMPLE_BYTES = 16 * 4  # one INT32 [1, 16] tensor of `simple`
PY_DOUBLE = "py_double"  # a Python model: it runs in an instance process, with the server's shared-memory arenas
MAX_SHM_REGIONS = 128  # the server's default cap on registered regions


def _add_py_double(repo: Path) -> None:
    version = repo / PY_DOUBLE / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent("""
        import numpy as np


        class Model:
            def predict(self, inputs):
                return {"y": inputs["x"] * np.float32(2)}
    """))
    (repo / PY_DOUBLE / "config.pbtxt").write_text(textwrap.dedent(f"""
        name: "{PY_DOUBLE}"
        backend: "python"
        input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
        output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
    """))


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: the tests look at its registered regions and at its memory mappings."""
    repo = tmp_path_factory.mktemp("shm") / "models"
    add_simple(repo)
    add_slow(repo)
    write_model(repo, SIMPLE_STRING, simple_string_model(), SIMPLE_STRING_CONFIG)
    _add_py_double(repo)
    # Client shared memory is off by default (as Triton 26.04+): these tests turn it on.
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-shm.log", "--allow-client-shm=true")
    yield process
    process.stop()


def _client(protocol: str, server: ServerProcess) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    return grpcclient.InferenceServerClient(server.grpc_url)


def _module(protocol: str) -> Any:
    return httpclient if protocol == "http" else grpcclient


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(protocol: str, shm_server: ServerProcess) -> Iterator[Any]:
    c = _client(protocol, shm_server)
    yield c
    c.close()


class Regions:
    """Shared-memory objects a test creates; destroyed (and unregistered) when it ends."""

    def __init__(self, client: Any, tag: str) -> None:
        self.client = client
        self.tag = f"{tag}_{os.getpid()}"
        self.handles: dict[str, Any] = {}

    def create(self, name: str, byte_size: int, register: bool = True, offset: int = 0) -> Any:
        full = f"{self.tag}_{name}"
        handle = shm.create_shared_memory_region(full, f"/{full}", byte_size, create_only=True)
        self.handles[full] = handle
        if register:
            self.client.register_system_shared_memory(full, f"/{full}", byte_size - offset, offset=offset)
        return handle

    def name(self, name: str) -> str:
        return f"{self.tag}_{name}"

    def close(self) -> None:
        for full, handle in self.handles.items():
            try:
                self.client.unregister_system_shared_memory(full)
            finally:
                shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions(client: Any, protocol: str, request: pytest.FixtureRequest) -> Iterator[Regions]:
    made = Regions(client, f"inferd_test_{protocol}_{request.node.name.split('[')[0][-20:]}")
    yield made
    made.close()


def _mapped_keys(server: ServerProcess, prefix: str) -> list[str]:
    """The server's memory mappings of POSIX shared-memory objects whose name starts with `prefix`."""
    maps = Path(f"/proc/{server.process.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see the server's mappings")
    return [line for line in maps.read_text().splitlines() if f"/dev/shm/{prefix}" in line]


def _status(client: Any, protocol: str, name: str = "") -> list[dict[str, Any]]:
    """System shared-memory status in the HTTP form (a list), whatever the protocol."""
    if protocol == "http":
        return list(client.get_system_shared_memory_status(name))
    regions = client.get_system_shared_memory_status(name, as_json=True).get("regions", {})
    return [{"name": r["name"], "key": r["key"], "offset": int(r.get("offset", 0)), "byte_size": int(r["byte_size"])}
            for r in regions.values()]


def _simple_shm_inputs(protocol: str, region: str, offset: int = 0) -> list[Any]:
    module = _module(protocol)
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory(region, SIMPLE_BYTES, offset=offset)
    inputs[1].set_shared_memory(region, SIMPLE_BYTES, offset=offset + SIMPLE_BYTES)
    return inputs


def _shm_outputs(protocol: str, region: str, names: tuple[str, ...] = ("OUTPUT0", "OUTPUT1"),
                 size: int = SIMPLE_BYTES) -> list[Any]:
    module = _module(protocol)
    outputs = []
    for i, name in enumerate(names):
        out = module.InferRequestedOutput(name)
        out.set_shared_memory(region, size, offset=i * size)
        outputs.append(out)
    return outputs


def _expect_invalid(call: Any, *words: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    status = str(caught.value.status())
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (status, caught.value.message())
    message = caught.value.message() or ""
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    return message


def _still_serving(client: Any, protocol: str) -> None:
    module = _module(protocol)
    a, b = simple_data(2, seed=7)
    result = client.infer(SIMPLE, [make_input(module, "INPUT0", a, "INT32"), make_input(module, "INPUT1", b, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


# ---- the happy path ----

def test_metadata_lists_system_shared_memory_and_not_cuda(client: Any, protocol: str) -> None:
    metadata = client.get_server_metadata() if protocol == "http" else client.get_server_metadata(as_json=True)
    assert "system_shared_memory" in metadata["extensions"]
    assert "cuda_shared_memory" not in metadata["extensions"]  # registering CUDA regions is refused


def test_inputs_and_outputs_in_shared_memory(client: Any, protocol: str, regions: Regions,
                                             shm_server: ServerProcess) -> None:
    a, b = simple_data(1, seed=1)
    inputs = regions.create("in", 2 * SIMPLE_BYTES)
    outputs = regions.create("out", 2 * SIMPLE_BYTES)
    shm.set_shared_memory_region(inputs, [a, b])

    status = {r["name"]: r for r in _status(client, protocol)}
    assert status[regions.name("in")] == {"name": regions.name("in"), "key": f"/{regions.name('in')}",
                                          "offset": 0, "byte_size": 2 * SIMPLE_BYTES}
    assert _status(client, protocol, regions.name("out"))[0]["byte_size"] == 2 * SIMPLE_BYTES

    for _ in range(3):  # the mapping is reused, request after request
        result = client.infer(SIMPLE, _simple_shm_inputs(protocol, regions.name("in")),
                              outputs=_shm_outputs(protocol, regions.name("out")))
        sum_ = shm.get_contents_as_numpy(outputs, np.int32, [1, 16])
        diff = shm.get_contents_as_numpy(outputs, np.int32, [1, 16], offset=SIMPLE_BYTES)
        np.testing.assert_array_equal(sum_, a + b)
        np.testing.assert_array_equal(diff, a - b)
        output = result.get_output("OUTPUT0")
        shape = output["shape"] if protocol == "http" else list(output.shape)
        datatype = output["datatype"] if protocol == "http" else output.datatype
        assert (list(shape), datatype) == ([1, 16], "INT32")
        a, b = b, a  # new data in the same region
        shm.set_shared_memory_region(inputs, [a, b])

    assert _mapped_keys(shm_server, regions.tag)  # mapped while registered
    client.unregister_system_shared_memory(regions.name("in"))
    client.unregister_system_shared_memory(regions.name("out"))
    assert regions.name("in") not in {r["name"] for r in _status(client, protocol)}
    assert _mapped_keys(shm_server, regions.tag) == []  # unregistering unmaps
    _still_serving(client, protocol)


def test_region_at_an_offset_of_its_object(client: Any, protocol: str, regions: Regions) -> None:
    """The registered offset is where the region starts in the object; tensor offsets count from there."""
    start = 4096 + 100  # not page-aligned
    a, b = simple_data(1, seed=2)
    handle = regions.create("obj", start + 3 * SIMPLE_BYTES, offset=start)
    shm.set_shared_memory_region(handle, [a, b], offset=start)
    assert _status(client, protocol, regions.name("obj"))[0]["offset"] == start
    client.infer(SIMPLE, _simple_shm_inputs(protocol, regions.name("obj")),
                 outputs=[_one_output(protocol, "OUTPUT0", regions.name("obj"), 2 * SIMPLE_BYTES)])
    written = shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=start + 2 * SIMPLE_BYTES)
    np.testing.assert_array_equal(written, a + b)


def _one_output(protocol: str, name: str, region: str, offset: int, size: int = SIMPLE_BYTES) -> Any:
    out = _module(protocol).InferRequestedOutput(name)
    out.set_shared_memory(region, size, offset=offset)
    return out


def test_inputs_in_shared_memory_outputs_in_the_response(client: Any, protocol: str, regions: Regions) -> None:
    a, b = simple_data(1, seed=3)
    handle = regions.create("in", 2 * SIMPLE_BYTES)
    out = regions.create("out", SIMPLE_BYTES)
    shm.set_shared_memory_region(handle, [a, b])
    result = client.infer(SIMPLE, _simple_shm_inputs(protocol, regions.name("in")))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    # One output in shared memory, the other in the response: each where it was asked for.
    result = client.infer(SIMPLE, _simple_shm_inputs(protocol, regions.name("in")),
                          outputs=[_one_output(protocol, "OUTPUT0", regions.name("out"), 0),
                                   _module(protocol).InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out, np.int32, [1, 16]), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_bytes_tensors_in_shared_memory(client: Any, protocol: str, regions: Regions) -> None:
    words = np.array([[f"word-{i}-é".encode() for i in range(16)]], dtype=object)
    serialized = serialize_byte_tensor(words)
    data = serialized.item() if serialized.dtype == np.object_ else serialized.tobytes()
    size = len(data)
    handle = regions.create("in", size)
    out = regions.create("out", size + 64)
    shm.set_shared_memory_region(handle, [serialized])
    module = _module(protocol)
    tensor = module.InferInput("INPUT0", [1, 16], "BYTES")
    tensor.set_shared_memory(regions.name("in"), size)
    result = client.infer(SIMPLE_STRING, [tensor],
                          outputs=[_one_output(protocol, "OUTPUT0", regions.name("out"), 0, size + 64)])
    output = result.get_output("OUTPUT0")
    params = output["parameters"] if protocol == "http" else {k: v.int64_param for k, v in output.parameters.items()
                                                               if k == "shared_memory_byte_size"}
    assert params["shared_memory_byte_size"] == size  # what was written
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out, np.object_, [1, 16]), words)
    assert deserialize_bytes_tensor(data).tolist() == words.ravel().tolist()


# ---- misuse: INVALID_ARGUMENT, and the server goes on ----

def test_unknown_region(client: Any, protocol: str, regions: Regions) -> None:
    _expect_invalid(lambda: client.infer(SIMPLE, _simple_shm_inputs(protocol, "no_such_region")), "no_such_region")
    regions.create("in", 2 * SIMPLE_BYTES)
    _expect_invalid(lambda: client.infer(SIMPLE, _simple_shm_inputs(protocol, regions.name("in")),
                                         outputs=[_one_output(protocol, "OUTPUT0", "nowhere", 0)]), "nowhere")
    _expect_invalid(lambda: client.get_system_shared_memory_status("no_such_region"), "no_such_region")
    client.unregister_system_shared_memory("no_such_region")  # nothing to do is not an error (as in Triton)
    _still_serving(client, protocol)


def test_offset_and_size_past_the_region(client: Any, protocol: str, regions: Regions) -> None:
    regions.create("in", 2 * SIMPLE_BYTES)
    _expect_invalid(lambda: client.infer(SIMPLE, _simple_shm_inputs(protocol, regions.name("in"), offset=8)),
                    "runs past the end", regions.name("in"))
    regions.create("out", SIMPLE_BYTES)
    _expect_invalid(lambda: client.infer(SIMPLE, _simple_shm_inputs(protocol, regions.name("in")),
                                         outputs=[_one_output(protocol, "OUTPUT0", regions.name("out"), 4)]),
                    "runs past the end")
    _still_serving(client, protocol)


def test_input_byte_size_must_match_its_shape(client: Any, protocol: str, regions: Regions) -> None:
    regions.create("in", 2 * SIMPLE_BYTES)
    module = _module(protocol)
    inputs = _simple_shm_inputs(protocol, regions.name("in"))
    inputs[0] = module.InferInput("INPUT0", [1, 16], "INT32")
    inputs[0].set_shared_memory(regions.name("in"), SIMPLE_BYTES - 4)
    _expect_invalid(lambda: client.infer(SIMPLE, inputs), "INPUT0", "byte size")
    _still_serving(client, protocol)


def test_output_region_too_small(client: Any, protocol: str, regions: Regions) -> None:
    handle = regions.create("in", 2 * SIMPLE_BYTES)
    shm.set_shared_memory_region(handle, list(simple_data(1)))
    regions.create("out", SIMPLE_BYTES)
    _expect_invalid(lambda: client.infer(SIMPLE, _simple_shm_inputs(protocol, regions.name("in")),
                                         outputs=[_one_output(protocol, "OUTPUT0", regions.name("out"), 0,
                                                              SIMPLE_BYTES // 2)]),
                    "OUTPUT0", f"needs {SIMPLE_BYTES} bytes")
    _still_serving(client, protocol)


def test_registering_a_name_twice(client: Any, protocol: str, regions: Regions) -> None:
    regions.create("in", 64)
    _expect_invalid(lambda: client.register_system_shared_memory(regions.name("in"), f"/{regions.name('in')}", 64),
                    "already registered")
    assert len([r for r in _status(client, protocol) if r["name"] == regions.name("in")]) == 1


def test_register_a_key_that_does_not_exist(client: Any, protocol: str) -> None:
    _expect_invalid(lambda: client.register_system_shared_memory("ghost", "/inferd_no_such_key", 64),
                    "/inferd_no_such_key", "does not exist")
    assert "ghost" not in {r["name"] for r in _status(client, protocol)}


def test_register_past_the_end_of_the_object(client: Any, protocol: str, regions: Regions) -> None:
    regions.create("small", 64, register=False)
    name = regions.name("small")
    _expect_invalid(lambda: client.register_system_shared_memory(name, f"/{name}", 128), "runs past the end")
    _expect_invalid(lambda: client.register_system_shared_memory(name, f"/{name}", 64, offset=8), "runs past the end")
    _expect_invalid(lambda: client.register_system_shared_memory(name, f"/{name}", 0), "byte_size")
    assert name not in {r["name"] for r in _status(client, protocol)}


def test_region_unregistered_while_a_request_uses_it(client: Any, protocol: str, regions: Regions,
                                                     shm_server: ServerProcess) -> None:
    """The unregister succeeds at once; the request using the region fails with INVALID_ARGUMENT; the mapping
    goes when the request lets go of it."""
    handle = regions.create("slow", 32)
    shm.set_shared_memory_region(handle, [np.array([1, 2, 3, 4], dtype=np.float32)])
    module = _module(protocol)
    x = module.InferInput("INPUT0", [4], "FP32")
    x.set_shared_memory(regions.name("slow"), 16)
    delay = make_input(module, "DELAY", np.array([4000], dtype=np.int64), "INT64")
    outcome: dict[str, Any] = {}

    def run() -> None:
        own = _client(protocol, shm_server)
        try:
            outcome["result"] = own.infer(SLOW, [x, delay],
                                          outputs=[_one_output(protocol, "OUTPUT0", regions.name("slow"), 16, 16)])
        except InferenceServerException as exc:
            outcome["error"] = exc
        finally:
            own.close()

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while metric(scrape(shm_server.metrics_port), "nv_inference_pending_request_count", model=SLOW, version="1") < 1:
        assert time.monotonic() < deadline and worker.is_alive(), "the slow request never arrived"
        time.sleep(0.02)
    # Counted as pending, the request is bound to its region in the same event-loop turn (no pipeline stage before
    # admission waits here), and the unregister below is served on that same loop: it comes after the binding.
    client.unregister_system_shared_memory(regions.name("slow"))
    assert regions.name("slow") not in {r["name"] for r in _status(client, protocol)}
    worker.join(120)
    error = outcome.get("error")
    assert error is not None, "the request went on with an unregistered region"
    assert str(error.status()) in ("400", "StatusCode.INVALID_ARGUMENT")
    assert "unregistered while this request was using it" in (error.message() or "")
    # The name is free again, and the region works as before.
    client.register_system_shared_memory(regions.name("slow"), f"/{regions.name('slow')}", 32)
    client.unregister_system_shared_memory(regions.name("slow"))
    deadline = time.monotonic() + 10
    while _mapped_keys(shm_server, regions.tag):  # held by the failed request's views until they are freed
        assert time.monotonic() < deadline, _mapped_keys(shm_server, regions.tag)
        _still_serving(client, protocol)
        time.sleep(0.05)
    _still_serving(client, protocol)


def test_unregister_all(client: Any, protocol: str, regions: Regions, shm_server: ServerProcess) -> None:
    for name in ("a", "b"):
        regions.create(name, 64)
    assert {regions.name("a"), regions.name("b")} <= {r["name"] for r in _status(client, protocol)}
    client.unregister_system_shared_memory()
    assert _status(client, protocol) == []
    assert _mapped_keys(shm_server, regions.tag) == []


def test_shared_memory_parameters_must_go_together(shm_server: ServerProcess) -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
                        "parameters": {"shared_memory_region": "r"}},
                       {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [0] * 16}]}
    response = httpx.post(f"{shm_server.base_url}/v2/models/{SIMPLE}/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert "shared_memory_byte_size" in response.json()["error"]
    body["inputs"][0]["parameters"] = {"shared_memory_region": "r", "shared_memory_byte_size": 64}
    body["inputs"][0]["data"] = [0] * 16
    response = httpx.post(f"{shm_server.base_url}/v2/models/{SIMPLE}/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert "must not have 'data'" in response.json()["error"]


def test_http_register_body_is_checked(shm_server: ServerProcess) -> None:
    url = f"{shm_server.base_url}/v2/systemsharedmemory/region/bad/register"
    response = httpx.post(url, json={"key": "/x"}, timeout=30)
    assert response.status_code == 400 and "byte_size" in response.json()["error"]
    response = httpx.post(url, json={"key": 5, "byte_size": 8}, timeout=30)
    assert response.status_code == 400 and "key" in response.json()["error"]
    assert httpx.get(f"{shm_server.base_url}/v2/systemsharedmemory/region/bad/register", timeout=30).status_code == 405
    assert httpx.get(f"{shm_server.base_url}/v2/systemsharedmemory/status", timeout=30).json() == []


# ---- limits: the server's own segments, and how many regions ----

def _expect_refused(call: Any, http_status: str, grpc_status: str, *words: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert str(caught.value.status()) in (http_status, f"StatusCode.{grpc_status}"), (caught.value.status(),
                                                                                     caught.value.message())
    message = caught.value.message() or ""
    for word in words:
        assert word in message, (word, message)
    return message


def _server_arenas(server: ServerProcess) -> list[str]:
    """The POSIX shared-memory objects of the server's instance processes (`/inferd-<server pid>-<random>`)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("needs /dev/shm to see the server's segments")
    return sorted(p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(f"inferd-{server.process.pid}-"))


def test_the_servers_own_segments_can_never_be_registered(client: Any, protocol: str,
                                                          shm_server: ServerProcess) -> None:
    """A client that registered the server's instance arenas could read and rewrite other clients' tensors."""
    module = _module(protocol)
    x = np.arange(4, dtype=np.float32)
    result = client.infer(PY_DOUBLE, [make_input(module, "x", x, "FP32")])  # the instance's arenas exist now
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    arenas = _server_arenas(shm_server)
    assert arenas, "the Python model's instance made no shared-memory arena"
    for arena in arenas:
        for key in (f"/{arena}", f"//{arena}", arena):  # shm_open ignores leading slashes
            _expect_refused(lambda k=key: client.register_system_shared_memory("stolen", k, 64), "403",
                            "PERMISSION_DENIED", "server's own segments", key)
    assert "stolen" not in {r["name"] for r in _status(client, protocol)}
    result = client.infer(PY_DOUBLE, [make_input(module, "x", x + 1, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), (x + 1) * 2)
    _still_serving(client, protocol)


def test_registered_regions_are_capped(client: Any, protocol: str, regions: Regions,
                                       shm_server: ServerProcess) -> None:
    """Each region holds a file descriptor of the server: past the cap, RESOURCE_EXHAUSTED (HTTP 429)."""
    regions.create("cap", 64, register=False)
    key = f"/{regions.name('cap')}"
    room = MAX_SHM_REGIONS - len(_status(client, protocol))
    names = [f"{regions.name('cap')}_{i}" for i in range(room)]
    try:
        for name in names:
            client.register_system_shared_memory(name, key, 64)
        assert len(_status(client, protocol)) == MAX_SHM_REGIONS
        _expect_refused(lambda: client.register_system_shared_memory(f"{regions.name('cap')}_over", key, 64),
                        "429", "RESOURCE_EXHAUSTED", f"{MAX_SHM_REGIONS} system shared memory regions")
        assert len(_mapped_keys(shm_server, regions.tag)) == room  # the refused one was not mapped
        client.unregister_system_shared_memory(names[0])  # room again
        client.register_system_shared_memory(f"{regions.name('cap')}_over", key, 64)
        names.append(f"{regions.name('cap')}_over")
        _still_serving(client, protocol)
    finally:
        for name in names:
            client.unregister_system_shared_memory(name)
    assert _mapped_keys(shm_server, regions.tag) == []


# ---- CUDA shared memory: endpoints present, registration refused ----

def test_cuda_shared_memory_endpoints(client: Any, protocol: str) -> None:
    if protocol == "http":
        assert client.get_cuda_shared_memory_status() == []
    else:
        assert len(client.get_cuda_shared_memory_status().regions) == 0
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("anything")
    with pytest.raises(InferenceServerException) as caught:
        client.register_cuda_shared_memory("gpu_region", b"aGFuZGxl", 0, 64)  # a base64 cudaIPC handle
    assert "CUDA shared memory is not supported on this server" in (caught.value.message() or "")
    assert str(caught.value.status()) in ("400", "StatusCode.UNIMPLEMENTED")
    _still_serving(client, protocol)


# ---- switched off: the default ----

def test_client_shm_is_off_by_default(tmp_path: Path, server_log: Path) -> None:
    """Without --allow-client-shm=true, no client can have the server map a segment it names (another process's
    secrets included): register answers 403 / PERMISSION_DENIED and the extension is not listed."""
    repo = tmp_path / "models"
    add_simple(repo)
    process = start_server(repo, server_log)
    name = f"inferd_off_{os.getpid()}"
    handle = shm.create_shared_memory_region(name, f"/{name}", 2 * SIMPLE_BYTES, create_only=True)
    try:
        http = httpclient.InferenceServerClient(process.http_url)
        grpc = grpcclient.InferenceServerClient(process.grpc_url)
        assert "system_shared_memory" not in http.get_server_metadata()["extensions"]
        for c, code in ((http, "403"), (grpc, "StatusCode.PERMISSION_DENIED")):
            with pytest.raises(InferenceServerException) as caught:
                c.register_system_shared_memory(name, f"/{name}", 2 * SIMPLE_BYTES)
            assert str(caught.value.status()) == code
            assert "--allow-client-shm" in (caught.value.message() or "")
        assert http.get_system_shared_memory_status() == []
        http.unregister_system_shared_memory()
        for c, protocol in ((http, "http"), (grpc, "grpc")):  # at inference the region is not there: 400
            _expect_invalid(lambda c=c, protocol=protocol: c.infer(SIMPLE, _simple_shm_inputs(protocol, name)),
                            name, "--allow-client-shm=true")
        _still_serving(http, "http")
        http.close()
        grpc.close()
    finally:
        shm.destroy_shared_memory_region(handle)
        process.stop()
