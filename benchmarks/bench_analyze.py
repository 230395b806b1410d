"""`inferd analyze`: its quick search (coordinate descent + confirmation) against brute force over the same grid.

Starts `inferd serve --model-control-mode explicit` on free 127.0.0.1 ports with the example `mlp` (building
examples/model_repository first if it is missing), runs both searches one after the other against it, then measures
each search's winner again, alternately, for `--remeasure` seconds each (so both winners are compared on the same
footing: a brute-force best picked from hundreds of short probes is biased upwards by their noise). Prints one
markdown table: points measured, config loads, wall time, the best throughput each search reported and re-measured,
and the quick search's share of brute force's throughput and time (the goal: >= 90 % of the throughput in <= 20 %
of the time).

Usage::

    .venv/bin/python benchmarks/bench_analyze.py [--model mlp] [--probe-seconds 1] [--max-instances 2]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "model_repository"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(repo: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    inferd = Path(sys.executable).parent / "inferd"
    process = subprocess.Popen(
        [str(inferd), "serve", "--model-repository", str(repo), "--model-control-mode", "explicit",
         "--http-address", HOST, "--grpc-address", HOST, "--http-port", str(http), "--grpc-port", str(grpc),
         "--metrics-port", str(metrics)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{http}/v2/health/live", timeout=2) as reply:
                if reply.status == 200:
                    return process, http, grpc
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"inferd serve did not start; see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--probe-seconds", type=float, default=1.0)
    parser.add_argument("--max-instances", type=int, default=2)
    parser.add_argument("--latency-budget-ms", type=float, default=None)
    parser.add_argument("--remeasure", type=float, default=3.0, help="seconds of each winner's re-measurement")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    args = parser.parse_args()

    from inferd.client._loadgen import Target
    from inferd.tools.analyze import AnalyzeOptions, Limits, analyze
    from inferd.tools.analyze.probe import Prober, RepositoryClient

    if not (EXAMPLES / args.model).is_dir():
        subprocess.run([sys.executable, str(ROOT / "examples" / "build_repository.py")], check=True)
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch) / "models"
        shutil.copytree(EXAMPLES / args.model, repo / args.model)
        process, http, grpc = start_server(repo, Path(scratch) / "inferd.log")
        try:
            port = http if args.protocol == "http" else grpc
            target = Target(protocol=args.protocol, url=f"{HOST}:{port}", model=args.model)
            limits = Limits(args.latency_budget_ms)
            results = {}
            for search in ("quick", "brute"):
                options = AnalyzeOptions(target, limits, args.max_instances, args.probe_seconds, search)  # type: ignore[arg-type]
                started = time.perf_counter()
                results[search] = (analyze(options, io.StringIO()), time.perf_counter() - started)
                print(f"{search}: done in {results[search][1]:.0f} s", file=sys.stderr, flush=True)
            repository = RepositoryClient(target)
            prober = Prober(target, repository, repository.config(), lambda: None)
            remeasured: dict[str, list[float]] = {"quick": [], "brute": []}
            for _ in range(2):  # alternately, so a drift in the machine's load hits both
                for search, (result, _) in results.items():
                    best = result.search.best
                    if best is not None:
                        remeasured[search].append(prober([best.point], args.remeasure)[0].throughput)
            repository.close()
        finally:
            process.terminate()
            process.wait(30)
    print_table(args, results, remeasured)
    return 0


def print_table(args: argparse.Namespace, results: dict, remeasured: dict[str, list[float]]) -> None:  # type: ignore[type-arg]
    brute, brute_s = results["brute"]
    brute_best = brute.search.best.throughput if brute.search.best else float("nan")
    brute_again = sum(remeasured["brute"]) / len(remeasured["brute"]) if remeasured["brute"] else float("nan")
    print(f"\n`inferd analyze` on {args.model} ({args.protocol}), {len(brute.grid.points())} grid points, "
          f"{args.probe_seconds:g} s probes; {platform.node()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| search | points measured | config loads | time s | best infer/s (reported) | best p99 ms | "
          "best infer/s (re-measured) | % of brute throughput (re-measured) | % of brute time | best config |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for search, (result, seconds) in results.items():
        best = result.search.best
        again = sum(remeasured[search]) / len(remeasured[search]) if remeasured[search] else float("nan")
        measured = len(result.search.probes) + len(result.search.confirmed)
        label = best.point.label() if best else "-"
        print(f"| {search} | {measured} | {result.loads} | {seconds:.0f} | "
              f"{best.throughput if best else float('nan'):.0f} | {best.p99_ms if best else float('nan'):.2f} | "
              f"{again:.0f} | {100 * again / brute_again:.0f} % | {100 * seconds / brute_s:.0f} % | {label} |")
    print(f"\nbrute force's reported best: {brute_best:.0f} infer/s; command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    sys.exit(main())
