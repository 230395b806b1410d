"""Soak and chaos: mixed protocols and models at a steady load for a bounded time, with models unloaded and
reloaded and instance processes killed during it.

    .venv/bin/python benchmarks/soak.py                      # 180 s
    .venv/bin/python benchmarks/soak.py --duration 3600      # an hour

It builds a model repository in a temporary folder and starts `inferd serve` (explicit model control, every model
loaded with --load-model, ports bound by the server) with three models:

* `simple` (ONNX, OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1): the traffic that must never fail;
* `py_double` (a Python model, y = 2x + 1 in 20 ms, two instances, each in an instance process of its own): the chaos
  thread kills (SIGKILL) one of its instance processes now and then; the request in flight there fails with
  "model instance process exited ... killed by SIGKILL" and the instance starts a new process;
* `churn` (the same ONNX graph as simple): the chaos thread unloads it and loads it again now and then; requests
  during the unload window fail (not found / unavailable).

Client threads, one per protocol × model: V2 HTTP JSON (httpx), V2 gRPC (tritonclient.grpc) and V1 `:predict`
(httpx), each sending back to back with `--interval` seconds between requests (bounded load). Every request is
one of: answered (200 / OK and the result is checked against numpy), failed (an error response, counted by
reason: the status and a short reason; a reason that the chaos explains is "expected"), or lost (no answer at all:
a timeout, a connection reset or refused). Every 5 s the server's RSS (the server and its instance processes),
open FDs, threads, shared memory segments and instance processes are sampled.

Exit status 1 if a request was lost, a result was wrong, a request failed for a reason the chaos does not explain,
a model load/unload call failed, the server died, its RSS (alone, or with its children) grew more than
--rss-factor from the 10 s sample to the end, its FDs grew by more than --fd-growth, its shared memory segments
grew, it left unreaped (zombie) children, it did not exit 0 on SIGTERM or an instance process outlived it.
The last line is `SOAK-SUMMARY {json}` for scripts.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import re
import signal
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from models import SIMPLE_CONFIG, simple_model, write_model
from serving import ServerProcess

SIMPLE = "simple"
PY = "py_double"
CHURN = "churn"
MODELS = (SIMPLE, PY, CHURN)
PROTOCOLS = ("http", "grpc", "v1")
SAMPLE_EVERY_S = 5.0
REQUEST_TIMEOUT_S = 30.0
SHM_PREFIX = "inferd-"

# 20 ms per call: a kill finds a call in flight about as often as an idle process (both paths of the restart).
PY_MODEL = """
    import time

    import numpy as np


    class Model:
        def predict(self, inputs):
            time.sleep(0.02)
            return {"y": inputs["x"] * np.float32(2) + np.float32(1)}
"""

PY_CONFIG = f"""
name: "{PY}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
"""

# Failure reasons the chaos explains, per model: (status or code pattern, message pattern).
EXPECTED = {
    # Not "could not load the model": a restarted process that fails to load is a failure of its own.
    PY: re.compile(r"exited with code|killed by|stopped answering|is restarting|was killed", re.IGNORECASE),
    CHURN: re.compile(r"unload|not found|unknown model|not ready|unavailable|no version|is not loaded|loading",
                      re.IGNORECASE),
}


def build_repository(repo: Path) -> None:
    write_model(repo, SIMPLE, simple_model(), SIMPLE_CONFIG)
    write_model(repo, CHURN, simple_model(), SIMPLE_CONFIG.replace(f'name: "{SIMPLE}"', f'name: "{CHURN}"'))
    version = repo / PY / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(textwrap.dedent(PY_MODEL))
    (repo / PY / "config.pbtxt").write_text(PY_CONFIG)


# ---- what a request is and how its answer is checked ----

@dataclass
class Case:
    """One request's inputs (name -> array, batch 1) and the outputs it must get back."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]


