"""Baseline benchmark: inferd under bounded load vs. in-process ONNX Runtime.

Starts ``inferd serve`` on free 127.0.0.1 ports, then for every model, protocol and
concurrency runs a fixed-duration load of batch-1 requests:

* ``http-json`` / ``http-binary``: ``hey`` (per-request latencies from its CSV output),
  or a Python aiohttp loader when ``hey`` is not installed;
* ``grpc``: Python loader processes (``grpc.aio`` + Triton's compiled stub, a pre-built
  ``ModelInferRequest`` with ``raw_input_contents``).

The ceiling is the same model file run in-process with ``onnxruntime.InferenceSession.run``
from a single-thread loop. Prints one markdown table (req/s, p50, p99, errors, % of ceiling,
and the CPU used by the loader and by the server so readers see which side was saturated).

Usage::

    python benchmarks/bench_core.py [--duration 10] [--concurrency 1,8,32] [--models simple,mlp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPO = ROOT / "examples" / "model_repository"
BUILD_SCRIPT = ROOT / "examples" / "build_repository.py"
HOST = "127.0.0.1"
PROTOCOLS = ("http-json", "http-binary", "grpc")
REQUEST_TIMEOUT_S = 10.0
# V2 datatype -> little-endian numpy dtype (BYTES is not benchmarked).
DTYPES = {
    "BOOL": "|b1", "UINT8": "|u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "|i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip


@dataclass
class Input:
    """One batch-1 input tensor with deterministic contents."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass
class Result:
    """One row of the table."""

    model: str
    protocol: str
    concurrency: int | str
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    errors: int = 0
    loader_cpu: float | None = None  # cores (1.0 = one core busy)
    server_cpu: float | None = None
    note: str = ""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def percentiles(lat_s: np.ndarray) -> tuple[float, float]:
    """p50 and p99 in milliseconds (nan when empty)."""
    if lat_s.size == 0:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(lat_s * 1e3, [50, 99])
    return float(p50), float(p99)


def children_cpu_s() -> float:
    """CPU seconds used by waited-for child processes so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a running process, from /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_info() -> str:
    """nproc, CPU model, load average, Python and onnxruntime versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = "not installed"
    return (
        f"nproc={os.cpu_count()}, CPU: {cpu}, load average at start: {load}, "
        f"Python {platform.python_version()}, onnxruntime {ort_version}"
    )


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); status 0 when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return 0, b""


def http_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST ``body`` to ``url``: (status, response body)."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------- server


def inferd_command() -> list[str]:
    """How to run the ``inferd`` CLI: the script next to this Python, on PATH, or ``-c``."""
    local = Path(sys.executable).parent / "inferd"
    if local.exists():
        return [str(local)]
    found = shutil.which("inferd")
    return [found] if found else [sys.executable, "-c", "import sys; from inferd.cli import main; sys.exit(main())"]


@contextlib.contextmanager
def run_server(repo: Path, models: Sequence[str], ports: tuple[int, int, int], log: Path) -> Iterator[int]:
    """Start inferd with only ``models`` loaded, yield its PID once ready, SIGTERM it at the end."""
    http, grpc_port, metrics = ports
    cmd = [
        *inferd_command(), "serve", "--model-repository", str(repo),
        "--model-control-mode", "explicit", *(a for m in models for a in ("--load-model", m)),
        "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics),
        "--http-address", HOST, "--grpc-address", HOST, "--exit-timeout-secs", "5",
        "--log-info", "false",
    ]  # fmt: skip
    with log.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"inferd exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            ready = all(http_get(f"http://{HOST}:{http}/v2/models/{m}/ready")[0] == 200 for m in models)
            if ready and http_get(f"http://{HOST}:{http}/v2/health/ready")[0] == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"inferd not ready after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# --------------------------------------------------------------------------- requests


