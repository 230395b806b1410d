"""Dynamic batching as a user sees it: through the statistics extension, the answers each caller gets, and the
order requests finish in. Timing is never asserted; only counts, contents and order.

Two kinds of model:

* `busy_*` ONNX models (tests/batching_models.py) served by a real `inferd serve`: every execution takes a while,
  so concurrent requests pile up in the shared queue and the batcher has something to batch;
* `rec_*` models of the recording test backend (tests/recording_backend.py) served in-process, for the cases
  that need exact control: a gate holds the only instance busy while the test fills the queue, and the backend
  records every batch it executes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

import inferd
from batching_models import add_busy
from clients import make_input, simple_data, simple_inputs
from inferd.types import InferenceRequest
from models import SIMPLE_CONFIG, simple_model, write_model
from observing import batch_counts, counts_delta, in_completion_order, metric, model_stats, scrape
from recording_backend import recorder, registered, write_recording_model
from serving import ServerProcess, start_server

CHEAP = "simple_dynamic"  # Triton's `simple` with `dynamic_batching { }`: a model cheap enough to run inline
PREFERRED = "busy_preferred"  # preferred batch size 4, a long queue delay
LONE = "busy_lone"  # preferred batch size 4, a short queue delay
GREEDY = "busy_greedy"  # no preferred size, no delay: an idle instance takes whatever is queued
VARDIMS = "busy_vardims"  # INPUT0 dims [-1]: requests of different lengths must not share a batch
PRIORITY = "busy_priority"  # two priority levels, one request per batch
BOUNDED = "busy_bounded"  # max_queue_size 2
REJECT = "busy_reject"  # queue timeout 50 ms, REJECT
DELAY = "busy_delay"  # queue timeout 50 ms, DELAY
OVERRIDE = "busy_override"  # queue timeout 10 s, REJECT, the request's `timeout` may override it
OVERRIDE_SHORT = "busy_override_short"  # queue timeout 50 ms, REJECT, the request's `timeout` may override it

FAST_TRIPS = 150  # about 20 ms of work per execution on a laptop core
SLOW_TRIPS = 1200  # about 150 ms: long enough that a whole burst of requests arrives while one executes
SLOWER_TRIPS = 2500  # where a test needs every request of a burst queued behind the one executing

ONE_AT_A_TIME = {"max_batch_size": 1}  # every execution is one request, so finishing order is execution order


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("batching") / "models"
    repo.mkdir(parents=True)
    cheap_config = SIMPLE_CONFIG.replace('name: "simple"', f'name: "{CHEAP}"') + "dynamic_batching { }\n"
    write_model(repo, CHEAP, simple_model(), cheap_config)
    add_busy(repo, PREFERRED, FAST_TRIPS,
             dynamic_batching="preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 5000000")
    add_busy(repo, LONE, FAST_TRIPS,
             dynamic_batching="preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 200000")
    add_busy(repo, GREEDY, SLOW_TRIPS, dynamic_batching="")
    add_busy(repo, VARDIMS, FAST_TRIPS, dims=-1,
             dynamic_batching="preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 300000")
    add_busy(repo, PRIORITY, SLOWER_TRIPS, **ONE_AT_A_TIME,
             dynamic_batching="priority_levels: 2 default_priority_level: 2")
    add_busy(repo, BOUNDED, SLOW_TRIPS, **ONE_AT_A_TIME,
             dynamic_batching="default_queue_policy { max_queue_size: 2 }")
    add_busy(repo, REJECT, SLOWER_TRIPS, **ONE_AT_A_TIME,
             dynamic_batching="default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 50000 }")
    add_busy(repo, DELAY, SLOW_TRIPS, **ONE_AT_A_TIME,
             dynamic_batching="default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 50000 }")
    add_busy(repo, OVERRIDE, SLOWER_TRIPS, **ONE_AT_A_TIME,
             dynamic_batching="default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 10000000 "
                              "allow_timeout_override: true }")
    add_busy(repo, OVERRIDE_SHORT, SLOWER_TRIPS, **ONE_AT_A_TIME,
             dynamic_batching="default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 50000 "
                              "allow_timeout_override: true }")
    process = start_server(repo, tmp_path_factory.mktemp("logs") / "inferd-batching.log")
    yield process
    process.stop()


def _rows(rows: int, tag: int, width: int = 4) -> np.ndarray:
    """FP32 [rows, width] of small integers (exact in float32); column 0 holds `tag`, distinct per caller."""
    x = (np.arange(rows * width, dtype=np.float32).reshape(rows, width) % 97) + 1
    x[:, 0] = tag
    return x


def _busy_input(x: np.ndarray, module: Any = httpclient) -> list[Any]:
    return [make_input(module, "INPUT0", x, "FP32")]


def _check_busy(result: Any, x: np.ndarray, outputs: tuple[str, ...] = ("OUTPUT0", "OUTPUT1")) -> None:
    """The caller got its own rows: OUTPUT0 = 2 * x, OUTPUT1 = x + 1, and only the outputs it asked for."""
    response = result.get_response()
    names = [o["name"] for o in response["outputs"]] if isinstance(response, dict) else \
        [o.name for o in response.outputs]
    assert sorted(names) == sorted(outputs)
    if "OUTPUT0" in outputs:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
    if "OUTPUT1" in outputs:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x + 1)


async def _gather_settled(*calls: Any) -> list[Any]:
    """Every call's result or its InferenceServerException, in call order."""
    return list(await asyncio.gather(*calls, return_exceptions=True))


