"""Triton's dynamic batcher (scheduling/batcher.py) as its callers see it, in milliseconds: no sockets, no runtime.

A fake model instance records every batch it executes (by the tag in column 0 of each row) and can be held: a
batch holding a HOLD row waits at the model's gate until the test opens it. With the only instance held, the test
knows every request it sends is waiting in the queue. Order comes from events and futures, never from sleeping.

Queue policies (timeouts, REJECT / DELAY, overrides, max queue size) are in test_queue_policy.py and the direct
scheduler in test_direct_scheduler.py; both share the fake model and the helpers of this module.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelDynamicBatching

from inferd.config import ModelConfig
from inferd.scheduling import BackendFailure, DynamicBatcher, InstancePool, Job, Scheduler, Tensors
from inferd.types import ErrorKind, InferError

HOLD = -1  # a batch holding a row with this tag waits at the gate
FAIL = -2  # a batch holding a row with this tag raises
WAIT_S = 10.0  # how long anything waits for an event before the test fails instead of hanging


class FakeModel:
    """What the instances of one test model do: OUTPUT0 = 2 * INPUT0, and a record of each batch's row tags."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[list[int]] = []
        self._lock = threading.Lock()
        self._held = threading.Semaphore(0)
        self._held_on_loop = False

    def instance(self) -> FakeInstance:
        return FakeInstance(self)

    async def held(self) -> None:
        """Until one more execution is held at the gate."""
        assert await asyncio.to_thread(self._held.acquire, True, WAIT_S), "no execution was held at the gate"
        assert not self._held_on_loop, "a long execution ran on the event loop: nothing else could run meanwhile"

    def execute(self, x: np.ndarray) -> Tensors:
        tags = [int(tag) for tag in x[:, 0]]
        if FAIL in tags:
            raise RuntimeError("the model\n  failed")
        if HOLD in tags:
            held_on_loop = _on_event_loop()
            self._held_on_loop |= held_on_loop
            self._held.release()
            if held_on_loop:  # waiting here would stop the very loop that is to open the gate
                raise RuntimeError("a held execution ran on the event loop")
            if not self.gate.wait(WAIT_S):
                raise RuntimeError("the test never opened the gate")
        with self._lock:
            self.batches.append(tags)
        return {"OUTPUT0": 2 * x}


class FakeInstance:
    """One instance of a FakeModel, as the Backend contract has it."""

    releases_gil = True

    def __init__(self, model: FakeModel) -> None:
        self.model = model

    def autocomplete(self, config: ModelConfig, files: object) -> ModelConfig:
        return config

    def load(self, config: ModelConfig, files: object, device: str) -> None:
        pass

    def execute(self, inputs: Tensors) -> Tensors:
        return self.model.execute(inputs["INPUT0"])

    def unload(self) -> None:
        pass


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class MakeBatcher(Protocol):
    def __call__(self, dynamic_batching: str = "", *, max_batch_size: int = 8, instances: int = 1) -> DynamicBatcher:
        ...


class Batchers:
    """DynamicBatchers over FakeModel instances, closed together at the end of a test."""

    def __init__(self, model: FakeModel) -> None:
        self.model = model
        self.made: list[DynamicBatcher] = []

    def make(self, dynamic_batching: str = "", *, max_batch_size: int = 8, instances: int = 1) -> DynamicBatcher:
        """A batcher from the body of a `dynamic_batching { }` block, as the model manager builds one."""
        pool = InstancePool([self.model.instance() for _ in range(instances)], None)
        config = text_format.Parse(dynamic_batching, ModelDynamicBatching())
        self.made.append(DynamicBatcher(pool, "fake-1", max_batch_size, config))
        return self.made[-1]

    def close(self) -> None:
        self.model.gate.set()
        for batcher in self.made:
            batcher.close()


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def make_batcher(model: FakeModel) -> Iterator[MakeBatcher]:
    batchers = Batchers(model)
    yield batchers.make
    batchers.close()


def rows(tag: int, count: int = 1, width: int = 4) -> np.ndarray:
    """FP32 [count, width]; column 0 holds the tag, the rest tells the rows of one caller apart."""
    x = np.arange(count * width, dtype=np.float32).reshape(count, width) + 1
    x[:, 0] = tag
    return x


def job(scheduler: Scheduler, tag: int, count: int = 1, *, priority: int = 0, timeout_us: int = 0,
        width: int = 4) -> Job:
    x = rows(tag, count, width)
    return scheduler.make_job({"INPUT0": x}, count, priority, timeout_us)


