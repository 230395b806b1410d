"""Stage `wake` (before `resolve`): a request for a model scaled to zero is held, not failed, while the model
loads again (Knative's activator idea); every request that arrives meanwhile is served once it is ready.

Installed only once some model can scale to zero (an idle window, or a memory limit): for a loaded model it is
one dict read and one clock read (the model's last use, which the idle window and eviction order go by).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..pipeline import Call
from ..types import InferError

if TYPE_CHECKING:
    from .scaler import Tracked, Waker


class WakeStage:
    name = "wake"
    before = "resolve"

    def __init__(self, states: dict[str, Tracked], start: Callable[[Tracked, Waker], None], held_limit: int,
                 timeout_s: float) -> None:
        self._states = states
        self._start = start  # starts the model's load (once per waker)
        self._held_limit = held_limit
        self._timeout_s = timeout_s

    def __call__(self, call: Call) -> Awaitable[None] | None:
        state = self._states.get(call.request.model_name)
        if state is None:
            return None
        state.used = time.monotonic()
        waker = state.waker
        if waker is None:
            return None
        if waker.held >= self._held_limit:
            error = InferError.unavailable(f"model '{state.name}' is loading and already holds {waker.held} requests "
                                           f"(--model-held-requests); retry")
            error.retry_after = 1
            raise error
        self._start(state, waker)
        if call.sync:
            self._wait_sync(state, waker)
            return None
        return self._wait(state, waker)

    async def _wait(self, state: Tracked, waker: Waker) -> None:
        loop = asyncio.get_running_loop()
        mine: asyncio.Future[None] = loop.create_future()

        def relay(done: concurrent.futures.Future[None]) -> None:
            try:
                loop.call_soon_threadsafe(_copy, done, mine)
            except RuntimeError:  # the caller's loop closed: nobody waits
                pass

        waker.held += 1
        try:
            waker.done.add_done_callback(relay)
            await asyncio.wait_for(mine, self._timeout_s)
        except TimeoutError:
            raise self._timed_out(state) from None
        finally:
            waker.held -= 1

    def _wait_sync(self, state: Tracked, waker: Waker) -> None:
        waker.held += 1
        try:
            waker.done.result(self._timeout_s)
        except TimeoutError:
            raise self._timed_out(state) from None
        finally:
            waker.held -= 1

    def _timed_out(self, state: Tracked) -> InferError:
        error = InferError.unavailable(f"model '{state.name}' was scaled to zero and its load timed out after "
                                       f"{self._timeout_s:g} s (--model-load-timeout-secs); it goes on loading")
        error.retry_after = 1
        return error


def _copy(done: concurrent.futures.Future[None], mine: asyncio.Future[None]) -> None:
    if mine.done():
        return
    exc = done.exception()
    if exc is not None:
        mine.set_exception(exc)
    else:
        mine.set_result(None)
