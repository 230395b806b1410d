"""A model's `request_timeout_ms` in the schedulers (scheduling/base.py), with test_batcher.py's fake model: its
instances are threads, which cannot be stopped, so the waiting request fails at the deadline while the held
execution goes on; and the parameter's parsing (model_limits.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator

import pytest
from google.protobuf import text_format
from test_batcher import HOLD, FakeModel, answer_of, hold, job, send
from tritonclient.grpc.model_config_pb2 import ModelDynamicBatching

from inferd.config import ConfigError, ModelConfig
from inferd.model_limits import memory_limit_bytes, request_timeout_ms
from inferd.observability import ModelStatistics
from inferd.scheduling import DirectScheduler, DynamicBatcher, InstancePool, Scheduler
from inferd.types import ErrorKind, InferError

TIMEOUT_MS = 150


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture(params=["direct", "batcher"])
def scheduler(request: pytest.FixtureRequest, model: FakeModel) -> Iterator[Scheduler]:
    pool = InstancePool([model.instance(), model.instance()], ModelStatistics("slow", "1"), TIMEOUT_MS)
    made: Scheduler
    if request.param == "direct":
        made = DirectScheduler(pool, "slow-1")
    else:
        made = DynamicBatcher(pool, "slow-1", 8, text_format.Parse("", ModelDynamicBatching()))
    yield made
    model.gate.set()
    made.close()


def _timed_out(error: BaseException | None) -> None:
    assert isinstance(error, InferError), repr(error)
    assert error.kind == ErrorKind.DEADLINE_EXCEEDED
    assert error.message == f"model 'slow' did not answer within {TIMEOUT_MS} ms (request_timeout_ms)"


async def test_a_held_request_fails_at_the_deadline_and_others_answer(scheduler: Scheduler,
                                                                      model: FakeModel) -> None:
    start = time.monotonic()
    blocker = await hold(scheduler, model)
    [quick] = await send(scheduler, job(scheduler, 1))
    answer_of(await quick, 1)  # the other instance answers meanwhile
    await asyncio.wait([blocker], timeout=5)
    assert blocker.done()
    assert TIMEOUT_MS / 1000 <= time.monotonic() - start < 2.0
    _timed_out(blocker.exception())
    model.gate.set()  # the thread goes on; its late answer goes nowhere


async def test_time_in_the_queue_counts(scheduler: Scheduler, model: FakeModel) -> None:
    first = await hold(scheduler, model)
    second = await hold(scheduler, model)
    [queued] = await send(scheduler, job(scheduler, 7))  # no instance free: it waits, and times out waiting
    done, _ = await asyncio.wait([first, second, queued], timeout=5)
    assert len(done) == 3
    for task in (first, second, queued):
        _timed_out(task.exception())
    model.gate.set()
    await asyncio.sleep(0.2)
    assert [7] not in model.batches  # nobody waited for it any more: it never ran
    assert model.batches.count([HOLD]) == 2


def test_a_synchronous_caller_fails_at_the_deadline(scheduler: Scheduler, model: FakeModel) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(scheduler.run_sync, job(scheduler, HOLD))
        error = future.exception(timeout=5)
    _timed_out(error)
    model.gate.set()
    answer_of(scheduler.run_sync(job(scheduler, 3)), 3)


def _config(key: str, value: str) -> ModelConfig:
    config = ModelConfig()
    config.parameters[key].string_value = value
    return config


def test_the_parameters_are_positive_integers() -> None:
    assert request_timeout_ms(ModelConfig()) == 0
    assert request_timeout_ms(_config("request_timeout_ms", "500")) == 500
    assert memory_limit_bytes(_config("instance_memory_limit_bytes", " 300_000_000 ")) == 300_000_000
    for value in ("", "0", "-5", "1.5", "soon"):
        with pytest.raises(ConfigError, match="parameter 'request_timeout_ms' must be a positive integer"):
            request_timeout_ms(_config("request_timeout_ms", value))
