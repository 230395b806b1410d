"""Instructions per request of the HTTP app in-process, counted by valgrind's callgrind: a figure that does not
drift with the machine's load, for comparing two trees to the percent (hey on a shared 2-core VM cannot).

    .venv/bin/python benchmarks/bench_instructions.py [--baseline-src /tmp/inferd-base/src] [--requests 1000]

Builds a one-model repository (the example mlp: 64 -> 10, ONNX Runtime on one thread, no batching), then for each
tree runs `HttpFrontend.handle` on a V2 JSON request N0 and N0 + N times under callgrind; the difference over N is
what one request costs, start-up excluded. The model runs inline on the event loop, as a real machine runs this
model (under valgrind's slowness the cost estimate would otherwise flip between inline and thread hand-offs).
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


def instructions(src: Path | None, repo: Path, driver: Path, count: int) -> int:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
    if src is not None:
        env["PYTHONPATH"] = str(src)
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                          str(driver), str(repo), str(count)], env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another tree's src/ to compare with")
    parser.add_argument("--requests", type=int, default=1000, help="N: the requests whose cost is counted")
    parser.add_argument("--warmup", type=int, default=200, help="N0: requests in both runs (start-up, warm-up)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    trees: list[tuple[str, Path | None]] = [("now", None)]
    if args.baseline_src is not None:
        trees.insert(0, ("baseline", args.baseline_src.resolve()))
    with tempfile.TemporaryDirectory(prefix="inferd-instr-") as tmp:
        folder = Path(tmp)
        repo = repository(folder)
        driver = folder / "driver.py"
        driver.write_text(DRIVER)
        jobs = [(label, src, n) for label, src in trees for n in (args.warmup, args.warmup + args.requests)]
        with ThreadPoolExecutor(max_workers=1) as pool:  # one at a time: the counts must not depend on timing
            counts = list(pool.map(lambda job: instructions(job[1], repo, driver, job[2]), jobs))
    per_request = {label: (counts[2 * i + 1] - counts[2 * i]) / args.requests for i, (label, _) in enumerate(trees)}
    print("| tree | instructions per request (V2 JSON, mlp, HttpFrontend.handle in-process) |")
    print("|---|---|")
    for label, value in per_request.items():
        print(f"| {label} | {value:,.0f} |")
    if "baseline" in per_request:
        print(f"\nnow / baseline: {per_request['now'] / per_request['baseline']:.4f}")
    print(f"\ncommand: {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
