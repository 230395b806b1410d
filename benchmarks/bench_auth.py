"""Tenants' cost: mlp, batch-1 V2 JSON requests, with API keys + audit trail off and on, in one run.

The issue's target: with ``--auth-config`` (a key per request, the ``authenticate`` stage, one audit record per
call written to sqlite by the audit thread) inferd keeps >= 90 % of the throughput it has without it, at c = 8.

Starts ``inferd serve`` (only ``mlp`` loaded) once per configuration and round, one server at a time, in the order
off, on in odd rounds and on, off in even ones (A B B A cancels a steady drift of the machine), loads each with
``hey`` (or bench_core.py's Python aiohttp loader without hey) at c = 8 and, unless ``--c1-duration 0``, at c = 1,
and prints the medians over rounds. The "on" server gets an auth file whose tenant ``acme`` is granted ``mlp``
(every request carries ``Authorization: Bearer acme-key``) and a fresh ``--state-dir`` in a temporary folder; after
it stopped, the script counts the audit records of the load in ``<state-dir>/audit.db`` (sqlalchemy) and checks
that they equal the requests the loader saw answered with 200.

Usage::

    python benchmarks/bench_auth.py [--rounds 3] [--duration 10] [--c1-duration 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a running process and its live children (the audit writer process among them)."""
    total = process_cpu_s(pid)
    if total is None:
        return None
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for child_pid in child.read_text().split():
            total += tree_cpu_s(int(child_pid)) or 0.0
    return total
TENANT, TENANT_KEY, ADMIN_KEY = "acme", "acme-key", "bench-admin-key"
AUTH_YAML = f"""\
admin_keys: ["{ADMIN_KEY}"]
tenants:
  - name: {TENANT}
    keys: ["{TENANT_KEY}"]
    models: ["{MODEL}"]
"""
CONFIGS = ("off", "on")
TARGET = 0.90  # the issue's: on keeps >= 90 % of the req/s it has off


@dataclass
class Point:
    """One load of one server: a configuration at one concurrency in one round."""

    config: str
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int  # responses with status 200
    errors: int
    server_cpu: float | None  # cores
    loader_cpu: float  # cores
    note: str = ""

    @property
    def server_us_per_request(self) -> float:
        """Server CPU per answered request, in microseconds (what the auth stage adds shows here first)."""
        if self.server_cpu is None or self.rps <= 0:
            return float("nan")
        return self.server_cpu / self.rps * 1e6


@dataclass
class AuditCheck:
    """After one "on" server: audit records of the load vs 200 responses the loader saw."""

    round: int
    answered_200: int
    records_200: int = -1
    records_other: int = -1
    error: str = ""
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and self.records_200 == self.answered_200 and self.records_other == 0


# --------------------------------------------------------------------------- server


def http_request(url: str, headers: dict[str, str], body: bytes | None = None, timeout: float = 10.0) -> int:
    """GET (or POST ``body``) ``url`` with ``headers``: the status, 0 when the connection fails."""
    req = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


@contextlib.contextmanager
def run_server(repo: Path, extra: Sequence[str], headers: dict[str, str], log: Path) -> Iterator[tuple[int, str]]:
    """``inferd serve`` with only mlp loaded and ``extra`` flags: yields (PID, HTTP base URL) once mlp is ready,
    SIGTERM at the end (the server then flushes and closes its audit trail)."""
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    cmd = [
        *inferd_command(), "serve", "--model-repository", str(repo),
        "--model-control-mode", "explicit", "--load-model", MODEL,
        "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics),
        "--http-address", HOST, "--grpc-address", HOST, "--exit-timeout-secs", "5",
        "--log-info", "false", *extra,
    ]  # fmt: skip
    base = f"http://{HOST}:{http}"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"inferd exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if (
                http_request(f"{base}/v2/models/{MODEL}/ready", headers, timeout=2) == 200
                and http_request(f"{base}/v2/health/ready", {}, timeout=2) == 200
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"inferd not ready after 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield proc.pid, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.returncode not in (0, -signal.SIGTERM):
            print(f"warning: inferd exited with {proc.returncode}; log: {log}", file=sys.stderr)


