"""gRPC throughput of inferd beside the bare grpc.aio server (issue 18, P3), with HTTP binary for the ratio.

Every server runs alone, one after the other, on 127.0.0.1; each point is `inferd bench -i grpc --processes 2 -m mlp
--concurrency-range C --duration D` (HTTP: `-i http`, binary tensors), the mlp model without dynamic batching:

    .venv/bin/python benchmarks/bench_grpc.py [--duration 6] [--concurrency 1,8,32]
        [--variant NAME=ENV=VALUE[;ENV=VALUE]] ... [--peer NAME=SCRIPT[;ENV=VALUE]] ... [--servers floor,inferd,http]

- `floor`: `../shared/bench-peers/servers/floor_grpc.py` (grpc.aio + uvloop, the model run inline), from this venv;
- `floor-sync`: the same floor on grpcio's sync server (`floor_grpc_sync.py`, 4 handler threads; WORKERS=N);
- `inferd`: `inferd serve` on the harness's repository (`bench_peers.inferd_repository(False)`), gRPC as configured;
- `http`: the same inferd, loaded over HTTP with binary tensors (the last column's denominator);
- each `--variant NAME=ENV=VALUE`: inferd again with those environment variables (a server mode to compare);
- each `--peer NAME=SCRIPT`: another floor-like server (`python SCRIPT PORT MODEL`), e.g. a sync-server floor.

Columns: req/s, p50 and p99 latency, the server's CPU-seconds per request (utime + stime of its process tree from
/proc, before and after the point, over the requests served), the loader's CPU (its worker processes' CPU over the
step's wall time, in cores: near 2.0 with --processes 2 means the client is the limit), the ratio to the floor at
the same concurrency, and the ratio to inferd's HTTP binary rate at the same concurrency. With `--rounds N` every
server runs N times (the order reversed in every other round) and each row is its median round.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_peers import HARNESS, PEERS, clean_env, inferd_repository  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
INFERD = str(ROOT / ".venv" / "bin" / "inferd")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Point:
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us: float  # server CPU-microseconds per request
    loader_cores: float  # the loader's CPU over the step's wall time, in cores


@dataclass
class Server:
    name: str
    protocol: str  # "grpc" or "http" (what the loader speaks)
    env: dict[str, str] = field(default_factory=dict)
    script: str = ""  # a floor-like server: `python SCRIPT PORT MODEL` (floor_grpc.py for "floor")
    points: dict[int, Point] = field(default_factory=dict)
    rounds: dict[int, list[Point]] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu_s(pid: int) -> float:
    """utime + stime of `pid` and every descendant alive now, in seconds."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, ()))
    return total