def make_case(model: str, n: int) -> Case:
    if model == PY:
        x = (np.arange(4, dtype=np.float32) + np.float32(n % 1000)).reshape(1, 4)
        return Case({"x": x}, {"y": x * np.float32(2) + np.float32(1)})
    a = (np.arange(16, dtype=np.int32) + n % 100_000).reshape(1, 16)
    b = (np.arange(16, dtype=np.int32) * 3 - 7).reshape(1, 16)
    return Case({"INPUT0": a, "INPUT1": b}, {"OUTPUT0": a + b, "OUTPUT1": a - b})


def _datatype(array: np.ndarray) -> str:
    return {"float32": "FP32", "int32": "INT32"}[str(array.dtype)]


def short_reason(text: str) -> str:
    """An error message made countable: numbers (pids, exit codes) folded to N, cut short."""
    text = re.sub(r"\d+", "N", " ".join(str(text).split()))
    return text if len(text) <= 120 else text[:119] + "…"


class Outcome(Exception):
    """How one request ended when it did not end answered: kind is "failed" or "lost"."""

    def __init__(self, kind: str, reason: str, message: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason  # short: what the tables count by
        self.message = message or reason  # the whole error message: what says whether the chaos explains it


def _check(outputs: dict[str, np.ndarray], case: Case) -> None:
    for name, want in case.expected.items():
        got = outputs.get(name)
        if got is None or got.shape != want.shape or not np.array_equal(got, want):
            raise Outcome("wrong", f"wrong {name}")


# ---- the clients: each sends one request and raises Outcome unless it was answered right ----

class HttpV2:
    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self.client.close()

    def send(self, model: str, case: Case) -> None:
        body = {"inputs": [{"name": k, "datatype": _datatype(v), "shape": list(v.shape), "data": v.ravel().tolist()}
                           for k, v in case.inputs.items()]}
        response = _post(self.client, f"/v2/models/{model}/infer", body)
        outputs = {o["name"]: np.asarray(o["data"], dtype=case.expected[o["name"]].dtype).reshape(o["shape"])
                   for o in response["outputs"] if o["name"] in case.expected}
        _check(outputs, case)


class HttpV1:
    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self.client.close()

    def send(self, model: str, case: Case) -> None:
        body = {"instances": [{k: v[0].tolist() for k, v in case.inputs.items()}]}
        response = _post(self.client, f"/v1/models/{model}:predict", body)
        prediction = response["predictions"][0]
        if not isinstance(prediction, dict):  # a single output comes back bare
            prediction = {next(iter(case.expected)): prediction}
        outputs = {k: np.asarray([prediction[k]], dtype=want.dtype) for k, want in case.expected.items()
                   if k in prediction}
        _check(outputs, case)


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = client.post(path, json=body)
    except httpx.TimeoutException as error:
        raise Outcome("lost", f"timeout ({type(error).__name__})") from error
    except httpx.HTTPError as error:  # reset, refused, closed without a response
        raise Outcome("lost", f"{type(error).__name__}: {short_reason(str(error))}") from error
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise Outcome("failed", f"{response.status_code} {short_reason(message)}", str(message))
    try:
        return dict(response.json())
    except ValueError as error:
        raise Outcome("wrong", "200 with a body that is not JSON") from error


# gRPC codes that mean the call never got an answer from the server (as opposed to an error status it sent).
_GRPC_LOST_CODES = {"StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}
_GRPC_TRANSPORT = re.compile(r"connect|socket|reset|GOAWAY|closed|transport|RST_STREAM|EOF", re.IGNORECASE)


class Grpc:
    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.module = grpcclient
        self.client = grpcclient.InferenceServerClient(url)

    def close(self) -> None:
        self.client.close()

    def send(self, model: str, case: Case) -> None:
        from tritonclient.utils import InferenceServerException

        inputs = []
        for name, array in case.inputs.items():
            tensor = self.module.InferInput(name, list(array.shape), _datatype(array))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self.module.InferRequestedOutput(name) for name in case.expected]
        try:
            result = self.client.infer(model, inputs, outputs=outputs, client_timeout=REQUEST_TIMEOUT_S)
        except InferenceServerException as error:
            code = str(error.status())
            message = error.message() or ""
            reason = f"{code.removeprefix('StatusCode.')} {short_reason(message)}"
            if code in _GRPC_LOST_CODES or (code == "StatusCode.UNAVAILABLE" and _GRPC_TRANSPORT.search(message)):
                raise Outcome("lost", reason, message) from error
            raise Outcome("failed", reason, message) from error
        _check({name: result.as_numpy(name) for name in case.expected}, case)


# ---- counting ----

@dataclass
class Counts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    answered: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    # (protocol, model, kind, reason) -> count; kind: "expected", "unexpected", "wrong" or "lost"
    outcomes: collections.Counter[tuple[str, str, str, str]] = field(default_factory=collections.Counter)
    latency_max: dict[tuple[str, str], float] = field(default_factory=dict)

    def record(self, protocol: str, model: str, seconds: float, error: Outcome | None) -> None:
        with self.lock:
            key = (protocol, model)
            self.sent[key] += 1
            self.latency_max[key] = max(self.latency_max.get(key, 0.0), seconds)
            if error is None:
                self.answered[key] += 1
                return
            kind = error.kind
            if kind == "failed":
                pattern = EXPECTED.get(model)
                kind = "expected" if pattern is not None and pattern.search(error.message) else "unexpected"
            self.outcomes[(protocol, model, kind, error.reason)] += 1

    def totals(self) -> dict[str, dict[str, int]]:
        with self.lock:
            table: dict[str, dict[str, int]] = {}
            for protocol in PROTOCOLS:
                row = {"sent": 0, "answered": 0, "failed": 0, "expected": 0, "unexpected": 0, "wrong": 0, "lost": 0}
                for model in MODELS:
                    row["sent"] += self.sent[(protocol, model)]
                    row["answered"] += self.answered[(protocol, model)]
                for (p, _m, kind, _r), n in self.outcomes.items():
                    if p == protocol:
                        row[kind] += n
                        if kind in ("expected", "unexpected"):
                            row["failed"] += n
                table[protocol] = row
            table["total"] = {k: sum(table[p][k] for p in PROTOCOLS) for k in table[PROTOCOLS[0]]}
            return table


def client_loop(protocol: str, model: str, make_client: Callable[[], Any], counts: Counts, stop: threading.Event,
                interval: float, seed: int) -> None:
    client = make_client()
    n = seed
    try:
        while not stop.is_set():
            case = make_case(model, n)
            n += 1
            started = time.monotonic()
            error: Outcome | None = None
            try:
                client.send(model, case)
            except Outcome as outcome:
                error = outcome
            except Exception as unexpected:  # a client-side surprise: counted, never dropped
                error = Outcome("wrong", f"client {type(unexpected).__name__}: {short_reason(str(unexpected))}")
            counts.record(protocol, model, time.monotonic() - started, error)
            stop.wait(interval)
    finally:
        with contextlib.suppress(Exception):
            client.close()


# ---- chaos ----

SEEN_WORKERS: set[int] = set()  # every instance process seen during the run: none may outlive the server


def instance_children(server_pid: int) -> list[int]:
    """The server's child processes that are model instance processes (see inferd/instances/worker.py)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == server_pid and b"inferd.instances.worker" in cmdline:
            found.append(int(entry))
    SEEN_WORKERS.update(found)
    return sorted(found)


def zombie_children(server_pid: int) -> int:
    """The server's children that ended and were never waited for."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                count += fields[0] == "Z" and int(fields[1]) == server_pid
    return count


def surviving_workers() -> list[int]:
    """Instance processes seen during the run that are still running (call after the server stopped)."""
    alive = []
    for pid in sorted(SEEN_WORKERS):
        with contextlib.suppress(OSError):
            if b"inferd.instances.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                alive.append(pid)
    return alive


@dataclass
class ChaosLog:
    kills: int = 0
    kills_missed: int = 0  # no instance process was found to kill (one was restarting)
    unloads: int = 0
    loads: int = 0
    control_errors: list[str] = field(default_factory=list)


def chaos_loop(server: ServerProcess, base_url: str, every: float, log: ChaosLog, stop: threading.Event) -> None:
    step = 0
    with httpx.Client(base_url=base_url, timeout=60.0) as http:
        while not stop.wait(every):
            step += 1
            if step % 2:
                children = instance_children(server.process.pid)
                if not children:
                    log.kills_missed += 1
                    continue
                victim = children[step // 2 % len(children)]
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    log.kills += 1
            else:
                for action in ("unload", "load"):
                    try:
                        response = http.post(f"/v2/repository/models/{CHURN}/{action}")
                        if response.status_code != 200:
                            log.control_errors.append(f"{action}: {response.status_code} {response.text[:100]}")
                    except httpx.HTTPError as error:
                        log.control_errors.append(f"{action}: {type(error).__name__} {error}")
                    if action == "unload":
                        log.unloads += 1
                        stop.wait(min(1.0, every / 2))
                    else:
                        log.loads += 1


# ---- the server's resources ----

def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _status(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


@dataclass
class Sample:
    t: float
    rss_mib: float  # the server process
    tree_rss_mib: float  # the server and its children (instance processes, resource tracker)
    fds: int
    threads: int
    shm: int
    instances: int
    zombies: int
    sent: int
    answered: int


def sample(pid: int, t: float, counts: Counts) -> Sample:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    tree = sum(_status(p, "VmRSS") for p in _descendants(pid))
    shm = 0
    with contextlib.suppress(OSError):
        shm = sum(1 for name in os.listdir("/dev/shm") if name.startswith(f"{SHM_PREFIX}{pid}-"))
    totals = counts.totals()["total"]
    return Sample(t, _status(pid, "VmRSS") / 1024, tree / 1024, fds, _status(pid, "Threads"), shm,
                  len(instance_children(pid)), zombie_children(pid), totals["sent"], totals["answered"])


# ---- the run ----

def warm_up(clients: dict[str, Callable[[], Any]]) -> None:
    """One answered request per protocol and model before the clock starts (the first calls set things up)."""
    deadline = time.monotonic() + 60.0
    for protocol, make in clients.items():
        client = make()
        try:
            for model in MODELS:
                while True:
                    try:
                        client.send(model, make_case(model, 0))
                        break
                    except Outcome as error:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"warm-up: {protocol} {model}: {error.reason}") from error
                        time.sleep(0.2)
        finally:
            client.close()


def run(args: argparse.Namespace) -> int:
    started_at = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="inferd-soak-") as tmp:
        repo = Path(tmp) / "models"
        build_repository(repo)
        load = [arg for model in MODELS for arg in ("--load-model", model)]
        server = ServerProcess(repo, Path(tmp) / "server.log", "--model-control-mode", "explicit", *load)
        try:
            finish = _soak(args, server, started_at)
        finally:
            code = server.stop()
            if args.server_log:
                print("---- server log (tail) ----")
                print("\n".join(server.log().splitlines()[-40:]))
        after = []
        if code != 0:
            after.append(f"the server exited with code {code} on SIGTERM")
        if survivors := surviving_workers():
            after.append(f"instance processes {survivors} outlived the server")
        print(f"server stopped with exit code {code}; instance processes seen during the run: {len(SEEN_WORKERS)}, "
              f"still running: {len(survivors)}")
        return finish(after)


def _soak(args: argparse.Namespace, server: ServerProcess, started_at: float) -> Callable[[list[str]], int]:
    server.wait_live()
    base_url, grpc_url = server.base_url, server.grpc_url
    pid = server.process.pid
    makers: dict[str, Callable[[], Any]] = {
        "http": lambda: HttpV2(base_url),
        "grpc": lambda: Grpc(grpc_url),
        "v1": lambda: HttpV1(base_url),
    }
    warm_up(makers)
    print(f"inferd serve pid {pid} (http {base_url}, grpc {grpc_url}) up and warm after "
          f"{time.monotonic() - started_at:.1f} s; soak for {args.duration:.0f} s, {len(PROTOCOLS) * len(MODELS)} "
          f"client threads, {args.interval * 1000:.0f} ms between requests, chaos every {args.chaos_every} s",
          flush=True)

    counts, chaos, stop = Counts(), ChaosLog(), threading.Event()
    threads = [threading.Thread(target=client_loop, name=f"{p}-{m}", daemon=True,
                                args=(p, m, makers[p], counts, stop, args.interval, 1000 * i))
               for i, (p, m) in enumerate((p, m) for p in PROTOCOLS for m in MODELS)]
    threads.append(threading.Thread(target=chaos_loop, name="chaos", daemon=True,
                                    args=(server, base_url, args.chaos_every, chaos, stop)))
    t0 = time.monotonic()
    samples = [sample(pid, 0.0, counts)]
    for thread in threads:
        thread.start()
    died = None
    next_sample = t0 + SAMPLE_EVERY_S
    while (now := time.monotonic()) < t0 + args.duration:
        if server.process.poll() is not None:
            died = server.process.returncode
            break
        if now >= next_sample:
            samples.append(sample(pid, now - t0, counts))
            if args.verbose:
                s = samples[-1]
                print(f"  t={s.t:6.0f}s rss={s.tree_rss_mib:.1f} MiB fds={s.fds} sent={s.sent}", flush=True)
            next_sample += SAMPLE_EVERY_S
        time.sleep(min(0.2, max(0.0, next_sample - now)))
    stop.set()
    hung = []
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S + 5)
        if thread.is_alive():
            hung.append(thread.name)
    if died is None and server.process.poll() is not None:
        died = server.process.returncode
    if died is None:
        samples.append(sample(pid, time.monotonic() - t0, counts))
    elapsed = time.monotonic() - t0
    return functools.partial(report, args, counts, chaos, samples, died, hung, elapsed, started_at)


