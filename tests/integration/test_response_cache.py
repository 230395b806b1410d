"""Triton's response cache on a real server (`inferd serve --cache-config local,size=BYTES`).

What a user checks: a repeated request is answered without running the model (the execution count stays, the
statistics' `cache_hit` grows, over HTTP and gRPC alike), the cache metrics count hits and misses, the answer from
the cache is the model's answer, requests that differ in their inputs or in the outputs they ask for (or how:
classification) never share an entry, models without `response_cache { enable: true }` and decoupled models are
never cached, shared-memory requests bypass the cache, and the cache holds to its size (the least recently used
answers are evicted and run again).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import shared_memory as shm

from clients import simple_data, simple_inputs
from models import SIMPLE_CONFIG, simple_model, write_model
from observing import metric, model_stats, scrape
from serving import INFERD, ServerProcess, start_server

CACHE = 'response_cache { enable: true }\n'
# One answer of `simple` with one row: two INT32 [1, 16] outputs (64 bytes each), the entry's overhead
# (caching/store.py: 256 per entry, 128 + the name's length per tensor) and its key's data (caching/key.py: each
# input's name, datatype and 64 bytes): 804 bytes.
ENTRY = 256 + 2 * (128 + len("OUTPUT0") + 64) + 2 * (len("INPUT0") + len("INT32") + 64)
SMALL_CACHE_ENTRIES = 3


def _config(name: str, extra: str = "") -> str:
    return SIMPLE_CONFIG.replace('name: "simple"', f'name: "{name}"') + extra


def _repository(root: Path) -> Path:
    repo = root / "models"
    repo.mkdir(parents=True)
    write_model(repo, "cached", simple_model(), _config("cached", CACHE))
    write_model(repo, "uncached", simple_model(), _config("uncached"))
    write_model(repo, "opted_out", simple_model(), _config("opted_out", 'response_cache { enable: false }\n'))
    write_model(repo, "decoupled", simple_model(),
                _config("decoupled", CACHE + "model_transaction_policy { decoupled: true }\n"))
    write_model(repo, "shm_cached", simple_model(), _config("shm_cached", CACHE))
    write_model(repo, "small", simple_model(), _config("small", CACHE))
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("cache")
    process = start_server(_repository(root), root / "inferd-cache.log", "--cache-config", "local,size=1048576",
                           "--allow-client-shm=true")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A cache with room for three answers of `simple` (the size given twice: the later one counts, as Triton)."""
    root = tmp_path_factory.mktemp("small-cache")
    process = start_server(_repository(root), root / "inferd-small-cache.log", "--cache-config", "local,size=64",
                           "--cache-config", f"local,size={SMALL_CACHE_ENTRIES * ENTRY + ENTRY // 2}")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def _counts(stats: dict[str, Any]) -> dict[str, int]:
    inference = stats["inference_stats"]
    return {"executions": int(stats.get("execution_count", 0)), "success": int(inference["success"]["count"]),
            "hits": int(inference["cache_hit"].get("count", 0)), "misses": int(inference["cache_miss"].get("count", 0))}


def _infer(client: Any, module: Any, model: str, a: np.ndarray, b: np.ndarray,
           outputs: list[Any] | None = None) -> Any:
    return client.infer(model, simple_inputs(module, a, b), outputs=outputs)


def test_a_repeated_request_is_answered_from_the_cache(server: ServerProcess, http: Any, grpc: Any) -> None:
    a, b = simple_data(2, seed=1)
    first = _infer(http, httpclient, "cached", a, b)
    assert _counts(model_stats(server.base_url, "cached")) == {"executions": 1, "success": 1, "hits": 0,
                                                              "misses": 1}
    again = [_infer(http, httpclient, "cached", a, b), _infer(grpc, grpcclient, "cached", a, b),
             _infer(http, httpclient, "cached", a, b)]
    for result in (first, *again):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert _counts(model_stats(server.base_url, "cached")) == {"executions": 1, "success": 4, "hits": 3,
                                                              "misses": 1}
    # tritonclient's statistics call shows them too, over both protocols
    over_http = http.get_inference_statistics("cached")["model_stats"][0]["inference_stats"]
    over_grpc = grpc.get_inference_statistics("cached", as_json=True)["model_stats"][0]["inference_stats"]
    for stats in (over_http, over_grpc):
        assert int(stats["cache_hit"]["count"]) == 3 and int(stats["cache_hit"]["ns"]) > 0, stats
        assert int(stats["cache_miss"]["count"]) == 1 and int(stats["cache_miss"]["ns"]) > 0, stats
        assert int(stats["compute_infer"]["count"]) == 1, stats  # hits computed nothing