def _split(results: list[Any]) -> tuple[list[Any], list[InferenceServerException]]:
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        assert isinstance(error, InferenceServerException), repr(error)
    return [r for r in results if not isinstance(r, BaseException)], errors  # type: ignore[misc]


# ---- batching through the shared queue (a busy model) ----

async def test_concurrent_requests_are_batched_to_the_preferred_size(batching_server: ServerProcess) -> None:
    before = model_stats(batching_server.base_url, PREFERRED)
    xs = [_rows(1, tag) for tag in range(16)]
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        results = await asyncio.gather(*(client.infer(PREFERRED, _busy_input(x)) for x in xs))
    for x, result in zip(xs, results, strict=True):
        _check_busy(result, x)
    delta = counts_delta(before, model_stats(batching_server.base_url, PREFERRED))
    assert delta["success"] == 16
    assert delta["inference_count"] == 16
    # Sixteen single requests, preferred size 4 and a queue delay far longer than they take to arrive.
    assert delta["batches"] == {4: 4}
    assert delta["execution_count"] == 4


async def test_batches_never_exceed_max_batch_size(batching_server: ServerProcess) -> None:
    before = model_stats(batching_server.base_url, GREEDY)
    xs = [_rows(1 + i % 3, tag=i) for i in range(24)]  # 1, 2 or 3 rows: 3 + 3 + 3 would not fit in 8
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        results = await asyncio.gather(*(client.infer(GREEDY, _busy_input(x)) for x in xs))
    for x, result in zip(xs, results, strict=True):
        _check_busy(result, x)
    after = model_stats(batching_server.base_url, GREEDY)
    delta = counts_delta(before, after)
    rows = sum(len(x) for x in xs)
    assert delta["success"] == len(xs)
    assert delta["inference_count"] == rows
    assert sum(size * n for size, n in delta["batches"].items()) == rows
    assert sum(delta["batches"].values()) == delta["execution_count"]
    assert max(batch_counts(after)) <= 8
    # The first request runs alone while the rest arrive and queue up behind it; those are batched.
    assert delta["execution_count"] < len(xs)


async def test_a_lone_request_runs_alone_after_the_queue_delay(batching_server: ServerProcess) -> None:
    before = model_stats(batching_server.base_url, LONE)
    x = _rows(1, tag=7)
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        _check_busy(await client.infer(LONE, _busy_input(x)), x)
    delta = counts_delta(before, model_stats(batching_server.base_url, LONE))
    assert delta == {"success": 1, "fail": 0, "inference_count": 1, "execution_count": 1, "batches": {1: 1}}