def model_inputs(http_base: str, model: str) -> list[Input]:
    """Batch-1 inputs for ``model`` built from its metadata, with deterministic contents."""
    status, body = http_get(f"{http_base}/v2/models/{model}")
    if status != 200:
        raise RuntimeError(f"metadata of {model!r}: HTTP {status} {body[:200]!r}")
    config = json.loads(http_get(f"{http_base}/v2/models/{model}/config")[1] or b"{}")
    batched = int(config.get("max_batch_size", 0)) > 0
    inputs = []
    for i, meta in enumerate(json.loads(body)["inputs"]):
        if meta["datatype"] not in DTYPES:
            raise RuntimeError(f"{model}: input {meta['name']} has unsupported datatype {meta['datatype']}")
        shape = [1 if d < 0 else d for d in meta["shape"]]
        if batched and (not meta["shape"] or meta["shape"][0] != -1):
            shape = [1, *shape]
        n = int(np.prod(shape))
        values = (np.arange(n) * (i + 1)) % 13 - 6  # small, deterministic, differs per input
        inputs.append(Input(meta["name"], meta["datatype"], values.astype(DTYPES[meta["datatype"]]).reshape(shape)))
    return inputs


def json_body(inputs: Sequence[Input]) -> bytes:
    """A V2 JSON infer request."""
    tensors = [
        {"name": t.name, "shape": list(t.array.shape), "datatype": t.datatype, "data": t.array.ravel().tolist()}
        for t in inputs
    ]
    return json.dumps({"inputs": tensors}).encode()


def binary_body(inputs: Sequence[Input]) -> tuple[bytes, int]:
    """A V2 binary-tensor infer request and the length of its JSON header."""
    tensors = [
        {
            "name": t.name,
            "shape": list(t.array.shape),
            "datatype": t.datatype,
            "parameters": {"binary_data_size": t.array.nbytes},
        }
        for t in inputs
    ]
    header = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}}).encode()
    return header + b"".join(t.array.tobytes() for t in inputs), len(header)


