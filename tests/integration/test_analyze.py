"""`inferd analyze` against a live server in explicit mode: a bounded quick search over a small MLP finishes, its
Pareto set is what the measurements say, and the config it writes loads and serves.

Timings are not asserted (they are benchmarks/bench_analyze.py's business): only the sweep's structure.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferd.cli import main
from inferd.config import config_to_json, parse_config
from inferd.tools.analyze import AnalyzeResult
from models import make_model, write_model
from serving import INFERD, ServerProcess, start_server

NAME = "mlp"
CONFIG = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
PROBE_S = "0.3"


def mlp() -> bytes:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w0"),
               numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w1")]
    nodes = [helper.make_node("MatMul", ["INPUT0", "w0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["OUTPUT0"])]
    return make_model(nodes, [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
                      [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])], weights)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("analyze") / "models"
    write_model(repo, NAME, mlp(), CONFIG)
    process = start_server(repo, tmp_path_factory.mktemp("analyze-logs") / "inferd.log",
                           "--model-control-mode", "explicit")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def analyzed(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[AnalyzeResult, str, Path]:
    """One bounded quick search (one instance, max batch 1/4/8, 0.3 s probes), run as the command is."""
    from inferd.cli import build_parser
    from inferd.tools.analyze import analyze, options_from_args

    folder = tmp_path_factory.mktemp("analyze-out")
    args = build_parser().parse_args(["analyze", "-m", NAME, "-u", f"127.0.0.1:{server.http_port}",
                                      "--max-instances", "1", "--probe-seconds", PROBE_S,
                                      "--output", str(folder / "best.pbtxt"), "--plot", str(folder / "sweep.png")])
    printed = io.StringIO()
    result = analyze(options_from_args(args), printed)
    return result, printed.getvalue(), folder


def test_the_sweep_measures_part_of_the_grid_and_confirms_the_finalists(analyzed: tuple[AnalyzeResult, str,
                                                                                        Path]) -> None:
    result, printed, _ = analyzed
    grid_points = set(result.grid.points())
    assert result.grid.max_batch_sizes == (1, 4, 8) and result.grid.instances == (1,)
    assert 0 < len(result.search.probes) < len(grid_points)
    assert {m.point for m in result.search.probes} <= grid_points
    assert all(m.errors == 0 for m in result.measured)
    start = result.search.start
    assert start is not None and start.point.config.max_batch_size == 8  # the model's own config, measured again
    assert start.point in {m.point for m in result.search.confirmed}
    assert result.search.best is not None and result.search.best in result.search.confirmed
    assert result.search.best.throughput >= start.throughput
    assert f"measured {len(result.search.probes)} point(s) and confirmed {len(result.search.confirmed)}" in printed
    assert "model's own config:" in printed and "best:" in printed


def test_the_pareto_table_is_the_undominated_measurements(analyzed: tuple[AnalyzeResult, str, Path]) -> None:
    result, printed, _ = analyzed
    front = result.front
    assert front and set(m.point for m in front) <= {m.point for m in result.measured}
    assert [m.throughput for m in front] == sorted((m.throughput for m in front), reverse=True)
    assert all(a.p99_ms > b.p99_ms for a, b in itertools.pairwise(front))  # faster costs latency along the front
    for m in front:  # nothing measured is both faster and quicker to answer
        assert not any(o.throughput > m.throughput and o.p99_ms < m.p99_ms for o in result.measured)
    table = printed.split("Pareto set")[1].split("\n\n")[0].splitlines()[1:]
    assert table[0].split()[:2] == ["instances", "max"]
    assert len(table) == 1 + len(front)
    best = result.search.best
    assert best is not None
    # the best is on the front, unless the confirmations ran out with a short probe still ahead of it
    confirmed = {m.point for m in result.search.confirmed}
    assert best in front or all(m.point not in confirmed for m in front if m.throughput > best.throughput)


def test_the_best_config_is_written_and_loads(server: ServerProcess,
                                              analyzed: tuple[AnalyzeResult, str, Path]) -> None:
    result, printed, folder = analyzed
    assert result.search.best is not None
    written = parse_config((folder / "best.pbtxt").read_text())
    best = result.search.best.point.config
    assert written.max_batch_size == best.max_batch_size
    assert sum(g.count for g in written.instance_group) == best.instances
    assert f"wrote {folder / 'best.pbtxt'}" in printed
    load = httpx.post(f"{server.base_url}/v2/repository/models/{NAME}/load",
                      json={"parameters": {"config": json.dumps(config_to_json(written))}}, timeout=60)
    assert load.status_code == 200, load.text
    assert httpx.get(f"{server.base_url}/v2/models/{NAME}/ready", timeout=30).status_code == 200
    served = httpx.get(f"{server.base_url}/v2/models/{NAME}/config", timeout=30).json()
    assert served["max_batch_size"] == best.max_batch_size
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    assert httpx.post(f"{server.base_url}/v2/models/{NAME}/infer", json=body, timeout=30).status_code == 200


def test_the_plot_is_a_png(analyzed: tuple[AnalyzeResult, str, Path]) -> None:
    _, _, folder = analyzed
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_server_not_in_explicit_mode_is_one_line_and_exit_2(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, NAME, mlp(), CONFIG)
    process = start_server(repo, tmp_path / "inferd.log")
    try:
        run = subprocess.run([str(INFERD), "analyze", "-m", NAME, "-u", f"127.0.0.1:{process.http_port}"],
                             capture_output=True, text=True, timeout=60)
    finally:
        process.stop()
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"inferd analyze: cannot load '{NAME}'")
    assert "explicit model load / unload is not allowed" in lines[0]


def test_the_command_line_reaches_the_search(server: ServerProcess, tmp_path: Path) -> None:
    """`inferd analyze` over gRPC with a budget nobody can meet: the sweep runs, nothing qualifies, exit 1."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["analyze", "-m", NAME, "-i", "grpc", "-u", f"127.0.0.1:{server.grpc_port}",
                       "--max-instances", "1", "--probe-seconds", "0.2", "--latency-budget-ms", "0.001"])
    assert status == 1, out.getvalue()
    assert "no config met the constraints (p99 within 0.001 ms)" in out.getvalue()
