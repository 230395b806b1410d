"""The response cache: what a hit costs next to a miss and to no cache at all, in-process and over HTTP / gRPC.

The issue's target: a hit answered in <= 100 us inside the server (Triton publishes 2 us in the cache and 262 us at
the client over HTTP). Two models are built in a temporary repository: ``tiny`` (Triton's ``simple``: two INT32
[1, 16] adds) and ``mlp`` (FP32 [1, 512] through two 512 x 512 layers), each served twice, with and without
``response_cache { enable: true }``.

Rows, each over ``--requests`` sequential batch-1 requests (c = 1):

- ``sdk``: ``inferd.Server.infer`` in this process (the whole pipeline, no network);
- ``http`` / ``grpc``: ``inferd serve --cache-config local,size=...`` with tritonclient (binary tensors over HTTP).

Columns: ``no cache`` (the model without response_cache), ``miss`` (the cached model, every request new: lookup,
execution and insertion), ``hit`` (the same request again). Latencies are medians and p99 at the caller;
``server hit`` is the server's own duration of a hit request (statistics: success ns / count over a run of hits
only, from the pipeline's first stage to its last), and ``in cache`` is the cache stage's share (``cache_hit`` ns /
count). The three caller columns are measured interleaved (one of each in turn), after the hits-only run.

Usage::

    python benchmarks/bench_cache.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HOST = "127.0.0.1"
CACHE_BYTES = 256 * 1024 * 1024


def _model(name: str, nodes: list[Any], inputs: list[Any], outputs: list[Any], weights: list[Any]) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def tiny_model() -> bytes:
    io = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
          for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
             helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    return _model("tiny", nodes, io[:2], io[2:], [])


def mlp_model() -> bytes:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32) / 20, f"W{i}")
               for i in range(2)]
    nodes = [helper.make_node("MatMul", ["INPUT0", "W0"], ["H"]), helper.make_node("Relu", ["H"], ["R"]),
             helper.make_node("MatMul", ["R", "W1"], ["OUTPUT0"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 512]) for n in ("INPUT0", "OUTPUT0")]
    return _model("mlp", nodes, io[:1], io[1:], weights)


def _config(name: str, kind: str, cached: bool) -> str:
    if kind == "tiny":
        io = ('input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, '
              '{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]\n'
              'output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, '
              '{ name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]\n')
    else:
        io = ('input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 512 ] } ]\n'
              'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 512 ] } ]\n')
    cache = "response_cache { enable: true }\n" if cached else ""
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n{io}'
            f'instance_group [ {{ kind: KIND_CPU count: 1 }} ]\n{cache}')


def build_repository(root: Path) -> Path:
    repo = root / "models"
    for kind, data in (("tiny", tiny_model()), ("mlp", mlp_model())):
        for cached in (False, True):
            name = f"{kind}_cached" if cached else kind
            folder = repo / name / "1"
            folder.mkdir(parents=True)
            (folder / "model.onnx").write_bytes(data)
            (repo / name / "config.pbtxt").write_text(_config(name, kind, cached))
    return repo


def inputs_for(kind: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "tiny":
        return {"INPUT0": rng.integers(0, 100, (1, 16), dtype=np.int32),
                "INPUT1": rng.integers(0, 100, (1, 16), dtype=np.int32)}
    return {"INPUT0": rng.standard_normal((1, 512)).astype(np.float32)}


def timed(calls: list[Callable[[int], Any]], count: int) -> list[list[float]]:
    """Microseconds of `count` rounds of the calls, interleaved (call 0, 1, 2, then again), so that a machine whose
    load drifts slows each of them alike."""
    samples: list[list[float]] = [[] for _ in calls]
    for i in range(count):
        for call, times in zip(calls, samples, strict=True):
            start = time.perf_counter_ns()
            call(i)
            times.append((time.perf_counter_ns() - start) / 1000)
    return samples


def summary(samples: list[float]) -> str:
    return f"{np.median(samples):8.1f} / {np.percentile(samples, 99):8.1f}"


class Stats:
    """Reads a model's statistics (a dict in Triton's JSON form) through `read(name)`."""

    def __init__(self, read: Callable[[str], dict[str, Any]]) -> None:
        self.read = read

    def snapshot(self, name: str) -> tuple[int, int, int, int]:
        stats = self.read(name)["inference_stats"]
        return (int(stats["success"]["count"]), int(stats["success"]["ns"]), int(stats["cache_hit"]["count"]),
                int(stats["cache_hit"]["ns"]))


def measure(kind: str, send: Callable[[str, dict[str, np.ndarray]], Any], stats: Stats, count: int) -> list[str]:
    """One table row: no cache, miss, hit at the caller; the server's own duration of a hit, the cache stage's."""
    fixed = inputs_for(kind, 0)
    other = inputs_for(kind, 10**6)
    for _ in range(50):  # warm both models' sessions and the connection
        send(kind, fixed)
        send(f"{kind}_cached", other)
    fresh = [inputs_for(kind, 1 + i) for i in range(count)]  # made before the clock runs
    send(f"{kind}_cached", fixed)
    before = stats.snapshot(f"{kind}_cached")
    hit, = timed([lambda i: send(f"{kind}_cached", fixed)], count)
    after = stats.snapshot(f"{kind}_cached")
    hits = after[2] - before[2]
    server_hit = (after[1] - before[1]) / max(after[0] - before[0], 1) / 1000
    in_cache = (after[3] - before[3]) / max(hits, 1) / 1000
    assert hits == count, f"expected {count} hits, the statistics show {hits}"
    no_cache, miss, hit = timed([lambda i: send(kind, fixed), lambda i: send(f"{kind}_cached", fresh[i]),
                                 lambda i: send(f"{kind}_cached", fixed)], count)
    return [summary(no_cache), summary(miss), summary(hit), f"{server_hit:8.1f}", f"{in_cache:8.1f}"]


def sdk_rows(repo: Path, count: int) -> list[list[str]]:
    from inferd import Server

    server = Server(repo, response_cache_size=CACHE_BYTES)
    try:
        stats = Stats(lambda name: server.statistics(name)["model_stats"][0])
        return [["sdk", kind, *measure(kind, lambda name, x: server.infer(name, x), stats, count)]
                for kind in ("tiny", "mlp")]
    finally:
        server.close()


def start_server(repo: Path, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    inferd = Path(sys.executable).parent / "inferd"
    args = [str(inferd), "serve", "--model-repository", str(repo), "--http-port", "0", "--grpc-port", "0",
            "--metrics-port", "0", "--http-address", HOST, "--grpc-address", HOST, "--log-verbose", "0",
            "--cache-config", f"local,size={CACHE_BYTES}"]
    handle = open(log, "wb")
    process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(r"inferd \S+ ready\b", text):
            found = re.findall(r"started (HTTPService|GRPCInferenceService) at \S+:(\d+)", text)
            return process, {"http" if s == "HTTPService" else "grpc": int(p) for s, p in found}
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"inferd did not start:\n{log.read_text(errors='replace')}")


def network_rows(repo: Path, root: Path, count: int) -> list[list[str]]:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    process, ports = start_server(repo, root / "inferd.log")
    rows = []
    try:
        for protocol, module in (("http", httpclient), ("grpc", grpcclient)):
            client = module.InferenceServerClient(f"{HOST}:{ports[protocol]}")

            def send(name: str, x: dict[str, np.ndarray], client: Any = client, module: Any = module) -> Any:
                tensors = []
                for key, array in x.items():
                    tensor = module.InferInput(key, list(array.shape), "INT32" if array.dtype == np.int32 else "FP32")
                    tensor.set_data_from_numpy(array)
                    tensors.append(tensor)
                return client.infer(name, tensors)

            def read(name: str, client: Any = client, protocol: str = protocol) -> dict[str, Any]:
                if protocol == "grpc":
                    return dict(client.get_inference_statistics(name, as_json=True)["model_stats"][0])
                return dict(client.get_inference_statistics(name)["model_stats"][0])

            rows += [[protocol, kind, *measure(kind, send, Stats(read), count)] for kind in ("tiny", "mlp")]
            client.close()
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per cell (default 2000)")
    args = parser.parse_args()
    header = ["path", "model", "no cache µs (p50 / p99)", "miss µs (p50 / p99)", "hit µs (p50 / p99)",
              "server hit µs (mean)", "in cache µs (mean)"]
    print(f"\nresponse cache, c = 1, {args.requests} requests per cell; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, onnx {onnx.__version__}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = build_repository(root)
        for rows in (lambda: sdk_rows(repo, args.requests), lambda: network_rows(repo, root, args.requests)):
            for row in rows():
                print("| " + " | ".join(row) + " |", flush=True)
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