async def test_cheap_model_batches_inline_with_each_callers_rows(batching_server: ServerProcess) -> None:
    """`dynamic_batching { }` on a model that takes microseconds: batching happens on the event loop."""
    before = model_stats(batching_server.base_url, CHEAP)
    warm = simple_data(1, seed=1)
    http_client = aiohttpclient.InferenceServerClient(batching_server.http_url)
    grpc_client = aiogrpcclient.InferenceServerClient(batching_server.grpc_url)
    try:
        for _ in range(40):  # the server measures the model's cost first; after this it counts as cheap
            result = await http_client.infer(CHEAP, simple_inputs(httpclient, *warm))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), warm[0] + warm[1])
        cases = []
        for i in range(48):
            a, b = simple_data(1 + i % 4, seed=100 + i)
            a[:, 0] = i
            cases.append((a, b))
        calls = [
            http_client.infer(CHEAP, simple_inputs(httpclient, a, b)) if i % 2 == 0
            else grpc_client.infer(CHEAP, simple_inputs(grpcclient, a, b))
            for i, (a, b) in enumerate(cases)
        ]
        results = await asyncio.gather(*calls)
    finally:
        await http_client.close()
        await grpc_client.close()
    for (a, b), result in zip(cases, results, strict=True):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    after = model_stats(batching_server.base_url, CHEAP)
    delta = counts_delta(before, after)
    rows = 40 + sum(len(a) for a, _ in cases)
    assert delta["success"] == 40 + len(cases)
    assert delta["fail"] == 0
    assert delta["inference_count"] == rows
    assert sum(size * n for size, n in delta["batches"].items()) == rows
    assert delta["execution_count"] <= 40 + len(cases)
    assert max(batch_counts(after)) <= 8


# ---- splitting a batch back into each caller's answer ----

async def test_callers_in_one_batch_get_only_the_outputs_they_asked_for(batching_server: ServerProcess) -> None:
    before = model_stats(batching_server.base_url, PREFERRED)
    wanted = [("OUTPUT0",), ("OUTPUT1",), ("OUTPUT0",), ("OUTPUT1",)]
    xs = [_rows(1, tag=100 + i) for i in range(len(wanted))]
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        results = await asyncio.gather(*(
            client.infer(PREFERRED, _busy_input(x), outputs=[httpclient.InferRequestedOutput(n) for n in names])
            for x, names in zip(xs, wanted, strict=True)))
    for x, names, result in zip(xs, wanted, results, strict=True):
        _check_busy(result, x, names)
    delta = counts_delta(before, model_stats(batching_server.base_url, PREFERRED))
    assert delta["batches"] == {4: 1}  # all four shared one execution


async def test_requests_of_different_shapes_are_not_batched_together(batching_server: ServerProcess) -> None:
    before = model_stats(batching_server.base_url, VARDIMS)
    xs = [_rows(1, tag=i, width=3 if i % 2 else 5) for i in range(8)]  # interleaved: [1, 5], [1, 3], ...
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        results = await asyncio.gather(*(client.infer(VARDIMS, _busy_input(x)) for x in xs))
    for x, result in zip(xs, results, strict=True):
        assert result.as_numpy("OUTPUT0").shape == x.shape
        _check_busy(result, x)
    delta = counts_delta(before, model_stats(batching_server.base_url, VARDIMS))
    assert delta["success"] == 8
    assert delta["inference_count"] == 8
    assert delta["execution_count"] >= 2  # two shapes: at least one execution each
    assert all(size <= 4 for size in delta["batches"])  # four requests of each shape at most


# ---- priorities ----

async def test_higher_priority_requests_run_first(batching_server: ServerProcess) -> None:
    """One slow instance: a blocker runs while low-priority requests (sent first) and high-priority requests
    queue; every high-priority request finishes before any low-priority one."""
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        calls = [("blocker", client.infer(PRIORITY, _busy_input(_rows(1, 0))))]
        calls += [(f"low-{i}", client.infer(PRIORITY, _busy_input(_rows(1, 10 + i)), priority=2)) for i in range(3)]
        calls += [(f"high-{i}", client.infer(PRIORITY, _busy_input(_rows(1, 20 + i)), priority=1))
                  for i in range(3)]
        order, _ = await in_completion_order(calls)
    queued = [tag for tag in order if tag != "blocker"]
    assert [tag.split("-")[0] for tag in queued] == ["high"] * 3 + ["low"] * 3, order