async def send(scheduler: Scheduler, *jobs: Job) -> list[asyncio.Task[Tensors]]:
    """Start the requests in this order and return once the scheduler has every one of them.

    `run` hands a job over before it first waits; asyncio runs the tasks created here, in order, before this
    coroutine resumes from its one yield.
    """
    tasks = [asyncio.ensure_future(scheduler.run(j)) for j in jobs]
    await asyncio.sleep(0)
    return tasks


async def hold(scheduler: Scheduler, model: FakeModel, count: int = 1, priority: int = 0) -> asyncio.Task[Tensors]:
    """Send a request of `count` rows and return once an instance is executing it, held at the gate."""
    [blocker] = await send(scheduler, job(scheduler, HOLD, count, priority=priority))
    await model.held()
    return blocker


async def finishing_order(tasks: dict[str, asyncio.Task[Tensors]]) -> list[str]:
    """Wait for every task; their names in the order they finished (as their callers would see the answers)."""
    order: list[str] = []

    async def one(name: str, task: asyncio.Task[Tensors]) -> None:
        await task
        order.append(name)

    await asyncio.gather(*(one(name, task) for name, task in tasks.items()))
    return order


def answer_of(result: Tensors | BaseException, tag: int, count: int = 1, width: int = 4) -> None:
    """The caller got its own rows back: OUTPUT0 = 2 * its input."""
    assert not isinstance(result, BaseException), repr(result)
    np.testing.assert_array_equal(result["OUTPUT0"], 2 * rows(tag, count, width))


async def warm_up(scheduler: Scheduler, model: FakeModel) -> None:
    """Run quick requests until the model counts as cheap (the case the event loop path is for)."""
    for tag in range(200):
        if scheduler.pool.cheap:
            model.batches.clear()
            return
        answer_of(await scheduler.run(job(scheduler, 1000 + tag)), 1000 + tag)
    pytest.fail("the fake model never counted as cheap")


# ---- forming batches ----

