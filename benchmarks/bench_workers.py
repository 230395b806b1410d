"""Issue 18's P6: `inferd serve --workers N`, throughput and server CPU per request, for N = 1 and 2 (or --workers).

Loads mlp and resnet50 V2 JSON with hey at one concurrency (default 32) and prints, per point: req/s, p50 / p99,
errors, and the server's CPU-seconds per request (utime + stime of the server's whole process tree, from /proc,
read before and after the load, the server idle at both), split into the main process (pipeline and models) and
the HTTP workers (HTTP, decode, encode), and main's event-loop thread alone. The split predicts a bigger machine:
with enough cores for the workers, the main process bounds the rate, somewhere between 1 / main's CPU per request
(as if all of it were serial) and 1 / its loop thread's (the model's own threads run beside the loop, on other
cores, with the GIL released).

Needs the shared harness's models and bodies (`../shared/bench-peers/`, under /tmp/peers) and hey:

    .venv/bin/python benchmarks/bench_workers.py [--workers 1,2] [--duration 6] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("PEERS", "/tmp/peers"))
INFERD = ROOT / ".venv" / "bin" / "inferd"
HEY = shutil.which("hey") or "/usr/bin/hey"
TICKS = os.sysconf("SC_CLK_TCK")
MODELS = {"mlp": ("INPUT0", "OUTPUT0", "64", "10", 256), "resnet50": ("input", "output", "3, 224, 224", "1000", 32)}


def repository(folder: Path) -> Path:
    """The harness's mlp and resnet50 as an inferd repository, as bench_peers.py serves them (no batching)."""
    for model, (inp, out, dims_in, dims_out, max_batch) in MODELS.items():
        (folder / model / "1").mkdir(parents=True)
        (folder / model / "1" / "model.onnx").symlink_to(PEERS / "models" / model / "1" / "model.onnx")
        (folder / model / "config.pbtxt").write_text(
            f'name: "{model}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
            f'input [ {{ name: "{inp}" data_type: TYPE_FP32 dims: [ {dims_in} ] }} ]\n'
            f'output [ {{ name: "{out}" data_type: TYPE_FP32 dims: [ {dims_out} ] }} ]\n'
            'parameters { key: "intra_op_thread_count" value { string_value: "2" } }\n')
    return folder


def tree(pid: int) -> list[int]:
    """The process and its descendants."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += tree(int(child))
    return found


def cpu_seconds(pid: int, thread: str = "") -> float:
    """utime + stime of one process (its threads included; `task/TID/`: of that thread only), in seconds."""
    fields = Path(f"/proc/{pid}/{thread}stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Server:
    def __init__(self, repo: Path, workers: int, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            [str(INFERD), "serve", "--model-repository", str(repo), "--workers", str(workers), "--http-port", "0",
             "--http-address", "127.0.0.1", "--allow-grpc=false", "--allow-metrics=false"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            text = log.read_text(errors="replace")
            found = re.search(r"started HTTPService at \S+:(\d+)", text)
            if found and " ready" in text:
                self.port = int(found.group(1))
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"inferd did not start:\n{text}")
            time.sleep(0.1)

    def cpu(self) -> tuple[float, float, float]:
        """(main's event-loop thread, the main process, the rest of its tree) CPU-seconds so far."""
        pid = self.process.pid
        main = cpu_seconds(pid)
        loop = cpu_seconds(pid, f"task/{pid}/")
        rest = 0.0
        for child in tree(pid)[1:]:
            try:
                rest += cpu_seconds(child)
            except FileNotFoundError:
                pass
        return loop, main, rest

    def wait_idle(self, limit: float = 15.0) -> None:
        """Until the tree uses (almost) no CPU: what a previous load left queued has run or been dropped, so the
        CPU read around a point is that point's alone (within one request)."""
        deadline = time.monotonic() + limit
        last = sum(self.cpu()[1:])
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = sum(self.cpu()[1:])
            if now - last < 0.02:
                return
            last = now

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self._log.close()


def hey(port: int, model: str, seconds: float, concurrency: int) -> dict[str, float]:
    body = PEERS / "bodies" / f"v2_{model}.json"
    out = subprocess.run([HEY, "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json",
                          "-D", str(body), f"http://127.0.0.1:{port}/v2/models/{model}/infer"],
                         capture_output=True, text=True, check=True).stdout
    ok = sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", out))
    other = sum(int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out) if code != "200")
    errors = sum(int(n) for n in re.findall(r"\]\s+(\d+) errors", out)) + other
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    p99 = re.search(r"99%+ in ([\d.]+) secs", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {"rps": float(rate.group(1)) if rate else 0.0, "ok": ok, "errors": errors,
            "p50": float(p50.group(1)) * 1000 if p50 else float("nan"),
            "p99": float(p99.group(1)) * 1000 if p99 else float("nan")}


Row = tuple[str, int, dict[str, float], float, float, float]  # point, workers, hey's figures, loop / main / rest ms


def measure(worker_counts: list[int], models: list[str], duration: float, warmup: float, concurrency: int
            ) -> list[Row]:
    """Per worker count and model: hey's figures and the CPU-ms per request of main's loop, main, the workers."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        repo = repository(Path(tmp) / "models")
        for workers in worker_counts:
            server = Server(repo, workers, Path(tmp) / f"inferd-{workers}.log")
            try:
                for model in models:
                    hey(server.port, model, warmup, concurrency)
                    server.wait_idle()
                    before = server.cpu()
                    result = hey(server.port, model, duration, concurrency)
                    server.wait_idle()  # requests still running when hey stopped finish (or leave) first
                    after = server.cpu()
                    done = max(1.0, result["ok"] + result["errors"])
                    loop_ms, main_ms, rest_ms = ((a - b) / done * 1000 for a, b in zip(after, before, strict=True))
                    rows.append((f"{model} V2 JSON c={concurrency}", workers, result, loop_ms, main_ms, rest_ms))
            finally:
                server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load per point (default 6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each point (default 1)")
    parser.add_argument("--concurrency", type=int, default=32, help="hey's -c (default 32)")
    parser.add_argument("--models", default="mlp,resnet50", help="models to load (default mlp,resnet50)")
    args = parser.parse_args()
    rows = measure([int(w) for w in args.workers.split(",")], args.models.split(","), args.duration, args.warmup,
                   args.concurrency)
    print(f"{'point':<24} {'workers':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
          f"{'CPU ms/req':>10} {'main':>8} {'loop':>8} {'workers':>8}  {'main-bound req/s':>16}")
    for point, workers, result, loop_ms, main_ms, rest_ms in rows:
        # With cores enough for the workers, the main process limits the rate: 1 / main CPU (all of it serial)
        # up to 1 / the loop thread's (the model's threads beside it).
        bound = f"{1000 / main_ms:,.0f}-{1000 / loop_ms:,.0f}" if workers > 1 and loop_ms > 0 else "-"
        p99 = f"{result['p99']:.1f}" if result["p99"] == result["p99"] else "-"
        print(f"{point:<24} {workers:>7} {result['rps']:>8,.1f} {result['p50']:>8.1f} {p99:>8} "
              f"{int(result['errors']):>6} {main_ms + rest_ms:>10.3f} {main_ms:>8.3f} {loop_ms:>8.3f} "
              f"{rest_ms if workers > 1 else 0:>8.3f}  {bound:>16}")
    print(f"(CPU ms/req: utime+stime of the server's process tree / requests; main: the main process (pipeline, "
          f"models), loop: its event-loop thread; workers: the HTTP worker processes. {os.cpu_count()} cores "
          "here.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