def test_cache_metrics_count_hits_and_misses(server: ServerProcess, http: Any) -> None:
    a, b = simple_data(1, seed=2)
    before = _counts(model_stats(server.base_url, "cached"))
    for _ in range(4):
        _infer(http, httpclient, "cached", a, b)
    _infer(http, httpclient, "uncached", a, b)
    after = _counts(model_stats(server.base_url, "cached"))
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (3, 1)
    samples = scrape(server.metrics_port)
    labels = {"model": "cached", "version": "1"}
    assert metric(samples, "nv_cache_num_hits_per_model", **labels) == after["hits"]
    assert metric(samples, "nv_cache_num_misses_per_model", **labels) == after["misses"]
    assert metric(samples, "nv_cache_hit_duration_per_model", **labels) >= 0
    assert metric(samples, "nv_cache_miss_duration_per_model", **labels) > 0
    assert metric(samples, "nv_inference_exec_count", **labels) == after["executions"]
    assert metric(samples, "inferd_cache_size_bytes") == 1048576
    assert metric(samples, "inferd_cache_entries") >= 2 and 0 < metric(samples, "inferd_cache_used_bytes") < 1048576
    # a model that does not use the cache has no cache metrics (as in Triton)
    assert not [key for key in samples if key[0].startswith("nv_cache") and ("model", "uncached") in key[1]]


def test_different_inputs_or_outputs_never_share_an_entry(server: ServerProcess, http: Any, grpc: Any) -> None:
    a, b = simple_data(1, seed=3)
    c, d = simple_data(1, seed=4)
    start = _counts(model_stats(server.base_url, "cached"))
    np.testing.assert_array_equal(_infer(http, httpclient, "cached", a, b).as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(_infer(http, httpclient, "cached", c, d).as_numpy("OUTPUT0"), c + d)
    np.testing.assert_array_equal(_infer(http, httpclient, "cached", b, a).as_numpy("OUTPUT1"), b - a)
    two_rows = (np.concatenate([a, c]), np.concatenate([b, d]))
    np.testing.assert_array_equal(_infer(http, httpclient, "cached", *two_rows).as_numpy("OUTPUT0"),
                                  two_rows[0] + two_rows[1])
    only_one = _infer(http, httpclient, "cached", a, b, [httpclient.InferRequestedOutput("OUTPUT1")])
    assert only_one.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only_one.as_numpy("OUTPUT1"), a - b)
    classes = _infer(http, httpclient, "cached", a, b,
                     [httpclient.InferRequestedOutput("OUTPUT0", class_count=2)]).as_numpy("OUTPUT0")
    top = np.argsort(-(a + b)[0])[:2]
    assert [v.decode().split(":")[1] for v in classes[0]] == [str(i) for i in top]
    middle = _counts(model_stats(server.base_url, "cached"))
    assert middle["misses"] - start["misses"] == 6 and middle["hits"] == start["hits"]
    # each of them is now in the cache under its own key: asked again (gRPC too), each gets its own answer
    again = _infer(grpc, grpcclient, "cached", a, b, [grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)])
    np.testing.assert_array_equal(again.as_numpy("OUTPUT0"), classes)
    np.testing.assert_array_equal(_infer(grpc, grpcclient, "cached", c, d).as_numpy("OUTPUT1"), c - d)
    only_one = _infer(grpc, grpcclient, "cached", a, b, [grpcclient.InferRequestedOutput("OUTPUT1")])
    assert only_one.as_numpy("OUTPUT0") is None
    end = _counts(model_stats(server.base_url, "cached"))
    assert end["hits"] - middle["hits"] == 3 and end["executions"] == middle["executions"]