def count_audit(db: Path, since: float) -> tuple[int, int, dict[int, int]]:
    """Audit records of mlp that arrived at or after ``since``: (status 200, other statuses, by status)."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        table = sa.Table("inferd_audit", sa.MetaData(), autoload_with=engine)
        query = (
            sa.select(table.c.status, sa.func.count())
            .where(table.c.time >= since, table.c.model == MODEL)
            .group_by(table.c.status)
        )
        with engine.connect() as conn:
            by_status = {int(status): int(n) for status, n in conn.execute(query)}
    finally:
        engine.dispose()
    return by_status.get(200, 0), sum(n for s, n in by_status.items() if s != 200), by_status


# --------------------------------------------------------------------------- one server run


def measure(
    config: str,
    round_no: int,
    repo: Path,
    tmp: Path,
    args: argparse.Namespace,
    use_hey: bool,
) -> tuple[list[Point], AuditCheck | None]:
    """Start the server of ``config``, load it at each concurrency, stop it; for "on" check the audit trail.

    The request body (``tmp/mlp.json``) is built from mlp's metadata by the first server, an "off" one."""
    headers = {"Content-Type": "application/json"}
    extra: list[str] = []
    state = tmp / f"state-round{round_no}"
    if config == "on":
        headers["Authorization"] = f"Bearer {TENANT_KEY}"
        extra = ["--auth-config", str(tmp / "auth.yaml"), "--state-dir", str(state)]
    body_path = tmp / "mlp.json"
    points: list[Point] = []
    answered = 0
    with run_server(repo, extra, headers, tmp / f"server-{config}-{round_no}.log") as (pid, base):
        url = f"{base}/v2/models/{MODEL}/infer"
        if not body_path.exists():
            body_path.write_bytes(json_body(model_inputs(base, MODEL)))
        body = body_path.read_bytes()
        if config == "on":  # the key is really checked: none -> 401, the tenant's -> 200
            no_key = http_request(url, {"Content-Type": "application/json"}, body)
            if no_key != 401:
                raise RuntimeError(f"auth on, a request without a key got HTTP {no_key}, not 401")
        for _ in range(args.warmup):
            status = http_request(url, headers, body)
            if status != 200:
                raise RuntimeError(f"{config}: warm-up request got HTTP {status}")
        since = time.time()  # audit records of the load arrive after this (the warm-up ones before)
        for c, duration in args.points:
            server0 = tree_cpu_s(pid)
            if use_hey:
                lats, errors, wall, cpu, note = hey_load(url, body_path, headers, c, duration)
            else:
                lats, errors, wall, cpu, note = python_load("http", url, body, headers, c, duration, args.loader_procs)
            server1 = tree_cpu_s(pid)
            server_cpu = None if server0 is None or server1 is None else (server1 - server0) / wall
            p50, p99 = percentiles(lats)
            rps = lats.size / wall
            point = Point(config, c, round_no, rps, p50, p99, int(lats.size), errors, server_cpu, cpu / wall, note)
            points.append(point)
            # The Python loader's processes first send one warm-up request per connection (c in all, each a 200
            # or the load fails): the server answered and audited those too.
            answered += point.ok + (0 if use_hey else c)
            print(
                f"round {round_no} auth {config} c={c}: {point.rps:.0f} req/s p50 {p50:.2f} ms p99 {p99:.2f} ms "
                f"errors {errors} server {server_cpu or 0:.2f} cores ({point.server_us_per_request:.0f} µs/req) "
                f"loader {point.loader_cpu:.2f} cores {note}",
                file=sys.stderr,
                flush=True,
            )
    if config != "on":
        return points, None
    check = AuditCheck(round_no, answered)
    try:
        check.records_200, check.records_other, check.statuses = count_audit(state / "audit.db", since)
    except Exception as exc:  # report it in the table rather than losing the run
        check.error = repr(exc)[:200]
    return points, check


