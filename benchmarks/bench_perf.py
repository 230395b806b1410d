"""Issue 18 (performance, round two): every row of its table in one run, each beside its reference, with the ratio,
the goal, and the server CPU per request.

    .venv/bin/python benchmarks/bench_perf.py [--duration 8] [--skip grpc,workers,ort,imports]

Needs the peers' harness set up (`../shared/bench-peers/README.md`: models and bodies under /tmp/peers; the floor
server and raw ONNX Runtime run from the harness's base venv when there is one, else from this venv) and hey.
Every server runs alone, one after the other, on 127.0.0.1:

- HTTP (hey, batch-1 requests, the harness's run_peer.py): the floor server, inferd without batching and inferd with
  `dynamic_batching { }` on mlp (c=1, 8, 32), resnet50 V2 JSON (c=1) and resnet50 binary tensors (c=8); idle RSS of
  each process tree and its start-to-ready time; server CPU per request = the server's process-tree CPU-seconds
  during the point / requests;
- raw ONNX Runtime in-process (the harness's bench_ort.py): resnet50 batch 8 images/s;
- gRPC (bench_grpc.py: `inferd bench -i grpc --processes 2`, whose own CPU is reported, so a saturated loader shows):
  the bare grpc.aio floor (floor_grpc.py), inferd, and inferd over HTTP binary with the same loader;
- `--workers` (bench_workers.py): mlp and resnet50 V2 JSON at c=32 with 1 and 2 front-end processes;
- `import inferd.cli` under `python -X importtime` (bench_startup.py).

Results vary with the machine's load: compare only figures from one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_grpc  # noqa: E402
import bench_peers  # noqa: E402
import bench_startup  # noqa: E402
import bench_workers  # noqa: E402

Row = tuple[str, str, str, str, str, str, str]  # target, point, inferd, reference, ratio, goal, CPU µs/req


def http_points(duration: int, results: Path) -> dict[str, dict]:
    """floor, inferd-nobatch, inferd-batch through run_peer.py: mlp c=1,8,32, resnet50 JSON c=1, binary c=8."""
    os.environ.update(MLP_C="1,8,32", RESNET_C="1")
    table = bench_peers.servers()
    runs = {}
    for label in ("floor", "inferd-nobatch", "inferd-batch"):
        args = list(table[label])
        args[args.index("--bin-c") + 1] = "8"
        print(f"== {label}", file=sys.stderr, flush=True)
        runs[label] = bench_peers.run_http(label, args, results, duration)
    return runs


def load(run: dict, point: str) -> dict:
    return run.get("loads", {}).get(point) or {}


def cpu_us(run: dict, point: str) -> float:
    """Server CPU-µs per request at a point: its process tree's cores over the point / requests per second."""
    figures = load(run, point)
    return figures["server_cores"] / figures["rps"] * 1e6 if figures.get("rps") else 0.0


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def http_rows(runs: dict[str, dict], ort: dict[tuple[str, int], float]) -> list[Row]:
    floor, off, on = runs["floor"], runs["inferd-nobatch"], runs["inferd-batch"]

    def beside_floor(target: str, what: str, run: dict, point: str, goal: str) -> Row:
        got, reference = load(run, point).get("rps", 0), load(floor, point).get("rps", 0)
        return (target, what, rate(got), f"floor {rate(reference)}", ratio(got, reference), goal,
                f"{cpu_us(run, point):,.0f} / floor {cpu_us(floor, point):,.0f}")

    rows = [beside_floor("P1", f"mlp V2 JSON c={c}, batching off", off, f"mlp@c{c}", "≥ 1.0") for c in (1, 8, 32)]
    rows.append(("P1", "server CPU per request, mlp c=8", f"{cpu_us(off, 'mlp@c8'):.0f} µs",
                 f"floor {cpu_us(floor, 'mlp@c8'):.0f} µs", ratio(cpu_us(off, "mlp@c8"), cpu_us(floor, "mlp@c8")),
                 "≤ 1.05", ""))
    rows += [beside_floor("P2", f"mlp V2 JSON c={c}, dynamic_batching", on, f"mlp@c{c}", "≥ 1.3") for c in (8, 32)]
    rows.append(("P2", "p99 mlp c=32, dynamic_batching", f"{load(on, 'mlp@c32').get('p99_ms', '-')} ms",
                 f"floor {load(floor, 'mlp@c32').get('p99_ms', '-')} ms",
                 ratio(load(on, "mlp@c32").get("p99_ms") or 0, load(floor, "mlp@c32").get("p99_ms") or 0), "≤ 1.0",
                 ""))
    raw8 = ort.get(("resnet50", 8), 0.0)
    for label, run in (("dynamic_batching", on), ("batching off", off)):
        got = load(run, "resnet50-bin@c8").get("rps", 0)
        rows.append(("P4", f"resnet50 binary c=8, {label} (img/s)", rate(got), f"raw ORT batch 8: {rate(raw8)}",
                     ratio(got, raw8), "≥ 0.97", f"{cpu_us(run, 'resnet50-bin@c8'):,.0f}"))
    rows.append(beside_floor("P4", "resnet50 V2 JSON c=1", off, "resnet50@c1", "≥ 1.0"))
    rss, floor_rss = off.get("idle_rss_mb", 0), floor.get("idle_rss_mb", 0)
    rows.append(("P5", "idle RSS of the process tree, mlp + resnet50 (MB)", str(rss), f"floor {floor_rss}",
                 ratio(rss, floor_rss), "≤ 1.05", ""))
    start, floor_start = off.get("cold_start_s"), floor.get("cold_start_s")
    rows.append(("P5", "start to ready (s)", str(start), f"floor {floor_start}",
                 f"{start - floor_start:+.2f} s" if start is not None and floor_start is not None else "-",
                 "≤ +0.1 s", ""))
    return rows


