"""Cold starts (issue 14): how long a request held for a model scaled to zero waits, against the same model warm
and against starting a whole `inferd serve` for it; a burst of held requests; a soak of many models under a memory
limit that fits a few.

    .venv/bin/python benchmarks/bench_cold_start.py                      # every example model, 3 rounds
    .venv/bin/python benchmarks/bench_cold_start.py --models mlp,resnet50 --rounds 5 --soak-seconds 60

1. Per example model (examples/model_repository, built by examples/build_repository.py if missing): one server
   with `--model-idle-unload-secs 1`; `--rounds` times: wait until the index says "scaled to zero", send one
   request, time it (the held request: from the request to its answer, the load included). Then a fresh
   `inferd serve` serving only that model (never scaled to zero), timed from the process start to its first answer,
   and the model's warm latency there (median of 20 sequential requests).
2. Burst: 50 requests at once to a model scaled to zero; p50 / p99 of their latencies (all of them were held).
3. Soak: `--soak-models` models of `--soak-mb` MB each under `--model-memory-limit` set to fit 5 of them (5.5 x
   one model's measured memory, from a server that loads two), `--soak-clients` clients sending random models for
   `--soak-seconds`; failed requests, evictions and cold starts (from /metrics), and the p99 of the requests that
   met a cold model (whose time overlaps a load from zero of their model, from the server's log).

Every server binds 127.0.0.1 on free ports and is stopped by its PID at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
INFERD = str(ROOT / ".venv" / "bin" / "inferd")
EXAMPLES = ROOT / "examples" / "model_repository"
HOST = "127.0.0.1"
_STARTED = re.compile(r"started (HTTPService|Metrics Service) at \S+:(\d+)")
_READY = re.compile(r"inferd \S+ ready\b")
_WOKE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*model '([^']+)' loaded from zero in ([\d.]+) s",
                   re.MULTILINE)


# ---- servers ----

class Served:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, http: int, metrics: int) -> None:
        self.process, self.log, self.http, self.metrics = process, log, http, metrics
        self.base = f"http://{HOST}:{http}"


@contextmanager
def serve(repository: Path, log: Path, *args: str) -> Iterator[Served]:
    process = start(repository, log, *args)
    try:
        yield wait_ready(process, log)
    finally:
        stop(process)


def start(repository: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [INFERD, "serve", "--model-repository", str(repository), "--http-port", "0", "--grpc-port", "0",
               "--metrics-port", "0", "--http-address", HOST, "--grpc-address", HOST, *args]
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                   "PYTHONUNBUFFERED": "1"})


def wait_ready(process: subprocess.Popen[bytes], log: Path, timeout: float = 300.0) -> Served:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if _READY.search(text):
            ports = dict(_STARTED.findall(text))
            return Served(process, log, int(ports["HTTPService"]), int(ports["Metrics Service"]))
        if process.poll() is not None:
            raise RuntimeError(f"inferd exited with {process.returncode}:\n{text[-3000:]}")
        time.sleep(0.02)
    raise RuntimeError(f"inferd did not start within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def index_row(server: Served, name: str) -> dict[str, Any]:
    rows = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=30).json()
    return next(r for r in rows if r["name"] == name and "state" in r)


def wait_cold(server: Served, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while index_row(server, name).get("reason") != "scaled to zero":
        if time.monotonic() > deadline:
            raise RuntimeError(f"model '{name}' did not scale to zero within {timeout} s")
        time.sleep(0.05)


def wait_prepared(server: Served, name: str, timeout: float = 120.0) -> None:
    """Until the server logged that the model's next load is prepared as often as it scaled to zero (a model
    long idle is the case measured, not one whose preparation still runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.log.read_text(errors="replace")
        if text.count(f"model '{name}': its next load prepared") >= text.count(f"model '{name}' scaled to zero"):
            return
        time.sleep(0.05)


def is_onnx(server: Served, name: str) -> bool:
    return httpx.get(f"{server.base}/v2/models/{name}/config", timeout=30).json().get("backend") == "onnxruntime"


def settle(server: Served, models: list[str]) -> None:
    """Until every ONNX model that scaled to zero has its next load prepared (no preparation competes for the
    CPU with what is measured next)."""
    for name in models:
        if is_onnx(server, name):
            wait_prepared(server, name)


def metric_sum(server: Served, name: str) -> float:
    text = httpx.get(f"http://{HOST}:{server.metrics}/metrics", timeout=30).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name)


# ---- requests ----

def body_for(server: Served, name: str) -> dict[str, Any]:
    """A V2 JSON request for any model, from its metadata: every input zeros (strings "1"), batch dims 1."""
    meta = httpx.get(f"{server.base}/v2/models/{name}", timeout=30).json()
    inputs = []
    for spec in meta["inputs"]:
        shape = [1 if d < 0 else d for d in spec["shape"]]
        count = int(np.prod(shape)) if shape else 1
        data: list[Any] = ["1"] * count if spec["datatype"] == "BYTES" else [0] * count
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data})
    return {"inputs": inputs}