# --------------------------------------------------------------------------- report


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def table(points: Sequence[Point], checks: Sequence[AuditCheck], concurrencies: Sequence[int]) -> str:
    head = (
        "| config | c | req/s | p50 ms | p99 ms | ratio to off | per-round ratios | server CPU µs/req "
        "| server cores | loader cores | errors | audit records = 200 responses |"
    )
    lines = [head, "|" + "---|" * head.count(" |")]
    audit = "n/a"
    if checks:
        parts = []
        for ch in checks:
            if ch.error:
                parts.append(f"r{ch.round}: error {ch.error}")
            else:
                extra = f" (+{ch.records_other} non-200: {ch.statuses})" if ch.records_other else ""
                parts.append(f"r{ch.round}: {ch.records_200}/{ch.answered_200}{extra}")
        audit = ("yes" if all(ch.ok for ch in checks) else "NO") + ": " + ", ".join(parts)
    for c in concurrencies:
        rounds = sorted({p.round for p in points if p.concurrency == c})
        by = {(p.config, p.round): p for p in points if p.concurrency == c}
        off_rps = median([by[("off", r)].rps for r in rounds if ("off", r) in by])
        for config in CONFIGS:
            mine = [by[(config, r)] for r in rounds if (config, r) in by]
            if not mine:
                continue
            rps = median([p.rps for p in mine])
            ratios = [
                by[(config, r)].rps / by[("off", r)].rps
                for r in rounds
                if (config, r) in by and ("off", r) in by and by[("off", r)].rps > 0
            ]
            per_round = ", ".join(f"{x:.2f}" for x in ratios) + (f" (median {median(ratios):.2f})" if ratios else "")
            cpu = [p.server_cpu for p in mine if p.server_cpu is not None]
            lines.append(
                f"| auth+audit {config} | {c} | {rps:.0f} | {median([p.p50_ms for p in mine]):.2f} "
                f"| {median([p.p99_ms for p in mine]):.2f} | {100 * rps / off_rps:.1f} % | {per_round} "
                f"| {median([p.server_us_per_request for p in mine]):.0f} | {median(cpu):.2f} "
                f"| {median([p.loader_cpu for p in mine]):.2f} | {sum(p.errors for p in mine)} "
                f"| {audit if config == 'on' and c == concurrencies[0] else ''} |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repository", type=Path, default=None, help=f"model repository (default: build {DEFAULT_REPO})")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each one server per configuration (default 3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load at c = 8 (default 10)")
    p.add_argument("--concurrency", type=int, default=8, help="the throughput point's concurrency (default 8)")
    p.add_argument("--c1-duration", type=float, default=5.0, help="seconds of load at c = 1 (default 5; 0: skip)")
    p.add_argument("--warmup", type=int, default=50, help="requests sent to each server before the load")
    p.add_argument("--loader-procs", type=int, default=2, help="processes of the Python loader (without hey)")
    p.add_argument("--no-hey", action="store_true", help="use the Python aiohttp loader even if hey is installed")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.c1_duration < 0 or args.concurrency < 1:
        p.error("--rounds, --duration and --concurrency must be positive, --c1-duration >= 0")
    args.points = [(args.concurrency, args.duration)]
    if args.c1_duration > 0 and args.concurrency != 1:
        args.points.append((1, args.c1_duration))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    command = shlex.join([python, *sys.argv] if argv is None else [python, sys.argv[0], *argv])
    repo: Path = args.repository or DEFAULT_REPO
    if args.repository is None and not (repo / MODEL).is_dir():
        print(f"building {repo} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(BUILD_SCRIPT), str(repo)], check=True, timeout=900)
    repo = repo.resolve()
    if not (repo / MODEL).is_dir():
        print(f"error: no {MODEL} folder in {repo}", file=sys.stderr)
        return 2
    use_hey = not args.no_hey and shutil.which("hey") is not None
    loader = "hey" if use_hey else "Python aiohttp loader (bench_core.py)" + ("" if args.no_hey else ", hey not found")
    info = machine_info()
    points: list[Point] = []
    checks: list[AuditCheck] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_auth_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "auth.yaml").write_text(AUTH_YAML)
        for round_no in range(1, args.rounds + 1):
            order = CONFIGS if round_no % 2 else tuple(reversed(CONFIGS))
            for config in order:
                new_points, check = measure(config, round_no, repo, tmp, args, use_hey)
                points += new_points
                if check is not None:
                    checks.append(check)
        body_bytes = (tmp / "mlp.json").stat().st_size
    elapsed = time.monotonic() - started

    print()
    print(table(points, checks, [c for c, _ in args.points]))
    print()
    c8 = [p for p in points if p.concurrency == args.concurrency]
    off = median([p.rps for p in c8 if p.config == "off"])
    on = median([p.rps for p in c8 if p.config == "on"])
    if off > 0:
        verdict = "met" if on / off >= TARGET else "NOT met"
        print(f"Target: on / off at c = {args.concurrency} >= {TARGET:.0%}: {on / off:.1%}, {verdict}.")
    print(
        f"mlp (ONNX Runtime), batch-1 V2 JSON requests ({body_bytes} bytes)"
        f", {args.rounds} round(s), {args.duration:g} s at c = {args.concurrency}"
        + (f", {args.c1_duration:g} s at c = 1" if len(args.points) > 1 else "")
        + "; one server at a time, order off/on in odd rounds and on/off in even ones; medians over rounds."
    )
    print(
        f"auth+audit on: --auth-config (tenant '{TENANT}' granted '{MODEL}', 'Authorization: Bearer {TENANT_KEY}') "
        "and the audit trail in sqlite:///<--state-dir>/audit.db. Audit column: records of mlp that arrived "
        "during the load with status 200 / 200 responses the loader counted, per round (non-200 records listed)."
    )
    print(
        f"Loader: {loader}. req/s, p50, p99, server CPU µs/req (CPU of inferd's process tree, the audit writer "
        "included, / 200 responses), server and loader cores (1.00 = one core busy): medians over rounds; "
        "ratio to off: of the req/s medians; per-round "
        "ratios: on / off of the same round."
    )
    print(f"Machine: {info}. Run took {elapsed:.0f} s.")
    print(f"Command: {command}")
    return 0 if all(ch.ok for ch in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
