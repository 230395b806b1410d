"""Issue 3's performance targets (T1–T6), measured beside the floor server and the Python peers in one run.

Uses the shared harness (`../shared/bench-peers/`: run_peer.py starts each server, times its cold start,
measures idle RSS and loads it with hey). Set it up once as its README says (venvs under /tmp/peers, models,
bodies); then:

    .venv/bin/python benchmarks/bench_peers.py [--duration 15] [--only floor,inferd-nobatch,...]

Every server runs alone, one after the other; results land in /tmp/peers/results/<run>/ and the script
prints one table of our figures beside the floor's and the peers', with the ratios the targets name.
gRPC (T2) is measured with `inferd bench -i grpc` against inferd and MLServer at c=8.

`--baseline-src DIR` (an older checkout's `src`, e.g. a `git worktree` of the baseline commit) adds
inferd-base-nobatch and inferd-base-batch: the same servers run from DIR's sources (PYTHONPATH=DIR, same
venv) on their own ports, each run right beside its counterpart from this tree (baseline first in odd
rounds, now first in even ones; `--rounds N` repeats the pairs), and a table of now / baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "bench-peers"
PEERS = Path(os.environ.get("PEERS", "/tmp/peers"))
V2 = "http://127.0.0.1:{port}/v2/models/{{model}}/infer"
INFERD = [str(ROOT / ".venv" / "bin" / "inferd")]
PAIRS = (("inferd-nobatch", "inferd-base-nobatch"), ("inferd-batch", "inferd-base-batch"))  # (now, baseline)
COMPARED = ("mlp@c1", "mlp@c8", "mlp@c32", "resnet50-bin@c8")


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH: the "now" servers import inferd from this tree (the venv's editable
    install), whatever the caller's shell had set; the baseline servers get theirs through run_peer's --env."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def harness_ready() -> bool:
    """The harness's models and bodies are set up under PEERS (else: says where to read how)."""
    if (PEERS / "models" / "mlp").exists() and (PEERS / "bodies").exists():
        return True
    print(f"set up the harness first: see {HARNESS / 'README.md'}", file=sys.stderr)
    return False


def peer_venv() -> Path:
    """The harness's base venv (floor server, raw ONNX Runtime) when it was set up, else this project's venv, which
    has what they import (onnxruntime, numpy, orjson, uvicorn, uvloop, httptools)."""
    base = PEERS / "base"
    return base if (base / "bin" / "uvicorn").exists() else ROOT / ".venv"


def imported_from(pythonpath: Path | None) -> Path:
    """The folder `inferd` is imported from by the venv's Python with this PYTHONPATH (None: none)."""
    env = clean_env() if pythonpath is None else dict(clean_env(), PYTHONPATH=str(pythonpath))
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c",
                          "import inferd.server; print(inferd.server.__file__)"],
                         env=env, cwd=PEERS, capture_output=True, text=True, timeout=120, check=True)
    return Path(out.stdout.strip()).resolve().parent


def describe(package: Path) -> str:
    """`<package folder> (<commit>[ + uncommitted changes])`, for the report."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(package), *a], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "?"
    status = git("status", "--porcelain", "--untracked-files=all", "--", ".")
    if not status:
        return f"{package} ({commit})"
    untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
    text = git("diff", "HEAD", "--", ".") + "".join(
        (Path(git("rev-parse", "--show-toplevel")) / name).read_text(errors="replace") for name in untracked)
    return f"{package} ({commit} + uncommitted changes {hashlib.sha1(text.encode()).hexdigest()[:8]})"


def inferd_repository(batching: bool) -> Path:
    """The harness's mlp and resnet50 models as an inferd repository, with or without `dynamic_batching { }`."""
    out = PEERS / ("inferd-batch" if batching else "inferd-nobatch")
    shutil.rmtree(out, ignore_errors=True)
    for model, inp, out_name, dims_in, dims_out, max_batch in (
            ("mlp", "INPUT0", "OUTPUT0", "64", "10", 256),
            ("resnet50", "input", "output", "3, 224, 224", "1000", 32)):
        (out / model / "1").mkdir(parents=True)
        (out / model / "1" / "model.onnx").symlink_to(PEERS / "models" / model / "1" / "model.onnx")
        config = (f'name: "{model}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch}\n'
                  f'input [ {{ name: "{inp}" data_type: TYPE_FP32 dims: [ {dims_in} ] }} ]\n'
                  f'output [ {{ name: "{out_name}" data_type: TYPE_FP32 dims: [ {dims_out} ] }} ]\n'
                  'parameters { key: "intra_op_thread_count" value { string_value: "2" } }\n')
        if batching:
            config += "dynamic_batching { }\n"
        (out / model / "config.pbtxt").write_text(config)
    return out


