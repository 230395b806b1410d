"""The graph engine's overhead: mlp called directly vs through a one-step ensemble, a three-step ensemble and a
one-node Seldon graph, at c=1 and c=8, over V2 HTTP (JSON) and gRPC, in one run on one server.

The three-step ensemble is `pad` (an ONNX Identity on the 64 inputs) → mlp → `trim` (an ONNX Identity on the 10
outputs), so it does the work of mlp plus two near-free models: what it adds is the engine's cost of two more
steps. The Seldon graph is a SeldonDeployment (the repository's `deployments/` folder) whose one MODEL node is mlp.
Prints one table: req/s, p50, p99, the throughput as a share of the direct call's (same protocol and
concurrency), and the p50 added per step (the three-step ensemble's extra over the one-step ensemble, halved;
the one-step ensemble's over direct).

Usage::

    python benchmarks/bench_graphs.py [--duration 5] [--concurrency 1,8] [--protocols http-json,grpc]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_core as core  # the shared server start, loaders and percentiles

DIRECT = "mlp"
ONE_STEP = "mlp_ensemble_1"
THREE_STEP = "mlp_ensemble_3"
SELDON = "mlp_seldon_graph"
TARGETS = {ONE_STEP: 1, THREE_STEP: 3, SELDON: 1}


def identity_model(name: str, width: int) -> bytes:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", width])
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], name, [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write(repo: Path, name: str, config: str, model: bytes | None = None) -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    if model is not None:
        (folder / "1" / "model.onnx").write_bytes(model)


def io(kind: str, name: str, width: int) -> str:
    return f'{kind} [ {{ name: "{name}" data_type: TYPE_FP32 dims: [ {width} ] }} ]'


def step(model: str, inputs: str, outputs: str) -> str:
    (mi, ei), (mo, eo) = inputs.split("="), outputs.split("=")
    return (f'{{ model_name: "{model}" model_version: -1 input_map {{ key: "{mi}" value: "{ei}" }} '
            f'output_map {{ key: "{mo}" value: "{eo}" }} }}')


def build(repo: Path, source: Path) -> None:
    shutil.copytree(source / DIRECT, repo / DIRECT)
    batch = "max_batch_size: 256"
    write(repo, "pad", f'platform: "onnxruntime_onnx"\n{batch}\n{io("input", "X", 64)}\n{io("output", "Y", 64)}\n',
          identity_model("pad", 64))
    write(repo, "trim", f'platform: "onnxruntime_onnx"\n{batch}\n{io("input", "X", 10)}\n{io("output", "Y", 10)}\n',
          identity_model("trim", 10))
    ensemble_io = f'{io("input", "INPUT0", 64)}\n{io("output", "OUTPUT0", 10)}'
    write(repo, ONE_STEP, f'platform: "ensemble"\n{batch}\n{ensemble_io}\nensemble_scheduling {{ step [ '
          f'{step(DIRECT, "INPUT0=INPUT0", "OUTPUT0=OUTPUT0")} ] }}\n')
    steps = ", ".join([step("pad", "X=INPUT0", "Y=padded"), step(DIRECT, "INPUT0=padded", "OUTPUT0=scores"),
                       step("trim", "X=scores", "Y=OUTPUT0")])
    write(repo, THREE_STEP,
          f'platform: "ensemble"\n{batch}\n{ensemble_io}\nensemble_scheduling {{ step [ {steps} ] }}\n')
    deployments = repo / "deployments"
    deployments.mkdir()
    (deployments / f"{SELDON}.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: machinelearning.seldon.io/v1
        kind: SeldonDeployment
        metadata:
          name: {SELDON}
        spec:
          predictors:
            - name: default
              graph:
                name: {DIRECT}
                type: MODEL
                children: []
        """))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per point (default 5)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--protocols", type=lambda s: s.split(","), default=["http-json", "grpc"])
    p.add_argument("--loader-procs", type=int, default=2, help="processes of the Python loaders (default 2)")
    p.add_argument("--only", type=lambda s: s.split(","), default=None, help="measure only these targets")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None else [sys.executable, sys.argv[0], *argv])
    source = core.DEFAULT_REPO
    if not (source / DIRECT).is_dir():
        subprocess.run([sys.executable, str(core.BUILD_SCRIPT), str(source)], check=True, timeout=900)
    hey = shutil.which("hey")
    rows: list[core.Result] = []
    with tempfile.TemporaryDirectory(prefix="bench_graphs_") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        repo.mkdir()
        build(repo, source)
        ports = (core.free_port(), core.free_port(), core.free_port())
        base = f"http://{core.HOST}:{ports[0]}"
        models = [DIRECT, ONE_STEP, THREE_STEP]
        with core.run_server(repo, models, ports, tmp / "server.log") as pid:
            targets = [DIRECT, ONE_STEP, THREE_STEP] if not args.only else args.only
            if args.only is not None:
                pass
            elif core.http_get(f"{base}/v2/models/{SELDON}/ready")[0] == 200:
                targets.append(SELDON)
            else:
                print(f"{SELDON} is not ready: skipped", file=sys.stderr)
            inputs = core.model_inputs(base, DIRECT)
            for protocol in args.protocols:
                for c in args.concurrency:
                    for model in targets:
                        rows.append(point(model, protocol, c, inputs, ports, args, hey, tmp, pid))
    print()
    print(table(rows))
    print()
    print(f"Machine: {core.machine_info()}. HTTP loader: {'hey' if hey else 'Python aiohttp'}; gRPC loader: "
          f"{args.loader_procs} Python grpc.aio processes. Server CPU: cores busy during the point.")
    print(f"Command: {command}")
    return 0


