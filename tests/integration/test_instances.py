"""`instance_group { count: N }`: N copies of a model execute at the same time, never more.

The recording test backend (tests/recording_backend.py) notes on which thread, from when to when, every
execution ran; its executions sleep, which releases the GIL as ONNX Runtime does. Served in-process through the
`inferd.Server` SDK, with and without dynamic batching.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

import inferd
from recording_backend import Execution, recorder, registered, write_recording_model

SLEEP_MS = 300  # each execution's "work": long enough that concurrent requests are in flight together

TWO_DIRECT = "rec_two_direct"  # two instances, no dynamic batching
TWO_BATCHED = "rec_two_batched"  # two instances sharing one dynamic-batching queue, one request per batch
FOUR_REQUESTS_TWO_INSTANCES = "rec_two_of_four"
ONE_INSTANCE = "rec_one"


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[inferd.Server]:
    repo = tmp_path_factory.mktemp("instances") / "models"
    write_recording_model(repo, TWO_DIRECT, instances=2, sleep_ms=SLEEP_MS, dynamic_batching=None)
    write_recording_model(repo, TWO_BATCHED, instances=2, sleep_ms=SLEEP_MS, max_batch_size=1)
    write_recording_model(repo, FOUR_REQUESTS_TWO_INSTANCES, instances=2, sleep_ms=SLEEP_MS, dynamic_batching=None)
    write_recording_model(repo, ONE_INSTANCE, instances=1, sleep_ms=SLEEP_MS / 3, dynamic_batching=None)
    with registered(), inferd.Server(model_repository=repo) as server:
        yield server


def _inputs(tag: int) -> dict[str, np.ndarray]:
    return {"INPUT0": np.full((1, 4), tag, dtype=np.float32)}


async def _run_concurrently(sdk: inferd.Server, model: str, count: int) -> list[Execution]:
    responses = await asyncio.gather(*(sdk.infer_async(model, _inputs(i)) for i in range(count)))
    for i, response in enumerate(responses):
        np.testing.assert_array_equal(response.outputs["OUTPUT0"], np.full((1, 4), 2 * i, dtype=np.float32))
    return list(recorder(model).executions)


def _most_at_once(executions: list[Execution]) -> int:
    """The largest number of executions in progress at one moment."""
    events = sorted([(e.start, 1) for e in executions] + [(e.end, -1) for e in executions])
    running = most = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1): touching is not overlapping
        running += step
        most = max(most, running)
    return most


@pytest.mark.parametrize("model", [TWO_DIRECT, TWO_BATCHED], ids=["direct", "dynamic-batching"])
async def test_two_instances_execute_concurrently(sdk: inferd.Server, model: str) -> None:
    executions = await _run_concurrently(sdk, model, 2)
    assert len(executions) == 2
    first, second = executions
    assert first.thread != second.thread
    assert first.overlaps(second), executions
    stats = sdk.statistics(model)["model_stats"][0]
    assert stats["execution_count"] == 2
    assert stats["inference_stats"]["success"]["count"] == 2


async def test_no_more_executions_at_once_than_instances(sdk: inferd.Server) -> None:
    executions = await _run_concurrently(sdk, FOUR_REQUESTS_TWO_INSTANCES, 4)
    assert len(executions) == 4
    assert _most_at_once(executions) == 2
    assert len({e.thread for e in executions}) >= 2


async def test_one_instance_executes_one_request_at_a_time(sdk: inferd.Server) -> None:
    executions = await _run_concurrently(sdk, ONE_INSTANCE, 3)
    assert len(executions) == 3
    assert _most_at_once(executions) == 1