# ---- queue policy ----

async def test_max_queue_size_rejects_with_unavailable(batching_server: ServerProcess) -> None:
    before = model_stats(batching_server.base_url, BOUNDED)
    xs = [_rows(1, tag=i) for i in range(12)]
    http_client = aiohttpclient.InferenceServerClient(batching_server.http_url)
    grpc_client = aiogrpcclient.InferenceServerClient(batching_server.grpc_url)
    try:
        results = await _gather_settled(*(
            http_client.infer(BOUNDED, _busy_input(x)) if i % 2 == 0
            else grpc_client.infer(BOUNDED, _busy_input(x, grpcclient))
            for i, x in enumerate(xs)))
    finally:
        await http_client.close()
        await grpc_client.close()
    # One request executes, two wait in the queue: a burst of twelve cannot all be admitted.
    answered, errors = _split(results)
    assert errors
    for i, (x, result) in enumerate(zip(xs, results, strict=True)):
        if isinstance(result, InferenceServerException):
            assert "Exceeds maximum queue size" in result.message(), result.message()
            assert result.status() == ("503" if i % 2 == 0 else "StatusCode.UNAVAILABLE"), result.status()
        else:
            _check_busy(result, x)
    delta = counts_delta(before, model_stats(batching_server.base_url, BOUNDED))
    assert delta["success"] == len(answered)
    assert delta["fail"] == len(errors)
    samples = scrape(batching_server.metrics_port)
    assert metric(samples, "nv_inference_request_failure", model=BOUNDED, version="1",
                  reason="REJECTED") == len(errors)
    assert metric(samples, "nv_inference_request_success", model=BOUNDED, version="1") == len(answered)


async def test_queue_timeout_reject(batching_server: ServerProcess) -> None:
    """Requests that wait in the queue past the 50 ms default timeout are rejected, not run."""
    xs = [_rows(1, tag=i) for i in range(4)]
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        results = await _gather_settled(*(client.infer(REJECT, _busy_input(x)) for x in xs))
    answered, errors = _split(results)
    assert errors  # everything behind the first request waited for at least one execution
    for x, result in zip(xs, results, strict=True):
        if isinstance(result, InferenceServerException):
            assert result.status() == "503"
            assert "Request timeout expired" in result.message(), result.message()
        else:
            _check_busy(result, x)
    stats = model_stats(batching_server.base_url, REJECT)
    assert stats["inference_stats"]["fail"]["count"] == len(errors)
    assert stats["inference_count"] == len(answered)


async def test_queue_timeout_delay_still_runs_the_request(batching_server: ServerProcess) -> None:
    xs = [_rows(1, tag=i) for i in range(4)]
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        results = await asyncio.gather(*(client.infer(DELAY, _busy_input(x)) for x in xs))
    for x, result in zip(xs, results, strict=True):
        _check_busy(result, x)
    stats = model_stats(batching_server.base_url, DELAY)
    assert stats["inference_stats"]["success"]["count"] == 4
    assert stats["inference_stats"]["fail"]["count"] == 0


async def test_request_timeout_overrides_a_longer_default(batching_server: ServerProcess) -> None:
    """allow_timeout_override: a request's `timeout` (µs) shorter than the 10 s default applies to it."""
    before = model_stats(batching_server.base_url, OVERRIDE)
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        # The default 10 s is far more than four executions take: every request runs.
        xs = [_rows(1, tag=i) for i in range(4)]
        for x, result in zip(xs, await asyncio.gather(*(client.infer(OVERRIDE, _busy_input(x)) for x in xs)),
                             strict=True):
            _check_busy(result, x)
        # With a 20 ms timeout of their own, the requests that wait behind another one are rejected.
        results = await _gather_settled(*(client.infer(OVERRIDE, _busy_input(x), timeout=20_000) for x in xs))
    _, errors = _split(results)
    assert errors
    for error in errors:
        assert error.status() == "503"
        assert "Request timeout expired" in error.message(), error.message()
    delta = counts_delta(before, model_stats(batching_server.base_url, OVERRIDE))
    assert delta["success"] == 8 - len(errors)
    assert delta["fail"] == len(errors)


