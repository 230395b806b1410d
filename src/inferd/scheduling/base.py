"""What every scheduler shares: a queued job, the pool of model instances, and running one batch on an instance.

A batch is concatenated once per input and every caller gets views of its own rows of the outputs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import re
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..backends import Backend
from ..observability import ModelStatistics, Trace
from ..types import InferError, Tensors

log = logging.getLogger("inferd.scheduling")

# A model whose batches take less than this runs on the event loop: a thread hand-off would cost more than the model.
INLINE_BUDGET_NS = 300_000
# An execution this slow is the model's own cost, not a busy machine's: leave the event loop at once.
_SLOW_NS = 10 * INLINE_BUDGET_NS
# The estimate follows the fastest recent executions (what the model costs on an idle core) and drifts up by
# this factor per execution while none is that fast, so contention on a shared box does not push a 10 µs model
# off the loop, while a model that really became slower leaves it after a few dozen executions.
_DRIFT = 1.02


class Arrivals:
    """Per event loop, how many requests a frontend has read whose handling has not started yet.

    The batcher uses it to tell a lone request (run it now) from one that others will join within the same
    loop iteration (gather them into one batch). A loop whose frontend does not report counts as busy. The
    `Server` owns one and hands it to its schedulers; its front doors report to it.
    """

    def __init__(self) -> None:
        self._waiting: dict[asyncio.AbstractEventLoop, int] = {}

    def get(self, loop: asyncio.AbstractEventLoop) -> int | None:
        return self._waiting.get(loop)

    def arrived(self, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting[loop] = self._waiting.get(loop, 0) + 1

    def started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting[loop] -= 1



class Job:
    """One request waiting for (or in) an execution."""

    __slots__ = ("deadline_ns", "delayed", "enqueued_ns", "feeds", "future", "loop", "priority", "rows", "signature",
                 "trace")

    def __init__(self, feeds: Tensors, rows: int, priority: int = 0, timeout_ns: int = 0) -> None:
        self.feeds = feeds
        self.rows = rows
        self.priority = priority
        self.enqueued_ns = time.perf_counter_ns()
        self.deadline_ns = self.enqueued_ns + timeout_ns if timeout_ns > 0 else 0
        self.delayed = False
        self.signature: tuple[object, ...] = ()  # set by the batcher: what must match to batch together
        self.future: asyncio.Future[Tensors] | concurrent.futures.Future[Tensors] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.trace: Trace | None = None  # set by the server for a traced request

    def abandoned(self) -> bool:
        """The caller went away (its future was cancelled): the job leaves the queue without running."""
        future = self.future
        return future is not None and future.cancelled()


def settle(jobs: Sequence[Job], results: Sequence[Tensors | BaseException]) -> None:
    """Complete the callers' futures (on the thread that owns them)."""
    for job, result in zip(jobs, results, strict=True):
        future = job.future
        if future is None or future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def settle_from_thread(jobs: Sequence[Job], results: Sequence[Tensors | BaseException]) -> None:
    """Complete futures from a worker thread: asyncio futures on their own loop, one hop per loop."""
    by_loop: dict[asyncio.AbstractEventLoop | None, tuple[list[Job], list[Tensors | BaseException]]] = {}
    for job, result in zip(jobs, results, strict=True):
        group = by_loop.setdefault(job.loop, ([], []))
        group[0].append(job)
        group[1].append(result)
    for loop, (group_jobs, group_results) in by_loop.items():
        if loop is None:
            settle(group_jobs, group_results)
        else:
            try:
                loop.call_soon_threadsafe(settle, group_jobs, group_results)
            except RuntimeError:  # the loop closed: its callers are gone
                pass