def point(model: str, protocol: str, c: int, inputs: Sequence[core.Input], ports: tuple[int, int, int],
          args: argparse.Namespace, hey: str | None, tmp: Path, pid: int) -> core.Result:
    url = f"http://{core.HOST}:{ports[0]}/v2/models/{model}/infer"
    server0 = core.process_cpu_s(pid)
    if protocol == "grpc":
        payload = core.grpc_request(model, inputs)
        lats, errors, wall, _, note = core.python_load("grpc", f"{core.HOST}:{ports[1]}", payload, {}, c,
                                                       args.duration, args.loader_procs)
    else:
        body = core.json_body(inputs)
        headers = {"Content-Type": "application/json"}
        status, answer = core.http_post(url, body, headers)
        if status != 200:
            raise RuntimeError(f"{model}: HTTP {status} {answer[:300]!r}")
        if hey:
            path = tmp / f"{model}.json"
            path.write_bytes(body)
            lats, errors, wall, _, note = core.hey_load(url, path, headers, c, args.duration)
        else:
            lats, errors, wall, _, note = core.python_load("http", url, body, headers, c, args.duration,
                                                           args.loader_procs)
    server1 = core.process_cpu_s(pid)
    p50, p99 = core.percentiles(lats)
    cpu = None if server0 is None or server1 is None else (server1 - server0) / wall
    row = core.Result(model, protocol, c, lats.size / wall, p50, p99, errors, None, cpu, note)
    print(f"{model} {protocol} c={c}: {row.rps:.0f} req/s p50 {core.fmt(p50, 3)} ms errors {errors} {note}",
          file=sys.stderr, flush=True)
    return row


def table(rows: Sequence[core.Result]) -> str:
    direct = {(r.protocol, r.concurrency): r for r in rows if r.model == DIRECT}
    one = {(r.protocol, r.concurrency): r for r in rows if r.model == ONE_STEP}
    lines = ["| protocol | c | target | req/s | p50 ms | p99 ms | errors | server CPU | % of direct "
             "| p50 added per step µs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = (r.protocol, r.concurrency)
        base = direct.get(key)
        share = f"{100 * r.rps / base.rps:.0f}%" if base is not None and base.rps else "-"
        added = "-"
        if r.model in (ONE_STEP, SELDON) and base is not None:
            added = f"{(r.p50_ms - base.p50_ms) * 1000:.0f}"
        elif r.model == THREE_STEP and key in one:
            added = f"{(r.p50_ms - one[key].p50_ms) * 1000 / 2:.0f}"
        lines.append(f"| {r.protocol} | {r.concurrency} | {r.model} | {r.rps:.0f} | {core.fmt(r.p50_ms, 3)} | "
                     f"{core.fmt(r.p99_ms, 3)} | {r.errors} | {core.fmt(r.server_cpu)} | {share} | {added} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