async def test_request_timeout_over_grpc_overrides_the_default(batching_server: ServerProcess) -> None:
    xs = [_rows(1, tag=i) for i in range(4)]
    client = aiogrpcclient.InferenceServerClient(batching_server.grpc_url)
    try:
        results = await _gather_settled(*(client.infer(OVERRIDE, _busy_input(x, grpcclient), timeout=20_000)
                                          for x in xs))
    finally:
        await client.close()
    _, errors = _split(results)
    assert errors
    for error in errors:
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert "Request timeout expired" in error.message(), error.message()


async def test_request_timeout_cannot_extend_the_default(batching_server: ServerProcess) -> None:
    """Triton's allow_timeout_override lets a request shorten the default timeout but "may not increase" it:
    asking for 30 s does not save requests from the 50 ms default."""
    xs = [_rows(1, tag=i) for i in range(4)]
    async with aiohttpclient.InferenceServerClient(batching_server.http_url) as client:
        results = await _gather_settled(*(client.infer(OVERRIDE_SHORT, _busy_input(x), timeout=30_000_000)
                                          for x in xs))
    _, errors = _split(results)
    assert errors, "a request's timeout extended the model's default queue timeout"
    for error in errors:
        assert "Request timeout expired" in error.message(), error.message()


# ---- exact batches, in-process with the recording backend ----

REC_PRIORITY = "rec_priority"
REC_PRIORITY_BATCH = "rec_priority_batch"
REC_SHAPES = "rec_shapes"
REC_BACKLOG = "rec_backlog"


@pytest.fixture(scope="module")
def recording_sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[inferd.Server]:
    repo = tmp_path_factory.mktemp("recording") / "models"
    write_recording_model(repo, REC_PRIORITY, max_batch_size=1, gated=True,
                          dynamic_batching="priority_levels: 2 default_priority_level: 2")
    write_recording_model(repo, REC_PRIORITY_BATCH, max_batch_size=4, gated=True,
                          dynamic_batching="priority_levels: 2 default_priority_level: 2")
    write_recording_model(repo, REC_SHAPES, max_batch_size=8, dims=-1, gated=True)
    write_recording_model(repo, REC_BACKLOG, max_batch_size=4, gated=True)
    with registered(), inferd.Server(model_repository=repo) as server:
        yield server


def _request(model: str, x: np.ndarray, **parameters: Any) -> InferenceRequest:
    return InferenceRequest(model, {"INPUT0": x}, {"INPUT0": "FP32"}, parameters=parameters)


async def _wait_pending(sdk: inferd.Server, model: str, count: int) -> None:
    """Until `count` requests of the model are in the server (executing or queued); bounded."""
    for _ in range(1000):
        pending = [s.pending for s in sdk.model_statistics() if s.name == model]
        if pending == [count]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{model}: never {count} pending requests (now {pending})")


async def _hold_instance(sdk: inferd.Server, model: str) -> asyncio.Task[Any]:
    """Send a request and wait until the model's only instance is executing it (and held there by the gate)."""
    blocker = asyncio.ensure_future(sdk.infer_request(_request(model, _rows(1, tag=-1))))
    assert await asyncio.to_thread(recorder(model).wait_started), "the blocker never started executing"
    return blocker