def mlserver_with_metadata() -> Path:
    """The harness's MLServer folder with the models' input metadata declared (MLServer lists no inputs
    otherwise, and a load generator has to know what to send); serving is unchanged."""
    out = PEERS / "mlserver-meta"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(HARNESS / "servers" / "mlserver", out)
    for model, name, shape in (("mlp", "INPUT0", [-1, 64]), ("resnet50", "input", [-1, 3, 224, 224])):
        path = out / model / "model-settings.json"
        settings = json.loads(path.read_text())
        settings["inputs"] = [{"name": name, "datatype": "FP32", "shape": shape}]
        path.write_text(json.dumps(settings))
    return out


def servers(baseline_src: Path | None = None) -> dict[str, list[str]]:
    s = HARNESS / "servers"
    floor = [str(peer_venv() / "bin" / "uvicorn"), "floor_server:app", "--host", "127.0.0.1", "--port", "8000",
             "--loop", "uvloop", "--http", "httptools", "--no-access-log"]

    def inferd(batching: bool, port: int, src: Path | None = None) -> list[str]:
        env = ["--env", f"PYTHONPATH={src}"] if src else []  # run_peer.py: the server's env = ours + these
        return ["--url", V2.format(port=port), "--bin-c", "1,8", *env, "--", *INFERD, "serve",
                "--model-repository", str(inferd_repository(batching)), "--http-port", str(port),
                "--grpc-port", str(port + 1), "--metrics-port", str(port + 2), "--http-address", "127.0.0.1",
                "--grpc-address", "127.0.0.1"]

    table = {
        "floor": ["--url", V2.format(port=8000), "--cwd", str(s), "--bin-c", "1,8", "--", *floor],
        "kserve-nobatch": ["--url", V2.format(port=8002), "--cwd", str(s), "--",
                           str(PEERS / "kserve/bin/python"), "kserve_server.py", "--http_port", "8002",
                           "--grpc_port", "8102"],
        "mlserver-nobatch": ["--url", V2.format(port=8001), "--cwd", str(s / "mlserver"), "--",
                             str(PEERS / "mlserver/bin/mlserver"), "start", "."],
        "inferd-nobatch": inferd(False, 8010),
        "inferd-batch": inferd(True, 8020),
    }
    if baseline_src:
        table["inferd-base-nobatch"] = inferd(False, 8040, baseline_src)
        table["inferd-base-batch"] = inferd(True, 8050, baseline_src)
    return table


