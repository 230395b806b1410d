"""The scheduler of a graph served as a model: a job's feeds go to the graph's `run`, not to model instances."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from ..observability import ModelStatistics
from ..scheduling import Job
from ..types import ErrorKind, InferenceRequest, InferenceResponse, InferError, Tensors

__all__ = ["GRAPH_PROTOCOL", "GraphPool", "GraphScheduler", "InnerCalls"]

# The protocol name of a graph's calls of its nodes (trusted: the caller was admitted to the graph).
GRAPH_PROTOCOL = "graph"


class InnerCalls(Protocol):
    """How a graph calls a model: the server's pipeline (`Server.infer_request`)."""

    async def infer_request(self, request: InferenceRequest, context: Any = ...) -> InferenceResponse: ...


class GraphPool:
    """A graph has no instances of its own (what `ServedModel`, retiring and fair share read of a pool)."""

    def __init__(self, stats: ModelStatistics | None) -> None:
        self.instances: list[Any] = []
        self.stats = stats
        self.releases_gil = True


class GraphScheduler:
    """Runs a graph for each job: `run(feeds)` is the graph (a coroutine on the caller's event loop); synchronous
    callers (the SDK, a Python model's BLS call) have it run on a private loop. Counts one execution per request
    in the graph's statistics, as Triton counts an ensemble's."""

    def __init__(self, name: str, run: Callable[[Tensors, Job], Awaitable[Tensors]],
                 stats: ModelStatistics | None) -> None:
        self.name = name
        self._run = run
        self.pool = GraphPool(stats)
        self._stats = stats

    def make_job(self, feeds: Tensors, rows: int, priority: int, timeout_us: int) -> Job:
        return Job(feeds, rows, priority, timeout_us * 1000 if timeout_us > 0 else 0)

    def run_now(self, job: Job) -> Tensors | None:
        return None

    async def run(self, job: Job) -> Tensors:
        start = time.perf_counter_ns()
        if job.deadline_ns:
            remaining = (job.deadline_ns - start) / 1e9
            try:
                outputs = await asyncio.wait_for(self._run(job.feeds, job), max(remaining, 0.0))
            except TimeoutError:
                text = f"graph '{self.name}' exceeded the request's timeout"
                raise InferError(ErrorKind.DEADLINE_EXCEEDED, text) from None
        else:
            outputs = await self._run(job.feeds, job)
        stats = self._stats
        if stats is not None:
            done = time.perf_counter_ns()
            stats.record_execution(job.rows, 1, 0, done - start, 0, start - job.enqueued_ns)
        return outputs

    def run_sync(self, job: Job) -> Tensors:
        return run_blocking(self.run(job))

    def close(self) -> None:
        pass


def run_blocking(coroutine: Coroutine[Any, Any, Tensors]) -> Tensors:
    """Run a coroutine to completion from synchronous code: on this thread when it runs no event loop, else on a
    helper thread (never re-entering the caller's loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box: list[Any] = []
    context = contextvars.copy_context()  # the caller's current trace: the graph's steps are its children

    def target() -> None:
        try:
            box.append(context.run(asyncio.run, coroutine))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target, name="inferd-graph-sync")
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]
