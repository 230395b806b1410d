"""Start-up cost (issue 18's P5): what `import inferd.cli` imports and how long it takes, start to ready, idle RSS.

    .venv/bin/python benchmarks/bench_startup.py [--rounds 3] [--settle 3] [--baseline-src /tmp/inferd-base/src]

Prints one table, each figure the median of `--rounds` runs:

- `inferd serve` on the harness's mlp + resnet50 (/tmp/peers/inferd-nobatch, built by bench_peers if missing) beside
  the floor server (`../shared/bench-peers/servers/floor_server.py` under uvicorn, the same models, ORT's default
  session options with 2 intra-op threads, as inferd's repository sets them): seconds from the process's start to
  the first `/v2/health/ready` 200; the CPU seconds (user + system) the process used by then (steadier than the
  wall time on a shared machine); the RSS and PSS of the process tree (every process under the one started, from
  /proc/PID/smaps_rollup) `--settle` seconds after ready. The servers run alternately, round after round;
- `python -X importtime -c "import inferd.cli"`: the cumulative total, the modules it imports, and the ten heaviest
  top-level packages (their modules' own import time summed);
- the modules `inferd serve` has imported once ready, and its heaviest top-level packages (one more run under
  `-X importtime`), so that an import no loaded model needs shows.

`--baseline-src DIR` (an older checkout's `src/`, e.g. `git worktree add /tmp/inferd-base <commit>`) adds a `base`
column: the same server from DIR (PYTHONPATH=DIR, same venv), run alternately with the others. Every process runs
with bytecode caching on, as an installed server has it (into a folder of its own, PYTHONPYCACHEPREFIX, so the
source tree stays clean), the caches written by one unmeasured start of each server first.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
HARNESS = ROOT.parent / "shared" / "bench-peers"
PEERS = Path(os.environ.get("PEERS", "/tmp/peers"))
REPOSITORY = PEERS / "inferd-nobatch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_importtime(text: str) -> tuple[float, collections.Counter[str], int]:
    """(the last top-level import's cumulative seconds, seconds by top-level package, modules counted)."""
    by_package: collections.Counter[str] = collections.Counter()
    cumulative = 0.0
    modules = 0
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, total, name = line[len("import time:"):].split("|", 2)
        modules += 1
        by_package[name.strip().split(".")[0]] += int(own) / 1e6
        if not name.startswith("  "):  # a top-level import: its cumulative time includes everything under it
            cumulative = int(total) / 1e6
    return cumulative, by_package, modules


def import_cli(src: Path | None = None) -> tuple[float, collections.Counter[str], int]:
    """`python -X importtime -c "import inferd.cli"` (from `src`, a source tree, when given): what it brought."""
    done = subprocess.run([str(PYTHON), "-X", "importtime", "-c", "import inferd.cli"], capture_output=True,
                          text=True, check=True, env=clean_env(src), cwd="/")
    _, packages, modules = parse_importtime(done.stderr)
    total = 0.0  # the interpreter's own start-up (site, encodings) is not inferd's: what `import inferd.cli` brought
    for line in done.stderr.splitlines():
        if line.rstrip().endswith("| inferd.cli"):
            total = int(line.split("|")[1]) / 1e6
    return total, packages, modules


PYCACHE = Path(os.environ.get("BENCH_PYCACHE", "/tmp/inferd-bench-pycache"))


def clean_env(src: Path | None = None) -> dict[str, str]:
    """This environment without PYTHONPATH (PYTHONPATH=src: inferd from another source tree), with bytecode caching
    on (as an installed server has it) into a folder of its own (PYTHONPYCACHEPREFIX: the source tree stays clean;
    every server uses it), warmed before measuring."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def tree(pid: int) -> list[int]:
    """pid and every process under it."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory(pid: int) -> tuple[float, float, int]:
    """(RSS MB, PSS MB, processes) of the tree under pid, from smaps_rollup."""
    rss = pss = 0
    pids = tree(pid)
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024, len(pids)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the tree under pid has used (its threads included; processes that ended not)."""
    ticks = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_ready(proc: subprocess.Popen[bytes], port: int, started: float, timeout: float = 120) -> float:
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/v2/health/ready")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError("server not ready in time")


def floor_command(port: int) -> tuple[list[str], Path, dict[str, str]]:
    env = dict(clean_env(), MODEL_REPO=str(PEERS / "models"))
    return ([str(ROOT / ".venv" / "bin" / "uvicorn"), "floor_server:app", "--host", "127.0.0.1", "--port", str(port),
             "--loop", "uvloop", "--http", "httptools", "--no-access-log"], HARNESS / "servers", env)


def inferd_command(port: int, src: Path | None = None, importtime: bool = False,
                   ) -> tuple[list[str], Path, dict[str, str]]:
    grpc, metrics = free_port(), free_port()
    prefix = [str(PYTHON), "-X", "importtime"] if importtime else []
    return ([*prefix, str(ROOT / ".venv" / "bin" / "inferd"), "serve", "--model-repository", str(REPOSITORY),
             "--http-port", str(port), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
             "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1"], Path("/"), clean_env(src))


def run_server(which: str, settle: float, src: Path | None = None, importtime: bool = False,
               ) -> tuple[float, float, float, int, float, str]:
    """(seconds to ready, RSS MB, PSS MB, processes, CPU seconds to ready, the server's stderr)."""
    port = free_port()
    command, cwd, env = floor_command(port) if which == "floor" else inferd_command(port, src, importtime)
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = wait_ready(proc, port, started)
        cpu = cpu_seconds(proc.pid)
        time.sleep(settle)
        rss, pss, processes = memory(proc.pid)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    return ready, rss, pss, processes, cpu, err.decode(errors="replace")


def top(packages: collections.Counter[str], n: int) -> str:
    return ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in packages.most_common(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after ready before memory is read")
    parser.add_argument("--baseline-src", type=Path, default=None, metavar="DIR",
                        help="also run inferd from this source tree (an older checkout's src/, e.g. a git worktree), "
                        "alternately with the others: the `base` column")
    args = parser.parse_args()
    if not REPOSITORY.is_dir():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import bench_peers

        bench_peers.inferd_repository(False)

    labels: dict[str, Path | None] = {"inferd": None}
    if args.baseline_src is not None:
        labels["base"] = args.baseline_src.resolve()
    for which, src in (("floor", None), *labels.items()):  # writes the bytecode caches: no measured run compiles
        run_server(which, 0, src)
    imports = {label: [import_cli(src) for _ in range(args.rounds + 1)][1:] for label, src in labels.items()}
    results: dict[str, list[tuple[float, float, float, int, float]]] = {
        "floor": [], **{label: [] for label in labels}}
    for _ in range(args.rounds):
        for which in results:
            results[which].append(run_server(which, args.settle, labels.get(which))[:5])
    served = {label: parse_importtime(run_server(label, args.settle, src, importtime=True)[5])
              for label, src in labels.items()}

    def med(which: str, i: int) -> float:
        return statistics.median(r[i] for r in results[which])

    columns = [*labels, "floor"]
    print(f"# bench_startup: {args.rounds} rounds (run alternately), medians; repository {REPOSITORY}")
    print(f"{'figure':40s} " + " ".join(f"{c:>9s}" for c in columns) + f" {'inferd/floor':>13s}")
    for label, i, unit in (("start to ready", 0, "s"), ("CPU to ready (user + sys)", 4, "s"),
                           ("idle RSS, process tree", 1, "MB"), ("idle PSS, process tree", 2, "MB"),
                           ("processes in the tree", 3, "")):
        a, b = med("inferd", i), med("floor", i)
        ratio = f"{a - b:+.2f} s" if unit == "s" else f"{a / b:.3f}" if unit else ""
        name = f"{label} ({unit})" if unit else label
        print(f"{name:40s} " + " ".join(f"{med(c, i):9.2f}" for c in columns) + f" {ratio:>13s}")
    cli = {label: statistics.median(t for t, _, _ in runs) for label, runs in imports.items()}
    print(f"{'import inferd.cli, cumulative (s)':40s} " + " ".join(f"{cli[c]:9.3f}" for c in labels))
    print(f"{'  modules it imports':40s} " + " ".join(f"{imports[c][0][2]:9d}" for c in labels))
    print(f"{'modules `inferd serve` imported by ready':40s} " + " ".join(f"{served[c][2]:9d}" for c in labels))
    for label in labels:
        merged: collections.Counter[str] = collections.Counter()
        for _, packages, _ in imports[label]:
            for name, seconds in packages.items():
                merged[name] += seconds / len(imports[label])
        print(f"{label}: `import inferd.cli`, heaviest top-level packages (own import time, mean ms): "
              f"{top(merged, 10)}")
        # the doors' modules import on a thread while the models load: own times there include waits for the GIL
        print(f"{label}: `inferd serve` by ready (one run under -X importtime, two importing threads, ms): "
              f"{top(served[label][1], 12)}")


if __name__ == "__main__":
    main()