def grpc_request(model: str, inputs: Sequence[Input]) -> bytes:
    """A serialized ``ModelInferRequest`` with ``raw_input_contents``."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=model)
    for t in inputs:
        tensor = req.inputs.add(name=t.name, datatype=t.datatype)
        tensor.shape.extend(t.array.shape)
        req.raw_input_contents.append(t.array.tobytes())
    return req.SerializeToString()


# --------------------------------------------------------------------------- loaders


def load_worker(
    kind: str,
    target: str,
    payload: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    start: Any,
    out: Any,
) -> None:
    """Child process: ``concurrency`` in-flight requests for ``duration`` s after ``start`` is set.

    ``kind`` is ``grpc`` (target host:port, payload a serialized ModelInferRequest) or ``http``
    (target URL, payload the body). Puts ("ready", None) then ("done", dict) on ``out``.
    """

    async def run() -> dict[str, Any]:
        lats: list[float] = []
        errors = 0
        first_error = ""
        if kind == "grpc":
            import grpc
            from tritonclient.grpc import service_pb2, service_pb2_grpc

            request = service_pb2.ModelInferRequest.FromString(payload)
            limit = 64 * 1024 * 1024
            channel = grpc.aio.insecure_channel(
                target, options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
            )
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def call() -> None:
                await stub.ModelInfer(request, timeout=REQUEST_TIMEOUT_S)

            closer: Any = channel.close
        else:
            import aiohttp

            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            )

            async def call() -> None:
                async with session.post(target, data=payload, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")

            closer = session.close
        try:
            await asyncio.gather(*(call() for _ in range(concurrency)))  # connect and warm up
            out.put(("ready", None))
            await asyncio.get_running_loop().run_in_executor(None, start.wait, 120.0)
            cpu0, t0 = time.process_time(), time.perf_counter()
            deadline = t0 + duration

            async def client() -> None:
                nonlocal errors, first_error
                while time.perf_counter() < deadline:
                    begin = time.perf_counter()
                    try:
                        await call()
                    except Exception as exc:  # every failure counts as an error
                        errors += 1
                        first_error = first_error or repr(exc)[:200]
                        continue
                    lats.append(time.perf_counter() - begin)

            await asyncio.gather(*(client() for _ in range(concurrency)))
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        finally:
            await closer()
        return {
            "lats": np.asarray(lats, np.float64).tobytes(),
            "errors": errors,
            "first_error": first_error,
            "wall": wall,
            "cpu": cpu,
        }

    try:
        out.put(("done", asyncio.run(run())))
    except Exception as exc:
        out.put(("failed", repr(exc)[:500]))


def python_load(
    kind: str, target: str, payload: bytes, headers: dict[str, str], concurrency: int, duration: float, procs: int
) -> tuple[np.ndarray, int, float, float, str]:
    """Run ``load_worker`` in up to ``procs`` processes: (latencies s, errors, wall s, loader CPU s, note)."""
    ctx = mp.get_context("spawn")
    nproc = max(1, min(procs, concurrency))
    shares = [concurrency // nproc + (i < concurrency % nproc) for i in range(nproc)]
    start, out = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=load_worker, args=(kind, target, payload, headers, c, duration, start, out), daemon=True)
        for c in shares
    ]
    for w in workers:
        w.start()
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    try:
        ready = 0
        while ready + len(failures) < nproc:
            tag, value = out.get(timeout=60)
            ready += tag == "ready"
            if tag == "failed":
                failures.append(value)
        start.set()
        while len(results) + len(failures) < nproc:
            tag, value = out.get(timeout=duration + 2 * REQUEST_TIMEOUT_S + 30)
            if tag == "done":
                results.append(value)
            elif tag == "failed":
                failures.append(value)
    except queue.Empty:
        failures.append("loader process timed out")
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
    lats = np.concatenate([np.frombuffer(r["lats"], np.float64) for r in results]) if results else np.empty(0)
    errors = sum(r["errors"] for r in results)
    wall = max((r["wall"] for r in results), default=duration)
    cpu = sum(r["cpu"] for r in results)
    notes = failures + [r["first_error"] for r in results if r["first_error"]]
    return lats, errors, wall, cpu, "; ".join(notes[:2])


def hey_load(
    url: str, body_path: Path, headers: dict[str, str], concurrency: int, duration: float
) -> tuple[np.ndarray, int, float, float, str]:
    """Run ``hey`` for ``duration`` s: (latencies of 200 responses, non-200 count, wall s, hey CPU s, note)."""
    cmd = ["hey", "-z", f"{duration:g}s", "-c", str(concurrency), "-m", "POST", "-D", str(body_path)]
    cmd += ["-t", str(int(REQUEST_TIMEOUT_S)), "-o", "csv"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    cpu0 = children_cpu_s()
    proc = subprocess.run([*cmd, url], capture_output=True, timeout=duration + 60, check=False)
    cpu = children_cpu_s() - cpu0
    if proc.returncode != 0:
        return np.empty(0), 0, duration, cpu, f"hey exited {proc.returncode}: {proc.stderr.decode()[-200:]}"
    lats, errors, end = [], 0, 0.0
    for row in csv.DictReader(io.StringIO(proc.stdout.decode())):
        rt, offset = float(row["response-time"]), float(row["offset"])
        end = max(end, offset + rt)
        if row["status-code"] == "200":
            lats.append(rt)
        else:
            errors += 1
    return np.asarray(lats), errors, max(end, 1e-9), cpu, ""


# --------------------------------------------------------------------------- ceiling


def model_file(repo: Path, model: str) -> Path:
    """The ONNX file of the highest numbered version of ``model``."""
    versions = sorted((p for p in (repo / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for version in reversed(versions):
        if (version / "model.onnx").exists():
            return version / "model.onnx"
    raise FileNotFoundError(f"no <version>/model.onnx under {repo / model}")


def ort_ceiling(path: Path, model: str, inputs: Sequence[Input], duration: float) -> Result:
    """Single-thread loop of ``InferenceSession.run`` with the same batch-1 inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    by_name = {t.name: t.array for t in inputs}
    feeds = {}
    for meta in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in meta.shape]
        array = by_name[meta.name]
        feeds[meta.name] = array.reshape(shape) if int(np.prod(shape)) == array.size else array
    for _ in range(20):
        session.run(None, feeds)
    lats = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration
    while (now := time.perf_counter()) < deadline:
        session.run(None, feeds)
        lats.append(time.perf_counter() - now)
    wall = time.perf_counter() - t0
    p50, p99 = percentiles(np.asarray(lats))
    cpu = (time.process_time() - cpu0) / wall
    return Result(model, "onnxruntime in-process", "1 (loop)", len(lats) / wall, p50, p99, 0, cpu, None)


