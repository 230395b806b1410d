"""`inferd bench` against a live server: its request count is the server's statistics delta, over HTTP and gRPC.

A server of its own (not the session one) so no other test's traffic lands in the statistics it compares.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.utils import shared_memory as shm

from inferd.client import add_bench_parser
from inferd.client._inputs import InputSpec, TensorData, build_input_sets, input_specs, parse_shapes
from inferd.client._loadgen import StepPlan, run_step
from inferd.client._report import histogram, merge_samples
from inferd.client._shm import system_shared_memory
from inferd.client.bench import parse_range
from models import SIMPLE, SIMPLE_STRING, SIMPLE_STRING_CONFIG, add_simple, simple_string_model, write_model
from serving import ServerProcess, start_server

STATS_SETTLE_S = 5.0  # statistics may be recorded just after the response leaves; wait for them, never for speed


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("bench-repo") / "models"
    add_simple(repo)
    write_model(repo, SIMPLE_STRING, simple_string_model(), SIMPLE_STRING_CONFIG)
    process = start_server(repo, tmp_path_factory.mktemp("bench-logs") / "inferd.log")
    yield process
    process.stop()


def _bench_args(*argv: str) -> argparse.Namespace:
    """Parse as `inferd bench ...` through a sub-command set, the way cli.py wires it."""
    parser = argparse.ArgumentParser(prog="inferd")
    commands = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(commands)
    return parser.parse_args(["bench", *argv])


def _success_count(server: ServerProcess, model: str) -> int:
    response = httpx.get(f"{server.base_url}/v2/models/{model}/stats", timeout=30)
    assert response.status_code == 200, response.text
    return int(response.json()["model_stats"][0]["inference_stats"]["success"]["count"])


def _wait_for_count(server: ServerProcess, model: str, expected: int) -> int:
    deadline = time.monotonic() + STATS_SETTLE_S
    count = _success_count(server, model)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = _success_count(server, model)
    return count


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("protocol, extra", [
    ("http", ["--binary"]),
    ("grpc", []),
], ids=["http-binary", "grpc"])
def test_request_count_equals_server_statistics_delta(bench_server: ServerProcess, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], protocol: str,
                                                      extra: list[str]) -> None:
    url = bench_server.http_url if protocol == "http" else bench_server.grpc_url
    csv_path = tmp_path / "steps.csv"
    before = _success_count(bench_server, SIMPLE)
    args = _bench_args("-m", SIMPLE, "-u", url, "-i", protocol, "--concurrency-range", "2", "--duration", "2",
                       "--csv", str(csv_path), "--no-progress", *extra)
    assert args.func(args) == 0
    [row] = _rows(csv_path)
    requests = int(row["requests"])
    assert requests > 0
    assert int(row["errors"]) == 0
    assert int(row["successes"]) == requests
    assert row["concurrency"] == "2" and row["protocol"] == protocol
    assert _wait_for_count(bench_server, SIMPLE, before + requests) - before == requests

    out = capsys.readouterr().out
    assert f"Concurrency 2: {requests:,} requests" in out
    assert "p99 ms" in out and "Client CPU" in out
    assert "Latency histogram (ms):" in out and "■" in out


def test_open_loop_sweep_over_processes_with_json_tensors(bench_server: ServerProcess, tmp_path: Path) -> None:
    """Request-rate steps, spread over two worker processes, BYTES as JSON: every request still counted once."""
    csv_path = tmp_path / "steps.csv"
    before = _success_count(bench_server, SIMPLE_STRING)
    args = _bench_args("-m", SIMPLE_STRING, "-u", f"http://{bench_server.http_url}", "--json",
                       "--request-rate-range", "50:100:50", "--duration", "1", "--processes", "2",
                       "--csv", str(csv_path), "--no-progress", "--no-histogram")
    assert args.func(args) == 0
    rows = _rows(csv_path)
    assert [(r["mode"], float(r["request_rate"]), r["processes"]) for r in rows] == [
        ("rate", 50.0, "2"), ("rate", 100.0, "2")]
    assert all(int(r["errors"]) == 0 for r in rows)
    total = sum(int(r["requests"]) for r in rows)
    assert _wait_for_count(bench_server, SIMPLE_STRING, before + total) - before == total


def test_max_requests_bounds_a_step(bench_server: ServerProcess, tmp_path: Path) -> None:
    csv_path = tmp_path / "steps.csv"
    before = _success_count(bench_server, SIMPLE)
    args = _bench_args("-m", SIMPLE, "-u", bench_server.grpc_url, "-i", "grpc", "-b", "4",
                       "--concurrency-range", "1:4:x2", "--duration", "30", "--max-requests", "25",
                       "--csv", str(csv_path), "--no-progress")
    assert args.func(args) == 0
    rows = _rows(csv_path)
    assert [(r["concurrency"], r["requests"], r["batch_size"]) for r in rows] == [
        ("1", "25", "4"), ("2", "25", "4"), ("4", "25", "4")]
    assert _wait_for_count(bench_server, SIMPLE, before + 75) - before == 75


def test_unknown_model_fails_with_its_name(bench_server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    args = _bench_args("-m", "no_such_model", "-u", bench_server.http_url, "--duration", "1")
    assert args.func(args) == 1
    assert "no_such_model" in capsys.readouterr().err


def test_batch_size_above_the_model_maximum_is_refused(bench_server: ServerProcess,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    args = _bench_args("-m", SIMPLE, "-u", bench_server.http_url, "-b", "9", "--duration", "1")
    assert args.func(args) == 1
    assert "max_batch_size 8" in capsys.readouterr().err


# ---- pieces without a server ----

@pytest.mark.parametrize("text, expected", [
    ("8", (8,)),
    ("1:4", (1, 2, 3, 4)),
    ("1:32:2", tuple(range(1, 33, 2))),  # perf_analyzer: the step adds
    ("1:32:x2", (1, 2, 4, 8, 16, 32)),
    ("1,8,32", (1, 8, 32)),
])
def test_parse_range(text: str, expected: tuple[int, ...]) -> None:
    assert parse_range(text) == tuple(float(v) for v in expected)


@pytest.mark.parametrize("text", ["0", "4:1", "1:8:0", "1:8:x1", "a", "1:2:3:4"])
def test_parse_range_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_range(text)


def test_input_specs_use_batch_size_and_shape_overrides() -> None:
    metadata = {"name": "m", "inputs": [{"name": "A", "datatype": "FP32", "shape": [-1, -1, 3]},
                                        {"name": "B", "datatype": "BYTES", "shape": ["-1", "2"]}]}
    specs = input_specs(metadata, 8, 4, parse_shapes(["A:5,3"]))
    assert specs == [InputSpec("A", "FP32", (4, 5, 3)), InputSpec("B", "BYTES", (4, 2))]
    [tensors] = build_input_sets(specs, "random", batched=True, string_length=3)
    assert tensors[0].array.shape == (4, 5, 3) and tensors[0].array.dtype == np.float32
    assert tensors[1].array.shape == (4, 2) and all(len(v) == 3 for v in tensors[1].array.flat)
    with pytest.raises(ValueError, match="--shape"):
        input_specs(metadata, 8, 1, {})
    with pytest.raises(ValueError, match="does not batch"):
        input_specs({"inputs": []}, 0, 2, {})


def test_data_file_entries_are_stacked_into_batches(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"data": [{"X": [1, 2]}, {"X": {"content": [3, 4], "shape": [2]}}, {"X": [5, 6]}]}')
    sets = build_input_sets([InputSpec("X", "INT64", (2, 2))], str(path), batched=True)
    assert [s[0].array.tolist() for s in sets] == [[[1, 2], [3, 4]], [[5, 6], [1, 2]], [[3, 4], [5, 6]]]


class _FlakyClient:
    """Every third request fails: the step must count each one exactly once, by message."""

    def __init__(self) -> None:
        self.calls = 0

    async def warm(self, connections: int) -> None:
        return None

    async def infer(self, index: int) -> None:
        self.calls += 1
        number = self.calls
        await asyncio.sleep(0)
        if number % 3 == 0:
            raise RuntimeError("boom")


@pytest.mark.parametrize("plan", [
    StepPlan(mode="concurrency", concurrency=4, duration_s=30, max_requests=30),
    StepPlan(mode="rate", rate=100_000, duration_s=30, max_requests=30),
], ids=["closed", "open"])
def test_failures_are_counted_by_message(plan: StepPlan) -> None:
    client: Any = _FlakyClient()
    sample = asyncio.run(run_step(client, plan))
    assert client.calls == sample.requests == 30
    assert sample.errors == {"RuntimeError: boom": 10}
    result = merge_samples([sample], mode=plan.mode, concurrency=plan.concurrency, rate=plan.rate,
                           protocol="http", batch_size=1)
    assert (result.requests, result.errors, result.successes, result.latencies_ms.size) == (30, 10, 20, 20)


def test_histogram_has_ten_buckets_scaled_to_the_fullest() -> None:
    lines = histogram(np.array([1.0] * 40 + [2.0] * 20 + [10.0])).splitlines()
    assert lines[0] == "Latency histogram (ms):"
    assert len(lines) == 11
    assert lines[1].endswith("|" + "■" * 40) and "[40]" in lines[1]
    assert "[1]" in lines[-1]


def test_tensor_data_pickles_for_worker_processes() -> None:
    import pickle

    tensor = TensorData("X", "BYTES", np.array([b"a", b"b"], dtype=np.object_))
    assert pickle.loads(pickle.dumps(tensor)).array.tolist() == [b"a", b"b"]


class _ShmServer:
    """The calls `--shared-memory system` makes, recorded: inferd has no shared-memory extension yet."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str, int]] = []
        self.unregistered: list[str] = []

    async def get_server_metadata(self) -> dict[str, Any]:
        return {"extensions": ["system_shared_memory"]}

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int) -> None:
        self.registered.append((name, key, byte_size))

    async def unregister_system_shared_memory(self, name: str) -> None:
        self.unregistered.append(name)