def grpc_rows(duration: float) -> list[Row]:
    servers = [bench_grpc.Server("floor", "grpc", script=str(bench_peers.HARNESS / "servers" / "floor_grpc.py")),
               bench_grpc.Server("inferd", "grpc"), bench_grpc.Server("inferd-http-binary", "http")]
    repository = bench_peers.inferd_repository(False)
    logs = bench_peers.PEERS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for server in servers:
        print(f"== gRPC: {server.name}", file=sys.stderr, flush=True)
        bench_grpc.run(server, repository, [1, 8, 32], duration, 2, logs)
    floor, inferd, http = ({c: ps[0] for c, ps in s.rounds.items()} for s in servers)
    rows: list[Row] = []
    for c in (1, 8, 32):
        f, i, h = floor.get(c), inferd.get(c), http.get(c)
        if f is None or i is None:
            rows.append(("P3", f"mlp gRPC c={c}", "failed" if i is None else rate(i.rate),
                         "failed" if f is None else rate(f.rate), "-", "≥ 0.95", ""))
            continue
        rows.append(("P3", f"mlp gRPC c={c} (loader {i.loader_cores:.2f} / {f.loader_cores:.2f} cores)",
                     rate(i.rate), f"grpc.aio floor {rate(f.rate)}", ratio(i.rate, f.rate), "≥ 0.95",
                     f"{i.server_cpu_us:.0f} / floor {f.server_cpu_us:.0f}"))
        if h is not None:
            rows.append(("P3", f"mlp gRPC / HTTP binary c={c}, same loader", rate(i.rate),
                         f"HTTP binary {rate(h.rate)}", ratio(i.rate, h.rate), "(reported)",
                         f"{i.server_cpu_us:.0f} / HTTP {h.server_cpu_us:.0f}"))
    errors = sum(p.errors for s in servers for ps in s.rounds.values() for p in ps)
    rows.append(("P7", "gRPC errors (all points)", str(errors), "", "", "0", ""))
    return rows


def worker_rows(duration: float) -> list[Row]:
    rows: list[Row] = []
    measured = bench_workers.measure([1, 2], ["mlp", "resnet50"], duration, 1.0, 32)
    single = {point: (result, main_ms + rest_ms) for point, workers, result, _, main_ms, rest_ms in measured
              if workers == 1}
    for point, workers, result, loop_ms, main_ms, rest_ms in measured:
        base = single.get(point)
        rows.append(("P6", f"{point}, --workers {workers}", rate(result["rps"]),
                     f"1 process {rate(base[0]['rps'])}" if base and workers > 1 else "",
                     ratio(result["rps"], base[0]["rps"]) if base and workers > 1 else "", "(scaling)",
                     f"{(main_ms + rest_ms) * 1000:,.0f} (main {main_ms * 1000:,.0f}, its loop {loop_ms * 1000:,.0f})"))
    errors = sum(int(result["errors"]) for _, _, result, *_ in measured)
    rows.append(("P7", "--workers errors (all points)", str(errors), "", "", "0", ""))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds of load per point (default 8)")
    parser.add_argument("--skip", default="", help="comma-separated: grpc, workers, ort, imports")
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    if not bench_peers.harness_ready():
        return 2
    results = bench_peers.PEERS / "results" / time.strftime("perf-%Y%m%d-%H%M%S")
    results.mkdir(parents=True)
    runs = http_points(args.duration, results)
    ort = {} if "ort" in skip else bench_peers.raw_ort(results)
    rows = http_rows(runs, ort)
    http_errors = sum(int(f.get("errors", 0)) for run in runs.values() for f in run.get("loads", {}).values())
    rows.append(("P7", "HTTP errors (all points, all servers)", str(http_errors), "", "", "0", ""))
    if "grpc" not in skip:
        rows += grpc_rows(args.duration)
    if "workers" not in skip:
        rows += worker_rows(args.duration)
    if "imports" not in skip:
        total, packages, count = bench_startup.import_cli()
        rows.append(("P5", f"`python -X importtime -c 'import inferd.cli'` ({count} modules)",
                     f"{total:.2f} s", bench_startup.top(packages, 4), "", "", ""))
    print(f"\n## inferd beside its references ({args.duration} s per point, {os.cpu_count()} cores)\n")
    print("| # | point | inferd | reference | ratio | goal | server CPU µs / request |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nraw data: {results}; command: {' '.join(['benchmarks/bench_perf.py', *sys.argv[1:]])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