def schedule(labels: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, label) in running order: the floor and the peers once, then each now/baseline pair back to back,
    baseline first in odd rounds and now first in even ones (A B B A ...: a steady drift of the machine
    favours neither side over two rounds); only the inferd labels are repeated for rounds > 1."""
    paired = {label for pair in PAIRS for label in pair}
    order = [(1, label) for label in labels if label not in paired]
    for r in range(1, rounds + 1):
        for now, base in PAIRS:
            order += [(r, label) for label in ((base, now) if r % 2 else (now, base)) if label in labels]
    return order


def run_http(label: str, args: list[str], results: Path, duration: int) -> dict:
    env = dict(clean_env(), RESULTS=str(results), DURATION=str(duration), BODIES=str(PEERS / "bodies"))
    subprocess.run([sys.executable, str(HARNESS / "run_peer.py"), "--label", label, *args], env=env,
                   timeout=3600, check=False)
    try:
        return json.loads((results / f"{label}.json").read_text())
    except OSError as exc:  # run_peer.py died before writing its result: a row of "-", not a lost run
        return {"label": label, "failure": f"no result: {exc}"}


def grpc_rate(label: str, command: list[str], url: str, duration: int, cwd: Path | None = None) -> float | None:
    """Start a server, wait for it, run `inferd bench -i grpc` on mlp at c=8, stop it; req/s or None."""
    log = open(PEERS / "logs" / f"{label}-grpc.log", "w")
    proc = subprocess.Popen(command, cwd=cwd, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        csv = PEERS / "logs" / f"{label}-grpc.csv"
        for _ in range(120):
            out = subprocess.run([*INFERD, "bench", "-m", "mlp", "-u", url, "-i", "grpc",
                                  "--concurrency-range", "8", "--duration", "1", "--no-progress"],
                                 capture_output=True, text=True, timeout=120)
            if out.returncode == 0:
                break
            time.sleep(1)
        subprocess.run([*INFERD, "bench", "-m", "mlp", "-u", url, "-i", "grpc", "--concurrency-range", "8",
                        "--processes", "2", "--duration", str(duration), "--no-progress", "--csv", str(csv)],
                       capture_output=True, text=True, timeout=duration + 120, check=True)
        rows = csv.read_text().splitlines()
        header, values = rows[0].split(","), rows[1].split(",")
        row = dict(zip(header, values, strict=False))
        key = next(k for k in ("req_per_s", "requests_per_s", "throughput") if k in row)
        return float(row[key])
    except Exception as exc:  # reported in the table, never fatal
        print(f"[{label}] gRPC measurement failed: {exc}", file=sys.stderr)
        return None
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def raw_ort(results: Path) -> dict[tuple[str, int], float]:
    path = results / "ort.json"
    subprocess.run([str(peer_venv() / "bin" / "python"), str(HARNESS / "bench_ort.py"), str(PEERS / "models"),
                    "--models", "mlp,resnet50", "--json", str(path)], timeout=1800, check=True,
                   stdout=subprocess.DEVNULL)
    best: dict[tuple[str, int], float] = {}
    for r in json.loads(path.read_text()):
        key = (r["model"], r["batch"])
        best[key] = max(best.get(key, 0.0), r["infer_s"])
    return best


def rps(run: dict, point: str) -> float:
    return float(run.get("loads", {}).get(point, {}).get("rps") or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    parser.add_argument("--skip-grpc", action="store_true")
    parser.add_argument("--skip-ort", action="store_true")
    parser.add_argument("--baseline-src", metavar="DIR",
                        help="an older inferd's src folder (or its checkout's root): adds inferd-base-nobatch and "
                             "inferd-base-batch, run from it with PYTHONPATH=DIR, and a now / baseline table")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the inferd now/baseline pairs this many times, alternating which goes first "
                             "(the comparison reports the median); default 1")
    args = parser.parse_args()
    if not harness_ready():
        return 2
    only = {x for x in args.only.split(",") if x}
    now_pkg = imported_from(None)
    now_desc = describe(now_pkg)  # taken now: others may commit or edit this tree while the run goes on
    baseline_src: Path | None = None
    if args.baseline_src:
        baseline_src = Path(args.baseline_src).resolve()
        if (baseline_src / "src" / "inferd").is_dir():
            baseline_src = baseline_src / "src"
        base_pkg = imported_from(baseline_src)
        base_desc = describe(base_pkg)
        if not base_pkg.is_relative_to(baseline_src):
            print(f"--baseline-src {baseline_src}: the venv imports inferd from {base_pkg}, not from there",
                  file=sys.stderr)
            return 2
    elif only & {base for _now, base in PAIRS}:
        print("the inferd-base-* labels need --baseline-src DIR", file=sys.stderr)
        return 2
    table = servers(baseline_src)
    unknown = only - set(table)
    if unknown:
        print(f"unknown labels: {', '.join(sorted(unknown))} (known: {', '.join(table)})", file=sys.stderr)
        return 2
    results = PEERS / "results" / time.strftime("run-%Y%m%d-%H%M%S")
    results.mkdir(parents=True)
    (PEERS / "logs").mkdir(exist_ok=True)
    rounds: list[dict[str, dict]] = [{} for _ in range(max(1, args.rounds))]
    for r, label in schedule([label for label in table if not only or label in only], len(rounds)):
        out = results if r == 1 else results / f"round-{r}"
        print(f"== round {r}: {label}", flush=True)
        rounds[r - 1][label] = run_http(label, table[label], out, args.duration)
    runs = rounds[0]
    grpc: dict[str, float | None] = {}
    if not args.skip_grpc:
        grpc["inferd"] = grpc_rate("inferd", [*INFERD, "serve", "--model-repository", str(inferd_repository(False)),
                                              "--http-port", "8030", "--grpc-port", "8031", "--metrics-port", "8032",
                                              "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1"],
                                   "127.0.0.1:8031", args.duration)
        grpc["mlserver"] = grpc_rate("mlserver", [str(PEERS / "mlserver/bin/mlserver"), "start", "."],
                                     "127.0.0.1:8101", args.duration, cwd=mlserver_with_metadata())
    ort = {} if args.skip_ort else raw_ort(results)
    report(runs, grpc, ort, results, args.duration)
    if baseline_src:
        if describe(now_pkg) != now_desc:
            now_desc += f", changed during the run to {describe(now_pkg)}"
        compare(rounds, base_desc, now_desc, args.duration)
    return 0


def compare(rounds: list[dict[str, dict]], baseline: str, now: str, duration: int) -> None:
    """inferd now beside the baseline, per pair and point: req/s (median over rounds), p50 / p99, now / baseline."""
    def median(values: list[float]) -> float:
        values = sorted(values)
        n = len(values)
        return 0.0 if not n else values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2

    def cell(label: str, point: str) -> tuple[float, str]:
        loads = [r[label]["loads"][point] for r in rounds if point in r.get(label, {}).get("loads", {})]
        if not loads:
            return 0.0, "-"
        value = median([load["rps"] or 0.0 for load in loads])
        # hey prints no 99 % line when a point has under 100 requests (resnet50 for short runs): "-"
        p50, p99 = (median([load[k] for load in loads if load[k] is not None]) or "-" for k in ("p50_ms", "p99_ms"))
        errors = sum(load.get("errors", 0) for load in loads)
        return value, f"{value:,.1f} (p50 {p50} / p99 {p99} ms{f', {errors} err' if errors else ''})"

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    print(f"\n## inferd now / baseline ({duration} s per point, hey, batch-1 requests, "
          f"{len(rounds)} round{'s' if len(rounds) > 1 else ''}{', median' if len(rounds) > 1 else ''})\n")
    print(f"baseline: {baseline}  \nnow: {now}\n")
    per_round = len(rounds) > 1
    print("| servers | point | baseline req/s | now req/s | now / baseline |" + (" per round |" if per_round else ""))
    print("|---|---|---|---|---|" + ("---|" if per_round else ""))
    for now_label, base_label in PAIRS:
        if not any(now_label in r or base_label in r for r in rounds):
            continue
        for point in COMPARED:
            (b, b_cell), (n, n_cell) = cell(base_label, point), cell(now_label, point)
            row = f"| {now_label} vs {base_label} | {point} | {b_cell} | {n_cell} | {ratio(n, b)} |"
            if per_round:
                row += " " + ", ".join(ratio(rps(r.get(now_label, {}), point), rps(r.get(base_label, {}), point))
                                       for r in rounds) + " |"
            print(row)
    for i, r in enumerate(rounds, 1):
        for label in (label for pair in PAIRS for label in pair):
            if "failure" in r.get(label, {}):
                print(f"\nround {i}, {label}: FAILED: {r[label]['failure']}")


def report(runs: dict[str, dict], grpc: dict[str, float | None], ort: dict[tuple[str, int], float], results: Path,
           duration: int) -> None:
    floor, off, on = runs.get("floor", {}), runs.get("inferd-nobatch", {}), runs.get("inferd-batch", {})
    peers = {k: v for k, v in runs.items() if k.startswith(("kserve", "mlserver"))}
    print(f"\n## inferd beside the floor and the peers ({duration} s per point, hey, batch-1 requests)\n")
    labels = list(runs)
    points = ["mlp@c1", "mlp@c8", "mlp@c32", "resnet50@c1", "resnet50@c8", "resnet50-bin@c1", "resnet50-bin@c8"]
    print("| point | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for p in points:
        cells = []
        for label in labels:
            load = runs[label].get("loads", {}).get(p)
            cells.append("-" if not load else f"{load['rps']:,.0f} req/s (p50 {load['p50_ms']} / p99 "
                         f"{load['p99_ms']} ms, {load['errors']} err)")
        print(f"| {p} | " + " | ".join(cells) + " |")
    print("| idle RSS MB | " + " | ".join(str(runs[x].get("idle_rss_mb", "-")) for x in labels) + " |")
    print("| cold start s | " + " | ".join(str(runs[x].get("cold_start_s", "-")) for x in labels) + " |")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    best_peer = max((rps(v, "mlp@c8") for v in peers.values()), default=0.0)
    print("\n| target | measured | goal |")
    print("|---|---|---|")
    for c, goal in ((1, 0.9), (8, 0.8), (32, 0.8)):
        print(f"| T1 mlp c={c}: inferd / floor | {ratio(rps(off, f'mlp@c{c}'), rps(floor, f'mlp@c{c}'))} | ≥ {goal} |")
    print(f"| T1 mlp c=8: inferd / best peer | {ratio(rps(off, 'mlp@c8'), best_peer)} | ≥ 7 |")
    for key, goal in (("p50_ms", "≤ 0.3 ms at c=1"), ("p99_ms", "≤ 10 ms at c=32")):
        point = "mlp@c1" if key == "p50_ms" else "mlp@c32"
        print(f"| T1 {key} | {off.get('loads', {}).get(point, {}).get(key, '-')} ms | {goal} |")
    print(f"| T2 gRPC mlp c=8: inferd / MLServer | {ratio(grpc.get('inferd') or 0, grpc.get('mlserver') or 0)} "
          f"({grpc.get('inferd')} vs {grpc.get('mlserver')} req/s) | ≥ 3 |")
    for c, goal in ((1, 0.95), (8, 1.0), (32, 1.0)):
        print(f"| T3 mlp c={c}: batching on / off | {ratio(rps(on, f'mlp@c{c}'), rps(off, f'mlp@c{c}'))} | ≥ {goal} |")
    raw8 = ort.get(("resnet50", 8), 0.0)
    print(f"| T4 resnet50 binary c=8, batching: inferd img/s / raw ORT (batch 8) | "
          f"{ratio(rps(on, 'resnet50-bin@c8'), raw8)} ({rps(on, 'resnet50-bin@c8'):.1f} vs {raw8:.1f}) | ≥ 0.9 |")
    print(f"| T4 resnet50 JSON c=1: inferd / floor | {ratio(rps(off, 'resnet50@c1'), rps(floor, 'resnet50@c1'))} "
          "| ≥ 0.95 |")
    print(f"| T5 idle RSS: inferd / floor | {ratio(off.get('idle_rss_mb', 0), floor.get('idle_rss_mb', 0))} | ≤ 1.1 |")
    print(f"| T5 cold start | {off.get('cold_start_s', '-')} s | ≤ 1.2 s |")
    errors = sum(load.get("errors", 0) for r in (off, on) for load in r.get("loads", {}).values())
    print(f"| T6 errors / non-200 (inferd, all points) | {errors} | 0 |")
    print(f"\nraw data: {results}")


if __name__ == "__main__":
    sys.exit(main())