def test_shared_memory_places_every_input_in_one_registered_region() -> None:
    sets = [[TensorData("A", "INT32", np.arange(4, dtype=np.int32)),
             TensorData("S", "BYTES", np.array([b"xy", b"z"], dtype=np.object_))],
            [TensorData("A", "INT32", np.arange(4, 8, dtype=np.int32)),
             TensorData("S", "BYTES", np.array([b"", b"abc"], dtype=np.object_))]]
    server = _ShmServer()

    async def place() -> list[list[TensorData]]:
        async with system_shared_memory(server, "http", "localhost:8000", sets) as placed:
            [(name, key, size)] = server.registered
            assert key == f"/{name}" and size == 16 + (4 + 2 + 4 + 1) + 16 + (4 + 0 + 4 + 3)
            handle = shm.create_shared_memory_region(name + "_reader", key, size)
            try:
                for row, original in zip(placed, sets, strict=True):
                    for tensor, data in zip(row, original, strict=True):
                        assert tensor.shm_region == name
                        values = shm.get_contents_as_numpy(handle, data.array.dtype, list(data.array.shape),
                                                           offset=tensor.shm_offset)
                        assert values.tolist() == data.array.tolist()
            finally:
                shm.destroy_shared_memory_region(handle)
            return placed

    placed = asyncio.run(place())
    assert [t.shm_offset for row in placed for t in row] == [0, 16, 27, 43]
    assert server.unregistered == [server.registered[0][0]]
