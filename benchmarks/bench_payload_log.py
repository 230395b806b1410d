"""Payload logging's cost: mlp, batch-1 V2 JSON requests, with --payload-log off, on to a live sink, and on to a
sink that is down, in one run.

The issue's target: with the sink down, inferd keeps >= 90 % of the throughput it has with logging off (the
request path only appends to a bounded queue; the writer drops and counts while the sink cannot be reached).

Starts ``inferd serve`` (only ``mlp`` loaded) once per configuration and round, one at a time, rotating the order
across rounds; loads each with ``hey`` (or bench_core.py's Python loader without hey) at c = 8; prints the medians
over rounds, the events the live sink received and the drops the server counted
(``inferd_payload_log_dropped_total``). The live sink is an http.server in this process on 127.0.0.1 that answers
202 to every CloudEvent.

Usage::

    python benchmarks/bench_payload_log.py [--rounds 3] [--duration 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (
    BUILD_SCRIPT,
    DEFAULT_REPO,
    HOST,
    free_port,
    hey_load,
    inferd_command,
    json_body,
    machine_info,
    model_inputs,
    percentiles,
    process_cpu_s,
    python_load,
)

MODEL = "mlp"
CONFIGS = ("off", "sink", "down")
TARGET = 0.90


class Sink:
    """A live CloudEvents sink: counts the events it is posted."""

    def __init__(self) -> None:
        self.events = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink.lock:
                    sink.events += 1
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a connection the inferd server reset as it stopped: not the benchmark's business

        self.httpd = Server((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@dataclass
class Point:
    config: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    events: int = 0  # received by the live sink
    dropped: float = 0.0  # counted by the server
    cpu_us: float = float("nan")  # the server's CPU per answered request (steadier than req/s on a busy machine)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except OSError:
        return 0, ""


@contextlib.contextmanager
def run_server(repo: Path, extra: Sequence[str], log: Path) -> Iterator[tuple[str, str, int]]:
    """``inferd serve`` with only mlp loaded: yields (HTTP base URL, metrics URL, PID) once mlp is ready."""
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    cmd = [*inferd_command(), "serve", "--model-repository", str(repo), "--model-control-mode", "explicit",
           "--load-model", MODEL, "--http-port", str(http), "--grpc-port", str(grpc_port),
           "--metrics-port", str(metrics), "--http-address", HOST, "--grpc-address", HOST,
           "--exit-timeout-secs", "5", "--log-info", "false", *extra]
    base = f"http://{HOST}:{http}"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _get(f"{base}/v2/models/{MODEL}/ready")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"inferd did not get ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base, f"http://{HOST}:{metrics}/metrics", proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def measure(config: str, round_no: int, repo: Path, tmp: Path, sink: Sink, args: argparse.Namespace,
            use_hey: bool) -> Point:
    extra: list[str] = []
    if config == "sink":
        extra = ["--payload-log", sink.url]
    elif config == "down":
        extra = ["--payload-log", f"http://{HOST}:{free_port()}/"]  # nothing listens there
    headers = {"Content-Type": "application/json"}
    body_path = tmp / "mlp.json"
    with run_server(repo, extra, tmp / f"server-{config}-{round_no}.log") as (base, metrics_url, pid):
        url = f"{base}/v2/models/{MODEL}/infer"
        if not body_path.exists():
            body_path.write_bytes(json_body(model_inputs(base, MODEL)))
        before = sink.events
        cpu0 = process_cpu_s(pid)
        if use_hey:
            lats, errors, wall, _cpu, _note = hey_load(url, body_path, headers, args.concurrency, args.duration)
        else:
            lats, errors, wall, _cpu, _note = python_load("http", url, body_path.read_bytes(), headers,
                                                          args.concurrency, args.duration, 2)
        cpu1 = process_cpu_s(pid)
        time.sleep(1.5)  # the writer catches up (live sink) or counts what it dropped (sink down)
        text = _get(metrics_url)[1]
        reasons = {reason: float(value) for reason, value in re.findall(
            r'^inferd_payload_log_dropped_total\{reason="(\w+)"\} (\S+)$', text, re.MULTILINE) if float(value)}
        dropped = sum(reasons.values())
    p50, p99 = percentiles(lats)
    point = Point(config, round_no, lats.size / wall, p50, p99, errors, sink.events - before, dropped)
    if cpu0 is not None and cpu1 is not None and lats.size:
        point.cpu_us = (cpu1 - cpu0) / lats.size * 1e6
    print(f"round {round_no} {config}: {point.rps:.0f} req/s p50 {p50:.2f} ms p99 {p99:.2f} ms errors {errors} "
          f"server {point.cpu_us:.0f} µs CPU/request sink events {point.events} dropped {dropped:.0f} {reasons}",
          file=sys.stderr, flush=True)
    return point


def table(points: Sequence[Point]) -> str:
    off = statistics.median([p.rps for p in points if p.config == "off"])
    rows = ["| payload log | req/s (median) | vs off | p50 ms | p99 ms | server CPU µs/req | errors | events at sink "
            "| dropped |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {"off": "off", "sink": "on, live sink", "down": "on, sink down"}
    for config in CONFIGS:
        mine = [p for p in points if p.config == config]
        rps = statistics.median([p.rps for p in mine])
        rows.append(f"| {labels[config]} | {rps:.0f} | {rps / off:.1%} | "
                    f"{statistics.median([p.p50_ms for p in mine]):.2f} | "
                    f"{statistics.median([p.p99_ms for p in mine]):.2f} | "
                    f"{statistics.median([p.cpu_us for p in mine]):.0f} | {sum(p.errors for p in mine)} | "
                    f"{sum(p.events for p in mine)} | {sum(p.dropped for p in mine):.0f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server (default 10)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repository", type=Path, default=None)
    parser.add_argument("--no-hey", action="store_true", help="use the Python loader even if hey is installed")
    args = parser.parse_args(argv)
    repo: Path = args.repository or DEFAULT_REPO
    if args.repository is None and not (repo / MODEL).is_dir():
        subprocess.run([sys.executable, str(BUILD_SCRIPT), str(repo)], check=True, timeout=900)
    use_hey = not args.no_hey and shutil.which("hey") is not None
    sink = Sink()
    points: list[Point] = []
    with tempfile.TemporaryDirectory(prefix="bench_payload_log_") as tmp_name:
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(CONFIGS)
            for config in CONFIGS[shift:] + CONFIGS[:shift]:
                points.append(measure(config, round_no, repo.resolve(), Path(tmp_name), sink, args, use_hey))
    sink.httpd.shutdown()
    print()
    print(f"`{shlex.join([sys.executable, *sys.argv])}` — {machine_info()}; loader "
          f"{'hey' if use_hey else 'Python'}, c = {args.concurrency}, {args.duration:g} s per server, "
          f"{args.rounds} rounds")
    print()
    print(table(points))
    off = statistics.median([p.rps for p in points if p.config == "off"])
    down = statistics.median([p.rps for p in points if p.config == "down"])
    print()
    print(f"Target: sink down / off >= {TARGET:.0%}: {down / off:.1%}, {'met' if down / off >= TARGET else 'NOT met'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