@pytest.mark.parametrize("model", ["uncached", "opted_out", "decoupled"])
def test_models_that_do_not_use_the_cache_run_every_time(server: ServerProcess, http: Any, model: str) -> None:
    a, b = simple_data(1, seed=5)
    before = _counts(model_stats(server.base_url, model))
    for _ in range(3):
        np.testing.assert_array_equal(_infer(http, httpclient, model, a, b).as_numpy("OUTPUT0"), a + b)
    after = _counts(model_stats(server.base_url, model))
    assert {k: after[k] - before[k] for k in after} == {"executions": 3, "success": 3, "hits": 0, "misses": 0}
    if model == "decoupled":
        assert "model 'decoupled' is decoupled: its response_cache is not used" in server.log()


def test_shared_memory_requests_bypass_the_cache(server: ServerProcess, http: Any) -> None:
    a, b = simple_data(1, seed=6)
    name = f"cache_test_{os.getpid()}"
    handle = shm.create_shared_memory_region(name, f"/{name}", a.nbytes * 2, create_only=True)
    try:
        shm.set_shared_memory_region(handle, [a, b])
        http.register_system_shared_memory(name, f"/{name}", a.nbytes * 2)
        for _ in range(2):
            inputs = [httpclient.InferInput("INPUT0", [1, 16], "INT32"),
                      httpclient.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_shared_memory(name, a.nbytes)
            inputs[1].set_shared_memory(name, a.nbytes, offset=a.nbytes)
            result = http.infer("shm_cached", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        assert _counts(model_stats(server.base_url, "shm_cached")) == {"executions": 2, "success": 2, "hits": 0,
                                                                      "misses": 0}
    finally:
        http.unregister_system_shared_memory(name)
        shm.destroy_shared_memory_region(handle)


def test_the_cache_holds_to_its_size(small_server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(small_server.http_url)
    try:
        data = [simple_data(1, seed=100 + i) for i in range(6)]
        for a, b in data:  # six answers into a cache with room for three
            np.testing.assert_array_equal(_infer(client, httpclient, "small", a, b).as_numpy("OUTPUT0"), a + b)
        filled = _counts(model_stats(small_server.base_url, "small"))
        assert filled == {"executions": 6, "success": 6, "hits": 0, "misses": 6}
        for a, b in data[-SMALL_CACHE_ENTRIES:]:  # the three most recent are there
            np.testing.assert_array_equal(_infer(client, httpclient, "small", a, b).as_numpy("OUTPUT0"), a + b)
        kept = _counts(model_stats(small_server.base_url, "small"))
        assert (kept["hits"], kept["executions"]) == (3, 6)
        for a, b in data[:2]:  # the first ones were evicted: they run again
            np.testing.assert_array_equal(_infer(client, httpclient, "small", a, b).as_numpy("OUTPUT0"), a + b)
        evicted = _counts(model_stats(small_server.base_url, "small"))
        assert (evicted["hits"], evicted["misses"], evicted["executions"]) == (3, 8, 8)
        samples = scrape(small_server.metrics_port)  # eight answers kept, three at a time: five evicted
        assert metric(samples, "inferd_cache_entries") == SMALL_CACHE_ENTRIES
        assert metric(samples, "inferd_cache_evictions") == 5
        assert metric(samples, "inferd_cache_used_bytes") <= metric(samples, "inferd_cache_size_bytes")
    finally:
        client.close()


@pytest.mark.parametrize("value, words", [
    ("redis,size=100", "no cache named 'redis'"),
    ("local,size=lots", "size must be a number of bytes"),
    ("local", "format is '<cache name>,<setting>=<value>'"),
    ("local,colour=blue", "one setting, size=BYTES"),
])
def test_a_bad_cache_config_stops_the_server_with_why(tmp_path: Path, value: str, words: str) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    done = subprocess.run([str(INFERD), "serve", "--model-repository", str(repo), "--http-port", "0",
                           "--grpc-port", "0", "--metrics-port", "0", "--cache-config", value],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert words in done.stdout + done.stderr, done.stdout + done.stderr