def start(server: Server, repository: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = dict(clean_env(), **server.env)
    if server.script:
        command = [PYTHON, server.script, str(port), str(PEERS / "models" / "mlp" / "1" / "model.onnx")]
    else:
        http, grpc = (port, free_port()) if server.protocol == "http" else (free_port(), port)
        command = [INFERD, "serve", "--model-repository", str(repository), "--http-address", "127.0.0.1",
                   "--http-port", str(http), "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
                   "--allow-metrics", "false", "--log-verbose", "0"]
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, port


def wait_ready(server: Server, port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {proc.returncode}")
        try:
            if server.protocol == "grpc":
                import tritonclient.grpc as client

                with client.InferenceServerClient(f"127.0.0.1:{port}") as c:
                    if c.is_model_ready("mlp"):
                        return
            else:
                import tritonclient.http as http_client

                c = http_client.InferenceServerClient(f"127.0.0.1:{port}")
                try:
                    if c.is_model_ready("mlp"):
                        return
                finally:
                    c.close()
        except Exception:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready in {timeout:.0f} s")


def measure(server: Server, pid: int, port: int, concurrency: int, duration: float, processes: int) -> Point:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        command = [INFERD, "bench", "-m", "mlp", "-u", f"127.0.0.1:{port}", "-i", server.protocol,
                   "--processes", str(processes), "--concurrency-range", str(concurrency),
                   "--duration", str(duration), "--no-progress", "--csv", out.name]
        if server.protocol == "http":
            command.append("--binary")
        before = tree_cpu_s(pid)
        subprocess.run(command, capture_output=True, text=True, timeout=duration + 120, check=True)
        used = tree_cpu_s(pid) - before
        row = next(csv.DictReader(open(out.name)))
    requests = int(row["requests"])
    return Point(rate=float(row["req_per_s"]), p50_ms=float(row["p50_ms"]), p99_ms=float(row["p99_ms"]),
                 errors=int(row["errors"]), server_cpu_us=used / max(requests, 1) * 1e6,
                 loader_cores=float(row["client_cpu_pct"]) / 100.0)


def run(server: Server, repository: Path, concurrencies: list[int], duration: float, processes: int,
        logs: Path) -> None:
    proc, port = start(server, repository, logs / f"{server.name}.log")
    try:
        wait_ready(server, port, proc)
        for c in concurrencies:
            try:
                server.rounds.setdefault(c, []).append(measure(server, proc.pid, port, c, duration, processes))
            except Exception as exc:  # reported, never fatal
                print(f"[{server.name} c={c}] failed: {exc}", file=sys.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def median_point(points: list[Point]) -> Point:
    """The round with the median rate (its other figures with it, so a row is one measurement)."""
    return sorted(points, key=lambda p: p.rate)[len(points) // 2]


def _ratio(value: float, reference: Point | None) -> str:
    return f"{value / reference.rate:.2f}" if reference is not None and reference.rate else "—"


def table(servers: list[Server], concurrencies: list[int]) -> str:
    floor = next((s for s in servers if s.name == "floor"), None)
    http = next((s for s in servers if s.protocol == "http"), None)
    lines = ["| server | c | req/s | p50 ms | p99 ms | errors | server CPU µs/req | loader CPU (cores) "
             "| / floor | / HTTP binary |", "|---|---|---|---|---|---|---|---|---|---|"]
    for server in servers:
        for c in concurrencies:
            p = server.points.get(c)
            if p is None:
                lines.append(f"| {server.name} | {c} | failed | | | | | | | |")
                continue
            f = floor.points.get(c) if floor is not None and server is not floor else None
            h = http.points.get(c) if http is not None and server is not http else None
            lines.append(f"| {server.name} | {c} | {p.rate:,.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.errors} "
                         f"| {p.server_cpu_us:.0f} | {p.loader_cores:.2f} | {_ratio(p.rate, f)} "
                         f"| {_ratio(p.rate, h)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per point (default 6)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrencies (default 1,8,32)")
    parser.add_argument("--processes", type=int, default=2, help="loader processes (default 2)")
    parser.add_argument("--servers", default="floor,inferd,http",
                        help="which of floor, floor-sync, inferd, http to run, in this order (default floor, inferd, "
                             "http)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ENV=VALUE[;ENV=VALUE]",
                        help="inferd (gRPC) again with these environment variables; repeatable")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every server this many times, alternating the order; each row is the median "
                             "round (default 1)")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=SCRIPT[;ENV=VALUE]...",
                        help="another floor-like server, run as `python SCRIPT PORT MODEL` with these environment "
                             "variables (e.g. a sync or SO_REUSEPORT variant of the floor); repeatable")
    args = parser.parse_args()
    if not (PEERS / "models" / "mlp").exists():
        print(f"set up the harness first: see {HARNESS / 'README.md'}", file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    servers: list[Server] = []
    for name in args.servers.split(","):
        if name == "floor":
            servers.append(Server(name, "grpc", script=str(HARNESS / "servers" / "floor_grpc.py")))
        elif name == "floor-sync":
            servers.append(Server(name, "grpc", script=str(ROOT / "benchmarks" / "floor_grpc_sync.py")))
        elif name == "inferd":
            servers.append(Server(name, "grpc"))
        elif name == "http":
            servers.append(Server("inferd-http-binary", "http"))
        elif name:
            parser.error(f"unknown server {name!r}")
    for spec in args.peer:
        name, _, rest = spec.partition("=")
        script, *assignments = rest.split(";")
        servers.append(Server(name, "grpc", dict(a.split("=", 1) for a in assignments), script=script))
    for spec in args.variant:
        name, _, assignments = spec.partition("=")
        env = dict(a.split("=", 1) for a in assignments.split(";") if a)
        servers.append(Server(f"inferd-{name}", "grpc", env))
    repository = inferd_repository(False)
    logs = PEERS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for round_ in range(args.rounds):
        # Odd rounds run the servers in reverse order: a drift of the shared machine's load spreads over all.
        for server in servers if round_ % 2 == 0 else servers[::-1]:
            run(server, repository, concurrencies, args.duration, args.processes, logs)
            print(f"done: {server.name} (round {round_ + 1})", file=sys.stderr)
    for server in servers:
        for c, points in server.rounds.items():
            server.points[c] = median_point(points)
    print(table(servers, concurrencies))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
