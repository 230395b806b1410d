"""Triton's queue policy on the dynamic batcher's queue, as callers see it: queue timeouts (REJECT or DELAY), a
request's own timeout (`allow_timeout_override`), and `max_queue_size`, per model and per priority level.

The fake model and helpers are test_batcher.py's: the only instance is held at a gate while the queue fills, so
every request sent is known to be waiting. A timeout is observed by waiting until the clock has passed the
request's deadline (no guessed sleeps); it takes effect when an instance comes free and looks at the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from test_batcher import HOLD, Batchers, FakeModel, MakeBatcher, answer_of, hold, job, send

from inferd.scheduling import Job
from inferd.types import ErrorKind, InferError

HOUR_US = 3_600_000_000
SHORT_US = 1000  # a timeout that has certainly passed once the test has waited for it
# Two levels: level 1 has no policy of its own beyond what a case adds, so the request holding the instance
# (sent at level 1) never times out itself; the requests under test wait at level 2.
TWO_LEVELS = "priority_levels: 2 default_priority_level: 2 priority_queue_policy { key: 1 value { } } "


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def make_batcher(model: FakeModel) -> Iterator[MakeBatcher]:
    batchers = Batchers(model)
    yield batchers.make
    batchers.close()


async def past(*jobs: Job, timeout_us: int = 0) -> None:
    """Until the clock has passed each job's queue deadline (or `timeout_us` after it was made, where the job
    has no deadline because its timeout does not count)."""
    for j in jobs:
        deadline = j.deadline_ns or j.enqueued_ns + timeout_us * 1000
        while (left := deadline - time.perf_counter_ns()) > 0:
            await asyncio.sleep(left / 1e9)


def timed_out(result: object) -> bool:
    """The caller got Triton's queue timeout answer: UNAVAILABLE, "Request timeout expired"."""
    if not isinstance(result, InferError):
        return False
    assert result.kind is ErrorKind.UNAVAILABLE
    assert result.message == "Request timeout expired"
    return True


def queue_full(result: object) -> bool:
    """The caller got Triton's full-queue answer: UNAVAILABLE, "Exceeds maximum queue size"."""
    if not isinstance(result, InferError):
        return False
    assert result.kind is ErrorKind.UNAVAILABLE
    assert result.message.startswith("Exceeds maximum queue size"), result.message
    return True


# ---- queue timeouts ----

async def test_requests_that_wait_past_the_default_timeout_are_rejected(make_batcher: MakeBatcher,
                                                                        model: FakeModel) -> None:
    batcher = make_batcher(TWO_LEVELS + f"default_queue_policy {{ timeout_action: REJECT "
                                        f"default_timeout_microseconds: {SHORT_US} }}", max_batch_size=1)
    blocker = await hold(batcher, model, priority=1)
    late = [job(batcher, 1), job(batcher, 2)]  # level 2: the default policy's timeout
    on_time = job(batcher, 3, priority=1)  # level 1: no timeout
    tasks = await send(batcher, *late, on_time)
    await past(*late)
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [timed_out(r) for r in results] == [True, True, False]
    answer_of(results[2], 3)
    await blocker
    assert model.batches == [[HOLD], [3]]  # the rejected requests never ran


async def test_a_level_can_have_a_timeout_of_its_own(make_batcher: MakeBatcher, model: FakeModel) -> None:
    """priority_queue_policy: level 2's requests time out; level 1 has no policy, so the default (none) holds."""
    batcher = make_batcher("priority_levels: 2 priority_queue_policy { key: 2 value { timeout_action: REJECT "
                           f"default_timeout_microseconds: {SHORT_US} }} }}", max_batch_size=1)
    blocker = await hold(batcher, model, priority=1)
    tasks = await send(batcher, low := job(batcher, 1, priority=2), job(batcher, 2, priority=1))
    await past(low)
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [timed_out(r) for r in results] == [True, False]
    await blocker
    assert model.batches == [[HOLD], [2]]