# --------------------------------------------------------------------------- main


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def table(results: Sequence[Result], ceilings: dict[str, float]) -> str:
    """The markdown table."""
    head = "| model | protocol | c | req/s | p50 ms | p99 ms | errors | % of ORT ceiling | loader CPU | server CPU |"
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in results:
        ceiling = ceilings.get(r.model)
        pct = "n/a" if not ceiling else f"{100 * r.rps / ceiling:.1f}%"
        protocol = r.protocol + (f" ({r.note})" if r.note else "")
        lines.append(
            f"| {r.model} | {protocol} | {r.concurrency} | {r.rps:.0f} | {fmt(r.p50_ms, 3)} | {fmt(r.p99_ms, 3)} "
            f"| {r.errors} | {pct} | {fmt(r.loader_cpu)} | {fmt(r.server_cpu)} |"
        )
    return "\n".join(lines)


CSV_HEADER = (
    "model protocol concurrency req_s p50_ms p99_ms errors pct_of_ort_ceiling loader_cpu server_cpu note".split()
)


def write_csv(path: Path, results: Sequence[Result], ceilings: dict[str, float]) -> None:
    """The rows as CSV (raw numbers)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for r in results:
            ceiling = ceilings.get(r.model)
            pct = f"{100 * r.rps / ceiling:.2f}" if ceiling else ""
            numbers = [f"{r.rps:.1f}", f"{r.p50_ms:.4f}", f"{r.p99_ms:.4f}", r.errors, pct]
            writer.writerow(
                [r.model, r.protocol, r.concurrency, *numbers, fmt(r.loader_cpu), fmt(r.server_cpu), r.note]
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def csv_list(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repository", type=Path, default=None, help=f"model repository (default: build {DEFAULT_REPO})")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per point (default 10)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in csv_list(s)], default=[1, 8, 32])
    p.add_argument("--models", type=csv_list, default=["simple", "mlp"])
    p.add_argument("--protocols", type=csv_list, default=list(PROTOCOLS))
    p.add_argument("--csv", type=Path, default=None, help="also write the rows to this CSV file")
    p.add_argument("--port-base", type=int, default=None, help="use ports N, N+1, N+2 (default: free ports)")
    p.add_argument("--loader-procs", type=int, default=2, help="processes of the Python loaders (default 2)")
    p.add_argument("--no-hey", action="store_true", help="use the Python aiohttp loader even if hey is installed")
    args = p.parse_args(argv)
    unknown = set(args.protocols) - set(PROTOCOLS)
    if unknown:
        p.error(f"unknown protocol(s) {sorted(unknown)}; choose from {', '.join(PROTOCOLS)}")
    if args.duration <= 0 or any(c < 1 for c in args.concurrency):
        p.error("--duration and --concurrency must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    command = shlex.join([python, *sys.argv] if argv is None else [python, sys.argv[0], *argv])
    repo: Path = args.repository or DEFAULT_REPO
    if args.repository is None and not all((repo / m).is_dir() for m in args.models):
        print(f"building {repo} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(BUILD_SCRIPT), str(repo)], check=True, timeout=900)
    repo = repo.resolve()
    missing = [m for m in args.models if not (repo / m).is_dir()]
    if missing:
        print(f"error: no model folder for {missing} in {repo}", file=sys.stderr)
        return 2
    hey = None if args.no_hey else shutil.which("hey")
    http_loader = "hey" if hey else "python aiohttp loader, hey not found" if not args.no_hey else "python aiohttp"
    if args.port_base:
        ports = (args.port_base, args.port_base + 1, args.port_base + 2)
    else:
        ports = (free_port(), free_port(), free_port())
    base = f"http://{HOST}:{ports[0]}"
    info = machine_info()
    results: list[Result] = []
    ceilings: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="bench_core_") as tmp_name:
        tmp = Path(tmp_name)
        with run_server(repo, args.models, ports, tmp / "server.log") as server_pid:
            for model in args.models:
                inputs = model_inputs(base, model)
                url = f"{base}/v2/models/{model}/infer"
                bodies: dict[str, tuple[bytes, dict[str, str]]] = {}
                bodies["http-json"] = (json_body(inputs), {"Content-Type": "application/json"})
                raw, header_len = binary_body(inputs)
                bodies["http-binary"] = (
                    raw,
                    {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_len)},
                )
                for protocol in args.protocols:
                    if protocol == "grpc":
                        payload, headers, target = grpc_request(model, inputs), {}, f"{HOST}:{ports[1]}"
                    else:
                        payload, headers = bodies[protocol]
                        target = url
                        status, resp = http_post(url, payload, headers)  # validate before loading
                        if status != 200:
                            raise RuntimeError(f"{model} {protocol}: HTTP {status} {resp[:300]!r}")
                        body_path = tmp / f"{model}-{protocol}.body"
                        body_path.write_bytes(payload)
                    for c in args.concurrency:
                        server0 = process_cpu_s(server_pid)
                        if protocol == "grpc" or not hey:
                            kind = "grpc" if protocol == "grpc" else "http"
                            lats, errors, wall, cpu, note = python_load(
                                kind, target, payload, headers, c, args.duration, args.loader_procs
                            )
                            label = protocol if protocol == "grpc" else f"{protocol} ({http_loader})"
                        else:
                            lats, errors, wall, cpu, note = hey_load(url, body_path, headers, c, args.duration)
                            label = protocol
                        server1 = process_cpu_s(server_pid)
                        p50, p99 = percentiles(lats)
                        server_cpu = None if server0 is None or server1 is None else (server1 - server0) / wall
                        row = Result(model, label, c, lats.size / wall, p50, p99, errors, cpu / wall, server_cpu, note)
                        results.append(row)
                        print(
                            f"{model} {label} c={c}: {row.rps:.0f} req/s p50 {fmt(p50, 3)} ms p99 {fmt(p99, 3)} ms "
                            f"errors {errors} {note}",
                            file=sys.stderr,
                            flush=True,
                        )
                ceiling = ort_ceiling(model_file(repo, model), model, inputs, max(1.0, args.duration / 2))
                ceilings[model] = ceiling.rps
                results.append(ceiling)
                print(f"{model} ORT ceiling: {ceiling.rps:.0f} calls/s", file=sys.stderr, flush=True)

    print()
    print(table(results, ceilings))
    print()
    print(f"Machine: {info}. HTTP loader: {http_loader}; gRPC loader: {args.loader_procs} Python grpc.aio processes.")
    print(
        "CPU columns: cores busy (1.00 = one core) during the point; loader = hey or the Python loader processes "
        "(for the ORT row, the benchmark process); server = the inferd process. hey reports latency in 0.1 ms steps."
    )
    print(f"Command: {command}")
    if args.csv:
        write_csv(args.csv, results, ceilings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