def timed_post(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    answer = client.post(url, json=body)
    if answer.status_code != 200:
        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:300]}")
    return time.perf_counter() - started


async def burst(url: str, body: dict[str, Any], count: int) -> list[tuple[int, float]]:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=count)) as client:
        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            answer = await client.post(url, json=body)
            return answer.status_code, time.perf_counter() - started
        return list(await asyncio.gather(*(one() for _ in range(count))))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# ---- 1. cold start per model, against warm and a process start ----

def model_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def per_model(models: list[str], rounds: int, work: Path) -> list[list[str]]:
    rows = []
    all_models = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    with serve(EXAMPLES, work / "per_model.log", "--model-idle-unload-secs", "1") as server:
        for name in models:
            url = f"{server.base}/v2/models/{name}/infer"
            body = body_for(server, name)
            with httpx.Client(timeout=300) as client:
                cold = []
                memory = 0
                for _ in range(rounds):
                    wait_cold(server, name)
                    settle(server, all_models)  # ONNX Runtime keeps its optimized graphs for their next loads
                    cold.append(timed_post(client, url, body))
                    memory = max(memory, int(index_row(server, name).get("memory_bytes", 0)))  # measured as it woke
            rows.append([name, f"{model_bytes(EXAMPLES / name) / 1e6:.1f}", f"{memory / 1e6:.0f}", "",
                         ms(statistics.median(cold)), ms(max(cold)), ""])
    for row, name in zip(rows, models, strict=True):
        first, warm = process_start(name, work)
        row[3], row[-1] = ms(warm), ms(first)
    return rows


def process_start(name: str, work: Path) -> tuple[float, float]:
    """From `inferd serve` starting (only this model, never scaled to zero) to its first answer; then the same
    model's warm latency there (the median of 20 requests in a row)."""
    started = time.perf_counter()
    process = start(EXAMPLES, work / f"start_{name}.log", "--model-control-mode", "explicit", "--load-model", name)
    try:
        server = wait_ready(process, work / f"start_{name}.log")
        body = body_for(server, name)
        url = f"{server.base}/v2/models/{name}/infer"
        with httpx.Client(timeout=300) as client:
            client.post(url, json=body).raise_for_status()
            first = time.perf_counter() - started
            warm = statistics.median(timed_post(client, url, body) for _ in range(20))
        return first, warm
    finally:
        stop(process)


# ---- 2. a burst of held requests ----

def bursts(models: list[str], count: int, work: Path) -> list[list[str]]:
    rows = []
    all_models = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    with serve(EXAMPLES, work / "burst.log", "--model-idle-unload-secs", "1") as server:
        for name in models:
            url = f"{server.base}/v2/models/{name}/infer"
            body = body_for(server, name)
            httpx.post(url, json=body, timeout=300).raise_for_status()
            wait_cold(server, name)
            settle(server, all_models)
            answers = asyncio.run(burst(url, body, count))
            latencies = [t for status, t in answers if status == 200]
            rows.append([name, str(count), str(count - len(latencies)), ms(percentile(latencies, 50)),
                         ms(percentile(latencies, 99)), ms(max(latencies, default=float("nan")))])
    return rows


# ---- 3. soak: many models under a memory limit ----