async def test_delay_moves_timed_out_requests_behind_the_others_and_still_runs_them(
        make_batcher: MakeBatcher, model: FakeModel) -> None:
    batcher = make_batcher(f"default_queue_policy {{ timeout_action: DELAY default_timeout_microseconds: {HOUR_US} "
                           "allow_timeout_override: true }", max_batch_size=1)
    blocker = await hold(batcher, model)
    jobs = [job(batcher, 1, timeout_us=SHORT_US), job(batcher, 2), job(batcher, 3, timeout_us=SHORT_US),
            job(batcher, 4)]
    tasks = await send(batcher, *jobs)
    await past(jobs[0], jobs[2])
    model.gate.set()
    for tag, result in enumerate(await asyncio.gather(*tasks), start=1):
        answer_of(result, tag)  # every request is answered
    await blocker
    assert model.batches == [[HOLD], [2], [4], [1], [3]]  # those still on time first


async def test_a_request_timeout_shortens_the_default_where_overrides_are_allowed(make_batcher: MakeBatcher,
                                                                                  model: FakeModel) -> None:
    batcher = make_batcher(f"default_queue_policy {{ timeout_action: REJECT default_timeout_microseconds: {HOUR_US} "
                           "allow_timeout_override: true }", max_batch_size=1)
    blocker = await hold(batcher, model)
    tasks = await send(batcher, short := job(batcher, 1, timeout_us=SHORT_US), job(batcher, 2))
    await past(short)
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [timed_out(r) for r in results] == [True, False]
    answer_of(results[1], 2)
    await blocker


async def test_a_request_timeout_cannot_extend_the_default(make_batcher: MakeBatcher, model: FakeModel) -> None:
    """Triton: a request's timeout overrides the default only to shorten it; an hour does not save it."""
    batcher = make_batcher(TWO_LEVELS + f"default_queue_policy {{ timeout_action: REJECT "
                                        f"default_timeout_microseconds: {SHORT_US} allow_timeout_override: true }}",
                           max_batch_size=1)
    blocker = await hold(batcher, model, priority=1)
    tasks = await send(batcher, long := job(batcher, 1, timeout_us=HOUR_US))
    await past(long)
    model.gate.set()
    assert timed_out((await asyncio.gather(*tasks, return_exceptions=True))[0])
    await blocker
    assert model.batches == [[HOLD]]


async def test_a_request_timeout_counts_for_nothing_without_allow_timeout_override(
        make_batcher: MakeBatcher, model: FakeModel) -> None:
    batcher = make_batcher("default_queue_policy { timeout_action: REJECT }", max_batch_size=1)
    blocker = await hold(batcher, model)
    tasks = await send(batcher, ignored := job(batcher, 1, timeout_us=SHORT_US))
    await past(ignored, timeout_us=SHORT_US)
    model.gate.set()
    answer_of((await asyncio.gather(*tasks))[0], 1)
    await blocker


# ---- max_queue_size ----

async def test_requests_beyond_max_queue_size_are_rejected_at_once(make_batcher: MakeBatcher,
                                                                   model: FakeModel) -> None:
    """max_queue_size 2: with the instance busy, two requests wait; the next ones are refused without waiting,
    and once the queue has room again a new request is taken."""
    batcher = make_batcher("default_queue_policy { max_queue_size: 2 }", max_batch_size=1)
    blocker = await hold(batcher, model)  # executing, not queued: it does not count
    tasks = await send(batcher, *(job(batcher, tag) for tag in range(1, 5)))
    await asyncio.wait(tasks[2:])  # refused while the instance is still busy...
    assert not any(task.done() for task in tasks[:2])  # ... and the first two still waiting for it
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [queue_full(r) for r in results] == [False, False, True, True]
    answer_of(results[0], 1)
    answer_of(results[1], 2)
    answer_of(await batcher.run(job(batcher, 5)), 5)
    await blocker
    assert model.batches == [[HOLD], [1], [2], [5]]


async def test_max_queue_size_of_one_level_leaves_the_other_levels_alone(make_batcher: MakeBatcher,
                                                                         model: FakeModel) -> None:
    batcher = make_batcher("priority_levels: 2 priority_queue_policy { key: 2 value { max_queue_size: 1 } }",
                           max_batch_size=1)
    blocker = await hold(batcher, model)
    tasks = await send(batcher, job(batcher, 1, priority=2), job(batcher, 2, priority=2),
                       *(job(batcher, tag, priority=1) for tag in (3, 4, 5)))
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [queue_full(r) for r in results] == [False, True, False, False, False]
    await blocker
    assert model.batches == [[HOLD], [3], [4], [5], [1]]
