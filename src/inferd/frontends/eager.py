"""Starting a request's coroutine eagerly: run it at once, on the caller's stack, and give it a task only if it
waits. Most requests to a fast model (run inline on the event loop) never wait, and so finish without the cost of
a task and of a loop iteration (what Python 3.12's eager task factory does, for the loops inferd runs on). On
Python 3.10, whose tasks cannot be given a context, the coroutine starts in a task as usual."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start_eagerly"]

_TASK_CONTEXT = sys.version_info >= (3, 11)  # create_task(context=...)


def start_eagerly(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coroutine` until it ends (None) or first waits (the task it goes on in). It runs in its own context,
    which the task keeps, as a task's would be (a context variable it sets and resets stays in one context). An
    exception it raises before it first waits is raised here."""
    if not _TASK_CONTEXT:
        return loop.create_task(coroutine)
    context = contextvars.copy_context()
    try:
        blocked_on = context.run(coroutine.send, None)
    except StopIteration:
        return None
    resume = _resume(coroutine, blocked_on)
    resume.send(None)  # to its first yield: a cancellation before the task's first step reaches the coroutine too
    return loop.create_task(resume, context=context)


@types.coroutine
def _resume(coroutine: Coroutine[Any, Any, None], blocked_on: Any) -> Generator[Any, Any, None]:
    """Go on with a coroutine that stopped at `blocked_on` (what its await yielded: a future): the task this runs
    in waits for what it yields, and passes results, exceptions and cancellation through to the coroutine, as if
    the coroutine had run in the task from its start. Started (sent None) before the task takes it."""
    try:
        yield  # the task's first step: send(None) goes on; a throw (the task cancelled at once) goes in
    except BaseException as exc:
        try:
            blocked_on = coroutine.throw(exc)
        except StopIteration:
            return
    while True:
        try:
            value = yield blocked_on
        except BaseException as exc:  # cancellation and errors go on to the coroutine, as an await would pass them
            try:
                blocked_on = coroutine.throw(exc)
            except StopIteration:
                return
        else:
            try:
                blocked_on = coroutine.send(value)
            except StopIteration:
                return