def table_model(megabytes: float, seed: int) -> bytes:
    rows = 256
    columns = max(1, int(megabytes * 1024 * 1024 / 4 / rows))
    table = np.full((rows, columns), seed, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["TABLE", "INDEX"], ["ROW"], axis=0),
         helper.make_node("ReduceMax", ["ROW"], ["VALUE"], axes=[1], keepdims=0)], "table",
        [helper.make_tensor_value_info("INDEX", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("VALUE", TensorProto.FLOAT, [1])], [numpy_helper.from_array(table, "TABLE")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def soak_repository(folder: Path, count: int, megabytes: float) -> list[str]:
    names = []
    for i in range(count):
        name = f"table_{i:02d}"
        (folder / name / "1").mkdir(parents=True, exist_ok=True)
        (folder / name / "1" / "model.onnx").write_bytes(table_model(megabytes, i))
        (folder / name / "config.pbtxt").write_text(
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
            'input [ { name: "INDEX" data_type: TYPE_INT64 dims: [ 1 ] } ]\n'
            'output [ { name: "VALUE" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
        names.append(name)
    return names


def one_model_memory(repository: Path, names: list[str], work: Path) -> int:
    """A table model's measured memory: under a huge limit every model is measured as it loads; the second one
    loaded, as the first one's growth holds ONNX Runtime's own start as well."""
    with serve(repository, work / "measure.log", "--model-control-mode", "explicit", "--load-model", names[0],
               "--load-model", names[1], "--model-memory-limit", "90%") as server:
        return int(index_row(server, names[1])["memory_bytes"])


def soak(count: int, megabytes: float, clients: int, seconds: float, work: Path) -> tuple[list[list[str]], str]:
    repository = work / "soak_models"
    names = soak_repository(repository, count, megabytes)
    each = one_model_memory(repository, names, work)
    limit = int(each * 5.5)
    log = work / "soak.log"
    outcomes: list[tuple[str, float, float, bool]] = []  # model, sent (wall), latency, ok
    lock = threading.Lock()
    resident: list[int] = []
    with serve(repository, log, "--model-memory-limit", str(limit)) as server:
        stop_at = time.monotonic() + seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            body = {"inputs": [{"name": "INDEX", "shape": [1], "datatype": "INT64", "data": [1]}]}
            with httpx.Client(timeout=300) as http:
                while time.monotonic() < stop_at:
                    name = rng.choice(names)
                    sent, started = time.time(), time.perf_counter()
                    try:
                        ok = http.post(f"{server.base}/v2/models/{name}/infer", json=body).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        outcomes.append((name, sent, time.perf_counter() - started, ok))

        def watch() -> None:
            while time.monotonic() < stop_at:
                rows = httpx.post(f"{server.base}/v2/repository/index", json={}, timeout=30).json()
                resident.append(sum(1 for r in rows if int(r.get("memory_bytes", 0)) > 0))
                time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        threads.append(threading.Thread(target=watch))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        evictions = metric_sum(server, "inferd_model_evictions_total")
        cold_starts = metric_sum(server, "inferd_model_cold_starts_total")
    loads = [(name, _wall(stamp) - float(took), _wall(stamp)) for stamp, name, took in _WOKE.findall(log.read_text())]
    met_cold = [latency for name, sent, latency, ok in outcomes
                if any(n == name and sent <= end and sent + latency >= begin for n, begin, end in loads)]
    warm = [latency for name, sent, latency, ok in outcomes if ok and latency not in met_cold]
    failed = sum(1 for *_, ok in outcomes if not ok)
    row = [str(count), f"{megabytes:g}", f"{each / 1e6:.0f}", f"{limit / 1e6:.0f}", str(max(resident, default=0)),
           str(clients), f"{seconds:g}", str(len(outcomes)), str(failed), f"{evictions:.0f}", f"{cold_starts:.0f}",
           str(len(met_cold)), ms(percentile(met_cold, 50)), ms(percentile(met_cold, 99)), ms(percentile(warm, 99))]
    return [row], f"limit {limit} bytes = 5.5 x one model's measured {each} bytes"


def _wall(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


# ---- report ----

def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="example models, comma-separated (default: all of them)")
    parser.add_argument("--rounds", type=int, default=3, help="cold starts per model (default 3)")
    parser.add_argument("--burst", type=int, default=50, help="requests in the burst (default 50)")
    parser.add_argument("--burst-models", default="mlp,resnet50", help="models of the burst (default mlp,resnet50)")
    parser.add_argument("--soak-models", type=int, default=20, help="models in the soak (default 20)")
    parser.add_argument("--soak-mb", type=float, default=16.0, help="MB of weights per soak model (default 16)")
    parser.add_argument("--soak-clients", type=int, default=4, help="soak clients (default 4)")
    parser.add_argument("--soak-seconds", type=float, default=30.0, help="soak duration (default 30)")
    parser.add_argument("--skip", default="", help="parts to skip: models,burst,soak (comma-separated)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers started so far (finally blocks)
    if not EXAMPLES.exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "build_repository.py")], check=True)
    models = [m for m in args.models.split(",") if m] or sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    skip = set(args.skip.split(","))
    print(f"# inferd cold starts — {platform.node()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"# command: {' '.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])}\n")
    with tempfile.TemporaryDirectory(prefix="inferd-cold-") as tmp:
        work = Path(tmp)
        if "models" not in skip:
            print("## Held request (cold start from zero to first answer) vs warm vs a process start, ms\n")
            print(table(["model", "file MB", "measured MB", "warm p50", "cold p50", "cold max", "process start"],
                        per_model(models, args.rounds, work)))
            print()
        if "burst" not in skip:
            print(f"## Burst of {args.burst} requests at once to a model scaled to zero, ms\n")
            print(table(["model", "requests", "failed", "p50", "p99", "max"],
                        bursts([m for m in args.burst_models.split(",") if m], args.burst, work)))
            print()
        if "soak" not in skip:
            rows, note = soak(args.soak_models, args.soak_mb, args.soak_clients, args.soak_seconds, work)
            print(f"## Soak: {args.soak_models} models under a memory limit that fits 5 ({note})\n")
            print(table(["models", "MB each", "measured MB", "limit MB", "max resident", "clients", "seconds",
                         "requests", "failed", "evictions", "cold starts", "met cold", "cold p50 ms",
                         "cold p99 ms", "warm p99 ms"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
