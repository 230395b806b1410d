"""Instructions per request of the HTTP app in-process, counted by valgrind's callgrind: a figure that does not
drift with the machine's load, for comparing two trees to the percent (hey on a shared 2-core VM cannot).

    .venv/bin/python benchmarks/bench_instructions.py [--baseline-src /tmp/inferd-base/src] [--requests 1000]

Builds a one-model repository (the example mlp: 64 -> 10, ONNX Runtime on one thread, no batching), then for each
tree runs `HttpFrontend.handle` on a V2 JSON request N0 and N0 + N times under callgrind; the difference over N is
what one request costs, start-up excluded, counted on the main thread only (the event loop that runs the request;
timer threads wake by the clock, and valgrind's clock depends on the machine's load). The model runs inline on the
event loop, as a real machine runs this model (under valgrind's slowness the cost estimate would otherwise flip
between inline and thread hand-offs).

`--http` counts the whole server instead (sockets, HTTP parsing, the event loop's I/O: what a client's request
costs the server's main thread), with a client process outside valgrind on `--concurrency` keep-alive connections,
and adds the floor server of the peers' harness (raw ASGI + orjson + ONNX Runtime under uvicorn) as a row: the
load-independent form of "server CPU per request, inferd / floor".
Needs valgrind (Debian's package). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "model_repository"
HARNESS_FLOOR = ROOT.parent / "shared" / "bench-peers" / "servers" / "floor_server.py"

DRIVER = '''
import asyncio, json, os, sys
from inferd import Server
from inferd.frontends.http import HttpFrontend
import inferd.scheduling.base as scheduling
# Under valgrind every model looks slow; pin the mode a real machine picks for mlp (run inline on the loop), so
# that both trees take the same path on every request whatever valgrind's timing.
scheduling.INLINE_BUDGET_NS = 10**15
server = Server(sys.argv[1])
app = HttpFrontend(server)
import gc
gc.collect()
gc.freeze()  # the start-up's objects are not scanned again: collections cost what the requests allocate
body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}).encode()
headers = {b"content-type": b"application/json", b"content-length": str(len(body)).encode(), b"host": b"x",
           b"user-agent": b"hey/0.0.1", b"accept-encoding": b"gzip"}
async def main(n):
    for _ in range(n):
        status, _, _ = await app.handle("POST", "/v2/models/mlp/infer", headers, body)
    assert status == 200, status
asyncio.run(main(int(sys.argv[2])))
os._exit(0)
'''


# `--http`: the whole server, sockets included: the driver serves on 127.0.0.1 (inferd's HttpServer, or the floor's
# ASGI app under uvicorn + uvloop + httptools) and starts CLIENT, a plain process outside valgrind, which sends the
# requests over `concurrency` keep-alive connections; the driver stops once the client is done.
HTTP_DRIVER = '''
import asyncio, gc, importlib.util, os, socket, subprocess, sys
repo, count, kind, client, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
if kind == "inferd":
    from inferd import Server
    from inferd.frontends.http import HttpFrontend
    from inferd.frontends.http.server import HttpServer
    import inferd.scheduling.base as scheduling
    scheduling.INLINE_BUDGET_NS = 10**15
    server = Server(repo)
    sock.close()
else:
    os.environ.update(MODEL_REPO=repo, MODELS="mlp", ORT_THREADS="1")
    spec = importlib.util.spec_from_file_location("floor_server", kind)
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    import uvicorn
gc.collect()
gc.freeze()
async def main():
    if kind == "inferd":
        http = HttpServer(HttpFrontend(server), "127.0.0.1", port)
        await http.start()
    else:
        sock.listen(1024)
        config = uvicorn.Config(floor.app, loop="none", http="httptools", access_log=False, log_level="warning",
                                lifespan="off")
        userver = uvicorn.Server(config)
        task = asyncio.create_task(userver.serve(sockets=[sock]))
        while not userver.started:
            await asyncio.sleep(0.01)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-S", client, str(port), count, concurrency)
    assert await proc.wait() == 0
import uvloop
uvloop.run(main())
os._exit(0)
'''

CLIENT = '''
import json, socket, sys, threading
port, count, concurrency = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}).encode()
request = (b"POST /v2/models/mlp/infer HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nUser-Agent: hey/0.0.1\\r\\n"
           b"Content-Type: application/json\\r\\nAccept-Encoding: gzip\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body)
           + body)
def run(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for _ in range(n):
        s.sendall(request)
        while True:
            end = buf.find(b"\\r\\n\\r\\n")
            if end >= 0:
                head = buf[:end].lower()
                if b"content-length: " in head:
                    stop = end + 4 + int(head.split(b"content-length: ")[1].split(b"\\r\\n")[0])
                else:  # chunked (uvicorn, for an app that sets no length): up to the last chunk
                    last = buf.find(b"\\r\\n0\\r\\n\\r\\n", end)
                    stop = last + 7 if last >= 0 else len(buf) + 1
                if len(buf) >= stop:
                    assert head.startswith(b"http/1.1 200"), head
                    buf = buf[stop:]
                    break
            data = s.recv(65536)
            assert data, "the server closed the connection"
            buf += data
    s.close()
    done.append(n)
done = []
threads = [threading.Thread(target=run, args=(count // concurrency + (i < count % concurrency),))
           for i in range(concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.exit(0 if len(done) == concurrency else 1)
'''


def repository(folder: Path) -> Path:
    if not (EXAMPLES / "mlp").is_dir():
        subprocess.run([sys.executable, str(ROOT / "examples" / "build_repository.py"), str(EXAMPLES)], check=True)
    model = folder / "repo" / "mlp"
    (model / "1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "mlp" / "1" / "model.onnx", model / "1" / "model.onnx")
    config = (EXAMPLES / "mlp" / "config.pbtxt").read_text()
    config += '\nparameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    (model / "config.pbtxt").write_text(config)
    return folder / "repo"


def instructions(src: Path | None, repo: Path, driver: Path, count: int, extra: tuple[str, ...] = ()) -> int:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
    if src is not None:
        env["PYTHONPATH"] = str(src)
    # Per-thread counts, and only the main thread's (the event loop, where the request runs): the server's
    # timer threads (scaler, repository poll) wake by the clock, so their count grows with valgrind's wall time,
    # which depends on the machine's load.
    with tempfile.TemporaryDirectory(prefix="inferd-cg-") as tmp:
        out_file = Path(tmp) / "cg.out"
        out = subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                              f"--callgrind-out-file={out_file}", sys.executable, str(driver), str(repo), str(count),
                              *extra],
                             env=env, capture_output=True, text=True, check=True)
        main_thread = next((f for f in Path(tmp).iterdir() if f.name.endswith("-01")), None)
        found = None if main_thread is None else re.search(r"^(?:summary|totals): (\d+)", main_thread.read_text(),
                                                           re.M)
    if found is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another tree's src/ to compare with")
    parser.add_argument("--now-src", type=Path, default=None,
                        help="the tree to count as 'now' (default: the venv's inferd, this checkout); a copy of src/ "
                             "lets the tree be edited while the count runs")
    parser.add_argument("--requests", type=int, default=1000, help="N: the requests whose cost is counted")
    parser.add_argument("--warmup", type=int, default=200, help="N0: requests in both runs (start-up, warm-up)")
    parser.add_argument("--http", action="store_true",
                        help="count the whole server over real sockets (HTTP parsing, the event loop's I/O) instead "
                             "of HttpFrontend.handle in-process; adds the floor server (../shared/bench-peers) as a "
                             "row when it is there")
    parser.add_argument("--concurrency", type=int, default=8, help="--http: keep-alive connections (default 8)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    trees: list[tuple[str, Path | None]] = [("now", args.now_src.resolve() if args.now_src else None)]
    if args.baseline_src is not None:
        trees.insert(0, ("baseline", args.baseline_src.resolve()))
    floor = HARNESS_FLOOR if args.http and HARNESS_FLOOR.is_file() else None
    with tempfile.TemporaryDirectory(prefix="inferd-instr-") as tmp:
        folder = Path(tmp)
        repo = repository(folder)
        driver = folder / "driver.py"
        driver.write_text(HTTP_DRIVER if args.http else DRIVER)
        client = folder / "client.py"
        client.write_text(CLIENT)
        extra: dict[str, tuple[str, ...]] = {label: ("inferd", str(client), str(args.concurrency)) if args.http
                                             else () for label, _ in trees}
        if floor is not None:
            trees.append(("floor", None))
            extra["floor"] = (str(floor), str(client), str(args.concurrency))
        jobs = [(label, src, n) for label, src in trees for n in (args.warmup, args.warmup + args.requests)]
        with ThreadPoolExecutor(max_workers=1) as pool:  # one at a time: the counts must not depend on timing
            counts = list(pool.map(lambda job: instructions(job[1], repo, driver, job[2], extra[job[0]]), jobs))
    per_request = {label: (counts[2 * i + 1] - counts[2 * i]) / args.requests for i, (label, _) in enumerate(trees)}
    what = (f"the whole server's main thread over HTTP, {args.concurrency} keep-alive connections" if args.http
            else "HttpFrontend.handle in-process")
    print(f"| tree | instructions per request (V2 JSON, mlp, {what}) |")
    print("|---|---|")
    for label, value in per_request.items():
        print(f"| {label} | {value:,.0f} |")
    if "baseline" in per_request:
        print(f"\nnow / baseline: {per_request['now'] / per_request['baseline']:.4f}")
    if "floor" in per_request:
        print(f"\nnow / floor: {per_request['now'] / per_request['floor']:.4f}")
    print(f"\ncommand: {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
