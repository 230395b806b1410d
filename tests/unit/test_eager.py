"""start_eagerly: a coroutine that never waits ends on the caller's stack; one that waits goes on in a task that
passes results, exceptions, cancellation and its context through as a task started at the beginning would."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest

from inferd.frontends.eager import start_eagerly

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("eager_test", default="")
needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 starts the coroutine in a task")


@needs_311
async def test_a_coroutine_that_does_not_wait_ends_at_once_without_a_task() -> None:
    done = []

    async def quick() -> None:
        done.append(asyncio.current_task())

    assert start_eagerly(asyncio.get_running_loop(), quick()) is None
    assert len(done) == 1  # ran before start_eagerly returned, on the caller's stack (the test's task)


async def test_a_waiting_coroutine_goes_on_in_a_task_with_the_results_it_awaits() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    failing: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def waits() -> None:
        seen.append(await future)
        seen.append(await asyncio.sleep(0, "slept"))
        try:
            await failing
        except KeyError as exc:
            seen.append(exc.args[0])

    task = start_eagerly(loop, waits())
    assert task is not None and not task.done()
    future.set_result(42)
    for _ in range(5):
        await asyncio.sleep(0)
    assert seen == [42, "slept"]
    failing.set_exception(KeyError("failed"))  # raised where the coroutine awaits it, caught by its own handler
    await task
    assert seen == [42, "slept", "failed"]


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    loop = asyncio.get_running_loop()
    events = []

    async def waits() -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("finally")

    for settle_first in (True, False):  # cancelled after the task's first step, and before it
        events.clear()
        task = start_eagerly(loop, waits())
        assert task is not None
        if settle_first:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert events == ["cancelled", "finally"], settle_first


async def test_a_context_variable_set_before_the_wait_is_reset_after_it() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    seen = []

    async def traced() -> None:
        token = VAR.set("request")
        await future
        seen.append(VAR.get())
        VAR.reset(token)  # a token from another context would raise ValueError here
        seen.append(VAR.get())

    task = start_eagerly(loop, traced())
    assert task is not None
    assert VAR.get() == ""  # the caller's context is not touched
    future.set_result(None)
    await task
    assert seen == ["request", ""]