def report(args: argparse.Namespace, counts: Counts, chaos: ChaosLog, samples: list[Sample], died: int | None,
           hung: list[str], elapsed: float, started_at: float, after: list[str]) -> int:
    """Print the tables and the verdict; `after`: problems found once the server stopped."""
    print()
    print(f"## Resources of the server (every {SAMPLE_EVERY_S:.0f} s)")
    print()
    print("| t (s) | RSS server (MiB) | RSS tree (MiB) | FDs | threads | shm segments | instance procs | zombies "
          "| sent | answered |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in samples:
        print(f"| {s.t:.0f} | {s.rss_mib:.1f} | {s.tree_rss_mib:.1f} | {s.fds} | {s.threads} | {s.shm} | "
              f"{s.instances} | {s.zombies} | {s.sent} | {s.answered} |")
    totals = counts.totals()
    print()
    print(f"## Requests ({elapsed:.0f} s)")
    print()
    print("| protocol | sent | answered | failed | expected | unexpected | wrong | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in totals.items():
        print(f"| {name} | {row['sent']} | {row['answered']} | {row['failed']} | {row['expected']} | "
              f"{row['unexpected']} | {row['wrong']} | {row['lost']} |")
    print()
    print("| protocol | model | sent | answered | max latency (s) |")
    print("|---|---|---:|---:|---:|")
    for protocol in PROTOCOLS:
        for model in MODELS:
            key = (protocol, model)
            print(f"| {protocol} | {model} | {counts.sent[key]} | {counts.answered[key]} | "
                  f"{counts.latency_max.get(key, 0.0):.3f} |")
    print()
    print("## Not answered, by reason")
    print()
    print("| protocol | model | kind | reason | count |")
    print("|---|---|---|---|---:|")
    for (protocol, model, kind, reason), n in sorted(counts.outcomes.items()):
        print(f"| {protocol} | {model} | {kind} | {reason} | {n} |")
    print()
    print(f"chaos: {chaos.kills} instance processes killed ({chaos.kills_missed} times none found), "
          f"{chaos.unloads} unloads, {chaos.loads} loads of {CHURN}")

    problems = list(after)
    total = totals["total"]
    if total["lost"]:
        problems.append(f"{total['lost']} requests lost")
    if total["wrong"]:
        problems.append(f"{total['wrong']} wrong answers")
    if total["unexpected"]:
        problems.append(f"{total['unexpected']} failures the chaos does not explain")
    for protocol in PROTOCOLS:
        if not totals[protocol]["answered"]:
            problems.append(f"no {protocol} request answered")
    if chaos.control_errors:
        problems.append(f"{len(chaos.control_errors)} load/unload calls failed: {chaos.control_errors[:3]}")
    if died is not None:
        problems.append(f"the server died (exit code {died})")
    if hung:
        problems.append(f"threads still running after the end: {hung}")
    base = next((s for s in samples if s.t >= 10.0), None)
    end = samples[-1]
    rss_ratio = tree_ratio = fd_growth = None
    if base is not None and end is not base and died is None:
        # The server process itself: where a leak accumulates. The tree (with the instance processes) dips while a
        # killed instance restarts, so its baseline is its highest sample up to the 10 s mark.
        rss_ratio = end.rss_mib / base.rss_mib if base.rss_mib else None
        tree_base = max(s.tree_rss_mib for s in samples if s.t <= base.t)
        tree_ratio = end.tree_rss_mib / tree_base if tree_base else None
        fd_growth = end.fds - base.fds
        for what, ratio in (("RSS of the server", rss_ratio), ("RSS of the server and its children", tree_ratio)):
            if ratio is not None and ratio > args.rss_factor:
                problems.append(f"{what} grew {ratio:.2f}x from t={base.t:.0f}s to the end "
                                f"(limit {args.rss_factor}x)")
        if fd_growth > args.fd_growth:
            problems.append(f"FDs grew by {fd_growth} from t={base.t:.0f}s to the end (limit +{args.fd_growth})")
        if end.shm > base.shm + 2:
            problems.append(f"shared memory segments grew from {base.shm} to {end.shm}")
        if end.zombies > 1:
            problems.append(f"{end.zombies} unreaped (zombie) children of the server at the end")
    nan = float("nan")
    print(f"RSS of the server {base.rss_mib if base else nan:.1f} MiB at t=10s -> {end.rss_mib:.1f} MiB at the end "
          f"({rss_ratio or nan:.2f}x), with its children {tree_ratio or nan:.2f}x (limit {args.rss_factor}x); FDs "
          f"{base.fds if base else -1} -> {end.fds} (limit +{args.fd_growth})")
    runtime = time.monotonic() - started_at
    print(f"runtime {runtime:.1f} s")
    print("RESULT: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    summary = {"totals": totals, "problems": problems, "duration_s": round(elapsed, 1), "runtime_s": round(runtime, 1),
               "kills": chaos.kills, "unloads": chaos.unloads, "rss_ratio": rss_ratio, "tree_rss_ratio": tree_ratio,
               "fd_growth": fd_growth}
    print("SOAK-SUMMARY " + json.dumps(summary), flush=True)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180; 3600: an hour)")
    parser.add_argument("--interval", type=float, default=0.05,
                        help="seconds each client thread waits between requests (default 0.05)")
    parser.add_argument("--chaos-every", type=float, default=3.0,
                        help="seconds between chaos steps, alternately a kill and an unload + load (default 3)")
    parser.add_argument("--rss-factor", type=float, default=1.5, help="fail if RSS grows more than this (1.5)")
    parser.add_argument("--fd-growth", type=int, default=50, help="fail if open FDs grow by more than this (50)")
    parser.add_argument("--verbose", action="store_true", help="print each sample as it is taken")
    parser.add_argument("--server-log", action="store_true", help="print the tail of the server's log at the end")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