class InstancePool:
    """The instances of one model version and the one way a batch runs on them."""

    def __init__(self, instances: list[Backend], stats: ModelStatistics | None) -> None:
        if not instances:
            raise ValueError("a model needs at least one instance")
        self.instances = instances
        self.idle: queue.SimpleQueue[Backend] = queue.SimpleQueue()
        for instance in instances:
            self.idle.put(instance)
        self.stats = stats
        self.releases_gil = all(i.releases_gil for i in instances)
        # Unknown cost: the first execution runs off the loop and its measurement decides.
        self.exec_ns = float(_SLOW_NS)

    def _label(self) -> str:
        stats = self.stats
        return f"model '{stats.name}' version {stats.version}" if stats is not None else "a model"

    @property
    def cheap(self) -> bool:
        """Batches are fast enough to run inline on the event loop."""
        return self.releases_gil and self.exec_ns < INLINE_BUDGET_NS

    def execute(self, instance: Backend, jobs: Sequence[Job]) -> list[Tensors | BaseException]:
        """Run `jobs` as one batch on `instance` (then give the instance back); one result per job."""
        start = time.perf_counter_ns()
        try:
            if len(jobs) == 1:
                feeds = jobs[0].feeds
            else:
                feeds = {name: np.concatenate([j.feeds[name] for j in jobs]) for name in jobs[0].feeds}
            ready = time.perf_counter_ns()
            try:
                outputs = instance.execute(feeds)
            finally:
                done = time.perf_counter_ns()
                self.idle.put(instance)
                sample = done - ready
                self.exec_ns = sample if sample >= _SLOW_NS else min(sample, self.exec_ns * _DRIFT)
            results = _split(outputs, jobs)
        except InferError as exc:
            return [exc] * len(jobs)
        except Exception as exc:  # a backend failure fails this batch's requests, nothing else
            error = BackendFailure(_failure_text(exc))
            # The full text once per failed batch, on one line; clients get it cleaned (as_infer_error), and the
            # traceback only at debug verbosity.
            log.error("%s failed: %s", self._label(), error)
            log.debug("%s failed", self._label(), exc_info=exc)
            return [error] * len(jobs)
        end = time.perf_counter_ns()
        if self.stats is not None:
            queue_ns = sum(start - j.enqueued_ns for j in jobs)
            self.stats.record_execution(sum(j.rows for j in jobs), len(jobs), ready - start, done - ready,
                                        end - done, queue_ns)
        for job in jobs:
            if job.trace is not None:
                _trace_batch(jobs, results, start, ready, done, end)
                break
        return results


def _trace_batch(jobs: Sequence[Job], results: Sequence[Tensors | BaseException], start: int, ready: int,
                 done: int, end: int) -> None:
    """Tell the traced requests of a batch when it ran."""
    for job, result in zip(jobs, results, strict=True):
        if job.trace is not None:
            job.trace.computed(job.enqueued_ns, start, ready, done, end, job.feeds, result)


def model_label(name: str) -> str:
    """A scheduler's name ("resnet-3": model and version, as the manager names it) as users read it."""
    model, _, version = name.rpartition("-")
    return f"model '{model}' version {version}" if model and version.isdigit() else f"model '{name}'"


def unloading_error(name: str) -> InferError:
    return InferError.unavailable(f"{model_label(name)} is unloading and takes no new requests")


class BackendFailure(Exception):
    """The model itself raised while executing; its text is the model's exception on one line, `Type: text`."""


# A text that already names its exception ("ValueError: negative input", as instance processes and the Python
# backend pass a model's exception on).
_TYPED = re.compile(r"[A-Za-z_][\w.]*: ")


def _failure_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text if _TYPED.match(text) else f"{type(exc).__name__}: {text}"


def _split(outputs: Tensors, jobs: Sequence[Job]) -> list[Tensors | BaseException]:
    if len(jobs) == 1:
        return [outputs]
    total = sum(j.rows for j in jobs)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise InferError.internal(f"output '{name}' has shape {list(value.shape)}: the model did not keep the "
                                      f"batch dimension of {total} rows")
    results: list[Tensors | BaseException] = []
    start = 0
    for job in jobs:
        stop = start + job.rows
        results.append({name: value[start:stop] for name, value in outputs.items()})
        start = stop
    return results


class Scheduler(Protocol):
    """How requests reach a model's instances."""

    pool: InstancePool

    def make_job(self, feeds: Tensors, rows: int, priority: int, timeout_us: int) -> Job: ...

    async def run(self, job: Job) -> Tensors: ...

    def run_sync(self, job: Job) -> Tensors: ...

    def close(self) -> None: ...


def unwrap(result: Tensors | BaseException) -> Tensors:
    if isinstance(result, BaseException):
        raise result
    return result
