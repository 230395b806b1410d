"""Statistics and Prometheus metrics count exactly what was sent: successes, and failures by reason.

A server of its own, so that no other test's requests are counted. Failures of three kinds:
a request the model cannot take (wrong shape: INVALID_ARGUMENT, counted under reason OTHER), a model that fails
while executing (ONNX Runtime raises: reason BACKEND), and requests for a model that does not exist (counted
nowhere, since there is no model to count them under).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from batching_models import picky_config, picky_model
from clients import make_input, simple_data, simple_inputs
from models import SIMPLE, add_simple, write_model
from observing import batch_counts, metric, model_stats, scrape
from serving import HOST, ServerProcess, start_server

PICKY = "picky"  # INT32 [batch, n]: executes only when n is a multiple of 4

GOOD_BATCHES = [1, 2, 3, 4, 8]  # one good request per entry, of that many rows
BAD_SHAPES = 3
PICKY_GOOD, PICKY_BAD = 2, 4


@pytest.fixture(scope="module")
def stats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("stats") / "models"
    repo.mkdir(parents=True)
    add_simple(repo)
    write_model(repo, PICKY, picky_model(), picky_config(PICKY))
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-stats.log")
    yield process
    process.stop()


def _failure(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as exc:
        call(*args, **kwargs)
    return exc.value


@pytest.fixture(scope="module")
def traffic(stats_server: ServerProcess) -> dict[str, int]:
    """Send the test traffic once, over HTTP and gRPC; returns what was sent."""
    http = httpclient.InferenceServerClient(stats_server.http_url)
    grpc = grpcclient.InferenceServerClient(stats_server.grpc_url)
    try:
        for i, batch in enumerate(GOOD_BATCHES):
            a, b = simple_data(batch, seed=i)
            client, module = (http, httpclient) if i % 2 == 0 else (grpc, grpcclient)
            result = client.infer(SIMPLE, simple_inputs(module, a, b))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        for i in range(BAD_SHAPES):
            a, b = simple_data(1, seed=50 + i)
            client, module = (http, httpclient) if i % 2 == 0 else (grpc, grpcclient)
            error = _failure(client.infer, SIMPLE, simple_inputs(module, a[:, :15], b[:, :15]))
            assert error.status() in ("400", "StatusCode.INVALID_ARGUMENT"), error.status()
        for i in range(PICKY_GOOD):
            x = np.arange(8, dtype=np.int32).reshape(1, 8) + i
            result = http.infer(PICKY, [make_input(httpclient, "INPUT0", x, "INT32")])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
        for i in range(PICKY_BAD):
            x = np.arange(6, dtype=np.int32).reshape(1, 6) + i
            client, module = (http, httpclient) if i % 2 == 0 else (grpc, grpcclient)
            error = _failure(client.infer, PICKY, [make_input(module, "INPUT0", x, "INT32")])
            assert error.status() in ("500", "StatusCode.INTERNAL"), error.status()
        for client, module in ((http, httpclient), (grpc, grpcclient)):
            a, b = simple_data(1)
            error = _failure(client.infer, "no_such_model", simple_inputs(module, a, b))
            assert error.status() in ("404", "400", "StatusCode.NOT_FOUND"), error.status()
    finally:
        http.close()
        grpc.close()
    return {"good": len(GOOD_BATCHES), "rows": sum(GOOD_BATCHES), "bad_shape": BAD_SHAPES,
            "picky_good": PICKY_GOOD, "picky_bad": PICKY_BAD}


def test_http_statistics_count_successes_and_failures(stats_server: ServerProcess, traffic: dict[str, int]) -> None:
    simple = model_stats(stats_server.base_url, SIMPLE)
    assert simple["name"] == SIMPLE
    assert simple["version"] == "1"
    inference = simple["inference_stats"]
    assert inference["success"]["count"] == traffic["good"]
    assert inference["fail"]["count"] == traffic["bad_shape"]
    # Without dynamic batching every good request is one execution of its own size; bad ones never execute.
    assert simple["inference_count"] == traffic["rows"]
    assert simple["execution_count"] == traffic["good"]
    assert batch_counts(simple) == {size: GOOD_BATCHES.count(size) for size in GOOD_BATCHES}
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[phase]["count"] == traffic["good"], phase
    assert simple["last_inference"] > 0

    picky = model_stats(stats_server.base_url, PICKY)
    assert picky["inference_stats"]["success"]["count"] == traffic["picky_good"]
    assert picky["inference_stats"]["fail"]["count"] == traffic["picky_bad"]
    assert picky["inference_count"] == traffic["picky_good"]  # failed executions count no inferences


def test_all_models_statistics_and_unknown_models(stats_server: ServerProcess, traffic: dict[str, int]) -> None:
    response = httpx.get(f"{stats_server.base_url}/v2/models/stats", timeout=10.0)
    assert response.status_code == 200
    entries = {(e["name"], e["version"]): e for e in response.json()["model_stats"]}
    assert set(entries) == {(SIMPLE, "1"), (PICKY, "1")}  # requests for an unknown model are counted nowhere
    assert entries[(SIMPLE, "1")]["inference_stats"]["success"]["count"] == traffic["good"]
    assert httpx.get(f"{stats_server.base_url}/v2/models/no_such_model/stats", timeout=10.0).status_code == 404


def test_prometheus_metrics_match(stats_server: ServerProcess, traffic: dict[str, int]) -> None:
    samples = scrape(stats_server.metrics_port)
    simple = {"model": SIMPLE, "version": "1"}
    picky = {"model": PICKY, "version": "1"}
    assert metric(samples, "nv_inference_request_success", **simple) == traffic["good"]
    assert metric(samples, "nv_inference_request_failure", **simple, reason="OTHER") == traffic["bad_shape"]
    for reason in ("BACKEND", "REJECTED", "CANCELED"):
        assert metric(samples, "nv_inference_request_failure", **simple, reason=reason) == 0, reason
    assert metric(samples, "nv_inference_count", **simple) == traffic["rows"]
    assert metric(samples, "nv_inference_exec_count", **simple) == traffic["good"]
    assert metric(samples, "nv_inference_pending_request_count", **simple) == 0
    assert metric(samples, "inferd_request_latency_us_count", **simple) == traffic["good"]
    assert metric(samples, "inferd_batch_size_count", **simple) == traffic["good"]
    assert metric(samples, "inferd_batch_size_sum", **simple) == traffic["rows"]
    assert metric(samples, "inferd_batch_size_bucket", **simple, le="+Inf") == traffic["good"]
    assert metric(samples, "inferd_batch_size_bucket", **simple, le="2.0") == GOOD_BATCHES.count(1) + \
        GOOD_BATCHES.count(2)

    assert metric(samples, "nv_inference_request_success", **picky) == traffic["picky_good"]
    assert metric(samples, "nv_inference_request_failure", **picky, reason="BACKEND") == traffic["picky_bad"]
    assert metric(samples, "nv_inference_request_failure", **picky, reason="OTHER") == 0

    labelled = {dict(labels).get("model") for _, labels in samples}
    assert "no_such_model" not in labelled


def test_grpc_statistics_match_http(stats_server: ServerProcess, traffic: dict[str, int]) -> None:
    with grpcclient.InferenceServerClient(stats_server.grpc_url) as client:
        for model in (SIMPLE, PICKY):
            http_stats = model_stats(stats_server.base_url, model)
            grpc_response = client.get_inference_statistics(model)
            assert len(grpc_response.model_stats) == 1
            grpc_stats = grpc_response.model_stats[0]
            assert grpc_stats.name == model
            assert grpc_stats.version == "1"
            assert grpc_stats.inference_count == http_stats["inference_count"]
            assert grpc_stats.execution_count == http_stats["execution_count"]
            assert grpc_stats.last_inference == http_stats["last_inference"]
            for phase, counts in http_stats["inference_stats"].items():
                duration = getattr(grpc_stats.inference_stats, phase)
                assert (duration.count, duration.ns) == (counts["count"], counts["ns"]), phase
            grpc_batches = {b.batch_size: b.compute_infer.count for b in grpc_stats.batch_stats}
            assert grpc_batches == batch_counts(http_stats)


def test_metric_families_are_declared_under_their_sample_names(stats_server: ServerProcess,
                                                               traffic: dict[str, int]) -> None:
    """Each `# TYPE` line names the samples that follow it, as Triton's exposition does
    (`# TYPE nv_inference_request_success counter` above `nv_inference_request_success{...}`): Prometheus and
    promtool attach HELP/TYPE metadata by that name."""
    text = httpx.get(f"http://{HOST}:{stats_server.metrics_port}/metrics", timeout=10.0).text
    declared = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    sample_names = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us"):
        assert name in sample_names, name
        assert declared.get(name) == "counter", f"{name}: declared as {sorted(n for n in declared if name in n)}"
    assert declared.get("nv_inference_pending_request_count") == "gauge"
    for name, kind in declared.items():
        if name.startswith(("nv_", "inferd_")):
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            assert any(name + suffix in sample_names for suffix in suffixes), f"# TYPE {name} {kind} has no samples"
