"""The direct scheduler (no `dynamic_batching`: scheduling/direct.py) as its callers see it, in milliseconds.

Each request runs by itself on an idle instance; a request that finds every instance busy waits for one without
stopping the event loop. The fake model and helpers are test_batcher.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from test_batcher import FAIL, HOLD, FakeModel, answer_of, finishing_order, hold, job, send, warm_up

from inferd.scheduling import BackendFailure, DirectScheduler, InstancePool
from inferd.types import ErrorKind, InferError

MakeScheduler = Callable[..., DirectScheduler]


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def make_scheduler(model: FakeModel) -> Iterator[MakeScheduler]:
    made: list[DirectScheduler] = []

    def make(instances: int = 1) -> DirectScheduler:
        made.append(DirectScheduler(InstancePool([model.instance() for _ in range(instances)], None), "fake-1"))
        return made[-1]

    yield make
    model.gate.set()
    for scheduler in made:
        scheduler.close()


async def test_requests_run_one_by_one_in_the_order_they_came(make_scheduler: MakeScheduler,
                                                              model: FakeModel) -> None:
    scheduler = make_scheduler()
    blocker = await hold(scheduler, model)
    first, second, third = await send(scheduler, job(scheduler, 1), job(scheduler, 2, 3), job(scheduler, 3))
    model.gate.set()
    order = await finishing_order({"blocker": blocker, "first": first, "second": second, "third": third})
    assert order == ["blocker", "first", "second", "third"]
    answer_of(first.result(), 1)
    answer_of(second.result(), 2, 3)
    answer_of(third.result(), 3)
    assert model.batches == [[HOLD], [1], [2, 2, 2], [3]]  # never two requests in one execution


async def test_each_instance_runs_a_request_at_the_same_time(make_scheduler: MakeScheduler,
                                                             model: FakeModel) -> None:
    scheduler = make_scheduler(instances=2)
    first = await hold(scheduler, model)
    second = await hold(scheduler, model)  # held at the same time as the first: two instances at work
    model.gate.set()
    answer_of(await first, HOLD)
    answer_of(await second, HOLD)


async def test_priority_and_queue_timeout_do_not_apply(make_scheduler: MakeScheduler, model: FakeModel) -> None:
    """Without a dynamic batcher there is no queue to order or expire: a request's priority and its timeout
    (here 1 µs, long past when the instance comes free) change nothing."""
    scheduler = make_scheduler()
    blocker = await hold(scheduler, model)
    low, high = await send(scheduler, job(scheduler, 1, priority=2, timeout_us=1),
                           job(scheduler, 2, priority=1, timeout_us=1))
    model.gate.set()
    assert await finishing_order({"blocker": blocker, "low": low, "high": high}) == ["blocker", "low", "high"]
    answer_of(low.result(), 1)
    answer_of(high.result(), 2)


async def test_a_cheap_model_waits_for_its_busy_instance_without_stopping_the_event_loop(
        make_scheduler: MakeScheduler, model: FakeModel) -> None:
    scheduler = make_scheduler()
    await warm_up(scheduler, model)
    # A call from a worker thread (as a Python model's BLS request) holds the only instance.
    holder = asyncio.ensure_future(asyncio.to_thread(scheduler.run_sync, job(scheduler, HOLD)))
    await model.held()
    [waiting] = await send(scheduler, job(scheduler, 1))
    model.gate.set()
    assert await finishing_order({"holder": holder, "waiting": waiting}) == ["holder", "waiting"]
    answer_of(holder.result(), HOLD)
    answer_of(waiting.result(), 1)
    assert model.batches == [[HOLD], [1]]


async def test_a_model_failure_fails_only_its_own_request(make_scheduler: MakeScheduler, model: FakeModel) -> None:
    scheduler = make_scheduler()
    failed, answered = await send(scheduler, job(scheduler, FAIL), job(scheduler, 2))
    with pytest.raises(BackendFailure) as failure:
        await failed
    assert str(failure.value) == "RuntimeError: the model failed"  # on one line, with its type, as a status message
    answer_of(await answered, 2)


async def test_closing_finishes_running_requests_and_refuses_new_ones(make_scheduler: MakeScheduler,
                                                                      model: FakeModel) -> None:
    scheduler = make_scheduler()
    blocker = await hold(scheduler, model)
    closing = asyncio.ensure_future(asyncio.to_thread(scheduler.close))
    model.gate.set()
    await closing
    answer_of(await blocker, HOLD)
    with pytest.raises(InferError) as refused:
        await scheduler.run(job(scheduler, 1))
    assert refused.value.kind is ErrorKind.UNAVAILABLE
    assert "is unloading and takes no new requests" in refused.value.message
    with pytest.raises(InferError, match="is unloading"):
        scheduler.run_sync(job(scheduler, 2))
    assert model.batches == [[HOLD]]


async def test_run_now_answers_a_cheap_model_at_once_and_declines_otherwise(make_scheduler: MakeScheduler,
                                                                            model: FakeModel) -> None:
    """`run_now` (the schedule stage's way to skip a coroutine) runs what `run` would run inline, and nothing else:
    not before the model is known to be cheap, not while its one instance is busy, not once closed."""
    scheduler = make_scheduler()
    assert scheduler.run_now(job(scheduler, 1)) is None  # unknown cost: `run` sends the first one to a thread
    await warm_up(scheduler, model)
    answer_of(scheduler.run_now(job(scheduler, 5, 2)), 5, 2)
    assert model.batches == [[5, 5]]
    # A call from a worker thread (as a Python model's BLS request) holds the only instance.
    holder = asyncio.ensure_future(asyncio.to_thread(scheduler.run_sync, job(scheduler, HOLD)))
    await model.held()
    assert scheduler.run_now(job(scheduler, 6)) is None  # the instance is busy: the caller awaits `run`
    model.gate.set()
    answer_of(await holder, HOLD)
    assert model.batches == [[5, 5], [HOLD]]
    scheduler.close()
    assert scheduler.run_now(job(scheduler, 7)) is None