async def test_priority_order_with_a_held_instance(recording_sdk: inferd.Server) -> None:
    blocker = await _hold_instance(recording_sdk, REC_PRIORITY)
    calls = []
    for i in range(4):  # interleaved, low first
        calls.append((f"low-{i}", recording_sdk.infer_request(_request(REC_PRIORITY, _rows(1, 10 + i), priority=2))))
        calls.append((f"high-{i}", recording_sdk.infer_request(_request(REC_PRIORITY, _rows(1, 20 + i), priority=1))))
    finishing = asyncio.ensure_future(in_completion_order(calls))
    await _wait_pending(recording_sdk, REC_PRIORITY, 9)
    recorder(REC_PRIORITY).gate.set()
    order, results = await finishing
    await blocker
    assert order == [f"high-{i}" for i in range(4)] + [f"low-{i}" for i in range(4)]
    for tag, response in results.items():
        expected = (20 if tag.startswith("high") else 10) + int(tag.split("-")[1])
        assert response.outputs["OUTPUT0"][0, 0] == 2 * expected
    executed = [e.tags for e in recorder(REC_PRIORITY).executions]
    assert executed == [[-1], [20], [21], [22], [23], [10], [11], [12], [13]]


async def test_a_batch_is_filled_from_the_highest_priority(recording_sdk: inferd.Server) -> None:
    blocker = await _hold_instance(recording_sdk, REC_PRIORITY_BATCH)
    calls = []
    for i in range(4):
        calls.append(recording_sdk.infer_request(_request(REC_PRIORITY_BATCH, _rows(1, 10 + i))))  # default: low
        calls.append(recording_sdk.infer_request(_request(REC_PRIORITY_BATCH, _rows(1, 20 + i), priority=1)))
    finishing = asyncio.ensure_future(asyncio.gather(*calls))
    await _wait_pending(recording_sdk, REC_PRIORITY_BATCH, 9)
    recorder(REC_PRIORITY_BATCH).gate.set()
    await finishing
    await blocker
    executed = [e.tags for e in recorder(REC_PRIORITY_BATCH).executions]
    assert executed == [[-1], [20, 21, 22, 23], [10, 11, 12, 13]]


async def test_queued_requests_of_different_shapes_form_separate_batches(recording_sdk: inferd.Server) -> None:
    blocker = await _hold_instance(recording_sdk, REC_SHAPES)
    xs = [_rows(1 + i % 2, tag=i, width=3 if i % 2 else 5) for i in range(6)]
    finishing = asyncio.ensure_future(asyncio.gather(*(
        recording_sdk.infer_request(_request(REC_SHAPES, x)) for x in xs)))
    await _wait_pending(recording_sdk, REC_SHAPES, 7)
    recorder(REC_SHAPES).gate.set()
    responses = await finishing
    await blocker
    for x, response in zip(xs, responses, strict=True):
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], 2 * x)
        np.testing.assert_array_equal(response.outputs["OUTPUT1"], x + 1)
    executions = recorder(REC_SHAPES).executions[1:]
    # Oldest first: the width-5 requests (rows 1) form one batch, the width-3 requests (rows 2) the other.
    assert [(e.shape, e.tags) for e in executions] == [((3, 5), [0, 2, 4]), ((6, 3), [1, 1, 3, 3, 5, 5])]
    stats = recording_sdk.statistics(REC_SHAPES)["model_stats"][0]
    assert batch_counts(stats) == {1: 1, 3: 1, 6: 1}


async def test_a_backlog_is_split_into_batches_of_at_most_max_batch_size(recording_sdk: inferd.Server) -> None:
    blocker = await _hold_instance(recording_sdk, REC_BACKLOG)
    xs = [_rows(1, tag=i) for i in range(10)]
    finishing = asyncio.ensure_future(asyncio.gather(*(
        recording_sdk.infer_request(_request(REC_BACKLOG, x)) for x in xs)))
    await _wait_pending(recording_sdk, REC_BACKLOG, 11)
    recorder(REC_BACKLOG).gate.set()
    responses = await finishing
    await blocker
    for x, response in zip(xs, responses, strict=True):
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], 2 * x)
    executed = [e.tags for e in recorder(REC_BACKLOG).executions]
    assert executed == [[-1], [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    stats = recording_sdk.statistics(REC_BACKLOG)["model_stats"][0]
    assert stats["inference_count"] == 11
    assert stats["execution_count"] == 4
    assert batch_counts(stats) == {1: 1, 2: 1, 4: 2}
