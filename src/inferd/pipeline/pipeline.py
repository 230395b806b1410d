"""The one request pipeline: an ordered list of stages that every request of every protocol passes.

A front door decodes its wire format into an `InferenceRequest`, hands it to `Server.infer_request` with a
`RequestContext`, and encodes the answer; everything in between is a stage here. The list is fixed when the
server is built (or changed by `insert` / `remove` before traffic), so a stage that is not installed costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, Protocol, runtime_checkable

from ..scheduling import BackendFailure
from ..types import ErrorKind, InferenceRequest, InferenceResponse, InferError, describe_error, public_error_text
from .call import Call, RequestContext

log = logging.getLogger("inferd.pipeline")

__all__ = ["Pipeline", "Stage", "as_infer_error"]


@runtime_checkable
class Stage(Protocol):
    """One step of every request: a small object with a `name` and one method.

    `stage(call)` reads and fills the `Call`; it raises `InferError` to refuse the request, may register
    `call.on_finish(...)` for what must happen when the request ends, and returns None — or an awaitable when it
    must wait (a model to wake, a slot to free up); the pipeline awaits it before the next stage.
    """

    name: str

    def __call__(self, call: Call) -> Awaitable[None] | None: ...


class Pipeline:
    """The ordered stages; `run` (event loop) and `run_sync` (caller's thread) walk the same list."""

    def __init__(self, stages: Iterable[Stage]) -> None:
        self._stages: tuple[Stage, ...] = tuple(stages)
        self._check_names(self._stages)

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self._stages]

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def stage(self, name: str) -> Stage:
        for stage in self._stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no pipeline stage named '{name}' (stages: {', '.join(self.names)})")

    def insert(self, stage: Stage, *, before: str | None = None, after: str | None = None) -> None:
        """Add a stage before or after a named one (by default before `admit`: after the model is known,
        before the request is checked and queued)."""
        if before is not None and after is not None:
            raise ValueError("give 'before' or 'after', not both")
        if not isinstance(stage, Stage):
            raise TypeError(f"{stage!r} is not a pipeline stage (it needs a 'name' and a __call__(call) method)")
        names = self.names
        anchor = after if after is not None else (before or "admit")
        if anchor not in names:
            raise ValueError(f"no pipeline stage named '{anchor}' (stages: {', '.join(names)})")
        index = names.index(anchor) + (1 if after is not None else 0)
        stages = (*self._stages[:index], stage, *self._stages[index:])
        self._check_names(stages)
        self._stages = stages

    def remove(self, name: str) -> Stage:
        found = self.stage(name)
        self._stages = tuple(s for s in self._stages if s is not found)
        return found

    @staticmethod
    def _check_names(stages: tuple[Stage, ...]) -> None:
        names = [s.name for s in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pipeline stage names must be unique: {', '.join(duplicates)}")

    # ---- running a request ----

    async def run(self, request: InferenceRequest, context: RequestContext) -> InferenceResponse:
        call = Call(request, context, time.perf_counter_ns(), False)
        try:
            for stage in self._stages:
                pending = stage(call)
                if pending is not None:
                    await pending
        except asyncio.CancelledError as exc:
            call.error = call.cause = exc
            raise
        except Exception as exc:
            error = _failed(call, exc)
            try:
                raise error from None
            finally:
                del error  # no frame-traceback cycle: a failed request's tensors go now, not at the next GC
        finally:
            _finish(call)
        return _response(call)

    def run_sync(self, request: InferenceRequest, context: RequestContext) -> InferenceResponse:
        """The same stages on the caller's thread (the SDK's `Server.infer`, a Python model's BLS call): a stage
        that returns an awaitable has it run to completion on a private event loop."""
        call = Call(request, context, time.perf_counter_ns(), True)
        try:
            for stage in self._stages:
                pending = stage(call)
                if pending is not None:
                    _wait(pending)
        except Exception as exc:
            error = _failed(call, exc)
            try:
                raise error from None
            finally:
                del error
        finally:
            _finish(call)
        return _response(call)


def _finish(call: Call) -> None:
    try:
        call.finish()
    finally:
        # The exceptions' tracebacks hold this frame, which holds the call: no cycle may keep a failed request's
        # tensors (shared-memory views among them) alive until the next garbage collection.
        call.error = call.cause = None


def _failed(call: Call, exc: Exception) -> InferError:
    """Record why the request failed (its cause, and the error its caller gets) for the finish callbacks."""
    call.cause = exc
    call.error = error = as_infer_error(call, exc)
    return error


def _response(call: Call) -> InferenceResponse:
    response = call.response
    if response is None:
        raise InferError.internal("the pipeline ended without a response (is its 'respond' stage missing?)")
    return response


def _wait(awaitable: Awaitable[None]) -> None:
    """Run an awaitable to completion from synchronous code: here when this thread runs no event loop, else on a
    helper thread (a notebook's thread has a running loop that must not be re-entered)."""

    async def main() -> None:
        await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return
    failure: list[BaseException] = []

    def target(coroutine: Coroutine[Any, Any, None]) -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, args=(main(),), name="inferd-pipeline-wait")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def as_infer_error(call: Call, exc: Exception) -> InferError:
    """The error a failed request's caller gets: an InferError as it is; a model's own failure as INTERNAL, its
    text without the server's paths and environment values (public_error_text; the full text is in the log)."""
    if isinstance(exc, InferError):
        return exc
    name = call.model.name if call.model is not None else call.request.model_name
    if isinstance(exc, BackendFailure):
        text = str(exc)  # logged where the batch failed
    else:
        text = " ".join(describe_error(exc).split())
        log.error("model '%s' failed: %s", name, text)
        log.debug("model '%s' failed", name, exc_info=exc)
    return InferError(ErrorKind.INTERNAL, f"model '{name}' failed: {public_error_text(text)}")