async def test_a_backlog_is_split_into_batches_of_at_most_max_batch_size(make_batcher: MakeBatcher,
                                                                         model: FakeModel) -> None:
    batcher = make_batcher(max_batch_size=4)
    blocker = await hold(batcher, model)
    tasks = await send(batcher, *(job(batcher, tag) for tag in range(10)))
    model.gate.set()
    results = await asyncio.gather(*tasks)
    answer_of(await blocker, HOLD)
    for tag, result in enumerate(results):
        answer_of(result, tag)
    assert model.batches == [[HOLD], [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_a_batch_counts_rows_not_requests(make_batcher: MakeBatcher, model: FakeModel) -> None:
    """Requests of 3 rows with max_batch_size 8: two fit in a batch, a third does not; a 2-row one still does."""
    batcher = make_batcher(max_batch_size=8)
    blocker = await hold(batcher, model)
    sizes = {0: 3, 1: 3, 2: 3, 3: 2}
    tasks = await send(batcher, *(job(batcher, tag, count) for tag, count in sizes.items()))
    model.gate.set()
    for (tag, count), result in zip(sizes.items(), await asyncio.gather(*tasks), strict=True):
        answer_of(result, tag, count)
    await blocker
    assert model.batches == [[HOLD], [0, 0, 0, 1, 1, 1, 3, 3], [2, 2, 2]]


async def test_requests_of_different_shapes_are_not_batched_together(make_batcher: MakeBatcher,
                                                                     model: FakeModel) -> None:
    batcher = make_batcher(max_batch_size=8)
    blocker = await hold(batcher, model)
    widths = {0: 5, 1: 3, 2: 5, 3: 3, 4: 5}
    tasks = await send(batcher, *(job(batcher, tag, width=width) for tag, width in widths.items()))
    model.gate.set()
    for (tag, width), result in zip(widths.items(), await asyncio.gather(*tasks), strict=True):
        answer_of(result, tag, width=width)
    await blocker
    assert model.batches == [[HOLD], [0, 2, 4], [1, 3]]  # the oldest request's shape first


async def test_the_preferred_batch_size_runs_without_waiting_for_the_delay(make_batcher: MakeBatcher,
                                                                           model: FakeModel) -> None:
    """A queue delay of an hour: four requests make the preferred size, so they run at once, as one batch."""
    batcher = make_batcher("preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 3600000000")
    tasks = await send(batcher, *(job(batcher, tag) for tag in range(4)))
    for tag, result in enumerate(await asyncio.gather(*tasks)):
        answer_of(result, tag)
    assert model.batches == [[0, 1, 2, 3]]


async def test_a_backlog_is_cut_at_the_largest_preferred_size_that_fits(make_batcher: MakeBatcher,
                                                                         model: FakeModel) -> None:
    """Seven queued, preferred sizes 2 and 4, a long delay: a batch of 4 runs; the other 3 wait (for the delay,
    or for a fourth request, which completes a preferred batch)."""
    batcher = make_batcher("preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 3600000000")
    blocker = await hold(batcher, model, 4)  # a preferred size of its own: it runs without waiting
    tasks = await send(batcher, *(job(batcher, tag) for tag in range(7)))
    model.gate.set()
    for tag, result in enumerate(await asyncio.gather(*tasks[:4])):
        answer_of(result, tag)
    assert not any(task.done() for task in tasks[4:])
    tasks += await send(batcher, job(batcher, 7))
    for tag, result in enumerate(await asyncio.gather(*tasks[4:]), start=4):
        answer_of(result, tag)
    answer_of(await blocker, HOLD, 4)
    assert model.batches == [[HOLD] * 4, [0, 1, 2, 3], [4, 5, 6, 7]]


async def test_a_lone_request_runs_once_the_delay_is_over(make_batcher: MakeBatcher, model: FakeModel) -> None:
    batcher = make_batcher("preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 1000")
    answer_of(await batcher.run(job(batcher, 7)), 7)
    assert model.batches == [[7]]


async def test_a_cheap_model_batches_requests_that_arrive_together(make_batcher: MakeBatcher,
                                                                   model: FakeModel) -> None:
    """Plain `dynamic_batching { }`: requests sent in the same event loop iteration share one execution."""
    batcher = make_batcher(max_batch_size=8)
    await warm_up(batcher, model)
    tasks = await send(batcher, *(job(batcher, tag) for tag in range(10)))
    for tag, result in enumerate(await asyncio.gather(*tasks)):
        answer_of(result, tag)
    assert model.batches == [list(range(8)), [8, 9]]


async def test_every_instance_takes_batches_from_the_one_queue(make_batcher: MakeBatcher, model: FakeModel) -> None:
    batcher = make_batcher(max_batch_size=2, instances=2)
    first = await hold(batcher, model)
    second = await hold(batcher, model)  # both instances are now held
    tasks = await send(batcher, *(job(batcher, tag) for tag in range(4)))
    model.gate.set()
    for tag, result in enumerate(await asyncio.gather(*tasks)):
        answer_of(result, tag)
    await first
    await second
    assert sorted(batch for batch in model.batches if batch != [HOLD]) == [[0, 1], [2, 3]]


# ---- priorities ----

PRIORITIES = "priority_levels: 2 default_priority_level: 2"


@pytest.mark.parametrize("cheap", [False, True], ids=["slow model", "cheap model"])
async def test_queued_high_priority_requests_run_before_queued_low_priority_ones(
        make_batcher: MakeBatcher, model: FakeModel, cheap: bool) -> None:
    """One instance, one request per batch: a long request runs, 4 requests at priority 2 are sent, then 4 at
    priority 1. All four high-priority requests run before any low-priority one, however cheap the model
    usually is (a cheap model must not run a request past the queue, nor hold the event loop with a long one)."""
    batcher = make_batcher(PRIORITIES, max_batch_size=1)
    if cheap:
        await warm_up(batcher, model)
    blocker = await hold(batcher, model)
    tags = {**{f"low-{i}": 10 + i for i in range(4)}, **{f"high-{i}": 20 + i for i in range(4)}}
    sent = await send(batcher, *(job(batcher, tag, priority=1 if tag >= 20 else 2) for tag in tags.values()))
    tasks = dict(zip(tags, sent, strict=True))
    model.gate.set()
    assert await finishing_order({"blocker": blocker, **tasks}) == [
        "blocker", "high-0", "high-1", "high-2", "high-3", "low-0", "low-1", "low-2", "low-3"]
    answer_of(blocker.result(), HOLD)
    for name, task in tasks.items():
        answer_of(task.result(), tags[name])


@pytest.mark.parametrize("dynamic_batching", [
    "priority_levels: 2",
    "max_queue_delay_microseconds: 1",
    "default_queue_policy { max_queue_size: 100 }",
    "default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 3600000000 }",
    "default_queue_policy { allow_timeout_override: true }",
    "priority_levels: 2 priority_queue_policy { key: 2 value { max_queue_size: 100 } }",
], ids=["priorities", "queue delay", "max queue size", "DELAY timeout", "timeout override", "level policy"])
async def test_a_cheap_model_with_queue_rules_runs_every_request_through_the_queue(
        make_batcher: MakeBatcher, model: FakeModel, dynamic_batching: str) -> None:
    """Where the queue has rules (priorities, a delay, a queue policy), a long request of a model that is usually
    cheap runs on an instance thread like any other: the event loop goes on taking requests, which wait their turn
    in the queue."""
    batcher = make_batcher(dynamic_batching, max_batch_size=1)
    await warm_up(batcher, model)
    blocker = await hold(batcher, model)
    first, second = await send(batcher, job(batcher, 1), job(batcher, 2))
    model.gate.set()
    assert await finishing_order({"blocker": blocker, "first": first, "second": second}) == [
        "blocker", "first", "second"]
    answer_of(blocker.result(), HOLD)
    answer_of(first.result(), 1)
    answer_of(second.result(), 2)


async def test_a_request_without_a_valid_priority_gets_the_default_level(make_batcher: MakeBatcher,
                                                                         model: FakeModel) -> None:
    """As in Triton: no priority (0), or one above priority_levels, means default_priority_level (here the low 2)."""
    batcher = make_batcher(PRIORITIES, max_batch_size=1)
    blocker = await hold(batcher, model)
    tasks = await send(batcher, job(batcher, 1, priority=0), job(batcher, 2, priority=7),
                       job(batcher, 3, priority=2), job(batcher, 4, priority=1))
    model.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert model.batches == [[HOLD], [4], [1], [2], [3]]


async def test_a_batch_is_filled_from_the_highest_priority_first(make_batcher: MakeBatcher,
                                                                 model: FakeModel) -> None:
    batcher = make_batcher(PRIORITIES, max_batch_size=4)
    blocker = await hold(batcher, model)
    interleaved = [job(batcher, 10 + i // 2, priority=2) if i % 2 == 0 else job(batcher, 20 + i // 2, priority=1)
                   for i in range(10)]
    tasks = await send(batcher, *interleaved)
    model.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert model.batches == [[HOLD], [20, 21, 22, 23], [24, 10, 11, 12], [13, 14]]


async def test_a_request_from_a_worker_thread_waits_in_the_same_queue(make_batcher: MakeBatcher,
                                                                      model: FakeModel) -> None:
    """`run_sync` (a Python model's BLS call, on a thread of its own) queues behind the executing request."""
    batcher = make_batcher(PRIORITIES, max_batch_size=1)
    blocker = await hold(batcher, model)
    caller = asyncio.ensure_future(asyncio.to_thread(batcher.run_sync, job(batcher, 5, priority=1)))
    model.gate.set()
    answer_of(await caller, 5)
    await blocker
    assert model.batches == [[HOLD], [5]]


# ---- cancellation, failures, unloading ----

async def test_a_cancelled_request_leaves_the_queue_without_running(make_batcher: MakeBatcher,
                                                                    model: FakeModel) -> None:
    batcher = make_batcher(max_batch_size=1)
    blocker = await hold(batcher, model)
    before, doomed, after = await send(batcher, job(batcher, 1), job(batcher, 2), job(batcher, 3))
    doomed.cancel()
    model.gate.set()
    answer_of(await before, 1)
    answer_of(await after, 3)
    await blocker
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert model.batches == [[HOLD], [1], [3]]


async def test_a_cancelled_request_of_a_cheap_model_does_not_run(make_batcher: MakeBatcher,
                                                                 model: FakeModel) -> None:
    batcher = make_batcher(max_batch_size=8)
    await warm_up(batcher, model)
    kept, doomed = await send(batcher, job(batcher, 1), job(batcher, 2))
    doomed.cancel()
    answer_of(await kept, 1)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert model.batches == [[1]]


async def test_a_failing_batch_fails_only_its_own_requests(make_batcher: MakeBatcher, model: FakeModel) -> None:
    batcher = make_batcher(max_batch_size=2)
    blocker = await hold(batcher, model)
    tasks = await send(batcher, job(batcher, 1), job(batcher, FAIL), job(batcher, 3))
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await blocker
    for failed in results[:2]:
        assert isinstance(failed, BackendFailure)
        assert str(failed) == "RuntimeError: the model failed"  # on one line, with its type, as a status message
    answer_of(results[2], 3)


async def test_unloading_finishes_queued_requests_and_refuses_new_ones(make_batcher: MakeBatcher,
                                                                       model: FakeModel) -> None:
    batcher = make_batcher(max_batch_size=1)
    blocker = await hold(batcher, model)
    tasks = await send(batcher, job(batcher, 1), job(batcher, 2))
    closing = asyncio.ensure_future(asyncio.to_thread(batcher.close))
    model.gate.set()
    await closing
    answer_of(await tasks[0], 1)
    answer_of(await tasks[1], 2)
    await blocker
    with pytest.raises(InferError) as refused:
        await batcher.run(job(batcher, 3))
    assert refused.value.kind is ErrorKind.UNAVAILABLE
    assert "is unloading and takes no new requests" in refused.value.message
    assert model.batches == [[HOLD], [1], [2]]
