"""What every scheduler shares: a queued job, the pool of model instances, and running one batch on an instance.

A batch is concatenated once per input and every caller gets views of its own rows of the outputs.

A model's `request_timeout_ms` (`InstancePool.run_with_deadline`): its requests never run inline; each has a timer
from its arrival that fails it with DEADLINE_EXCEEDED, takes it out of the queue, and aborts the instance process
executing it (an instance thread cannot be stopped: it finishes unobserved).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ..backends import Backend
from ..model_limits import timeout_message
from ..observability import ModelStatistics, Trace
from ..types import ErrorKind, InferError, Tensors

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
        self._this_iteration: dict[asyncio.AbstractEventLoop, int] = {}

    def get(self, loop: asyncio.AbstractEventLoop) -> int | None:
        return self._waiting.get(loop)

    def arrived(self, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting[loop] = self._waiting.get(loop, 0) + 1

    def started(self, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting[loop] -= 1

    def arrived_now(self, loop: asyncio.AbstractEventLoop) -> None:
        """A request whose handling starts at once, as it is read (the HTTP server runs it eagerly, no task): it
        counts as arrived until the end of this loop iteration, so that a batcher it reaches still waits for the
        requests read in the same iteration, as it does for requests that start in a task. One callback per
        iteration settles them all."""
        self._waiting[loop] = self._waiting.get(loop, 0) + 1
        pending = self._this_iteration.get(loop, 0)
        self._this_iteration[loop] = pending + 1
        if not pending:
            loop.call_soon(self._settle, loop)

    def _settle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting[loop] -= self._this_iteration.pop(loop, 0)



class Job:
    """One request waiting for (or in) an execution."""

    __slots__ = ("deadline_ns", "delayed", "enqueued_ns", "expired", "feeds", "future", "instance", "loop",
                 "priority", "rows", "signature", "trace")

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
        self.expired = False  # failed at the model's request timeout (see InstancePool.expire)
        self.instance: Backend | None = None  # the instance executing it, while it does (request timeouts only)

    def abandoned(self) -> bool:
        """The caller went away (its future was cancelled), or the model's request timeout failed it: the job
        leaves the queue without running."""
        future = self.future
        return self.expired or (future is not None and future.cancelled())


def settle(jobs: Sequence[Job], results: Sequence[Tensors | BaseException]) -> None:
    """Complete the callers' futures (on the thread that owns them)."""
    for job, result in zip(jobs, results, strict=True):
        future = job.future
        if future is None or future.done():
            continue
        try:
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        except (concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
            pass  # failed meanwhile by the model's request timeout (from the waiting thread)


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

    def __init__(self, instances: list[Backend], stats: ModelStatistics | None, request_timeout_ms: int = 0) -> None:
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
        # The model's `request_timeout_ms` (0: none); its requests never run inline (see `run_with_deadline`).
        self.timeout_ms = request_timeout_ms
        self.timeout_ns = request_timeout_ms * 1_000_000
        self._claims = threading.Lock()  # who executes which job, for `expire`

    def add(self, instance: Backend) -> None:
        """One more instance (the instance autoscaler's, scaling/): it takes work at once."""
        self.instances = [*self.instances, instance]
        self.idle.put(instance)

    def remove_idle(self, timeout: float) -> Backend | None:
        """Take an instance out of the pool once it is idle (waiting up to `timeout` s for one to finish its
        batch): the caller unloads it. None when one instance is left, or none became idle in time."""
        if len(self.instances) <= 1:
            return None
        try:
            instance = self.idle.get(timeout=timeout)
        except queue.Empty:
            return None
        self.instances = [i for i in self.instances if i is not instance]
        return instance

    def _label(self) -> str:
        stats = self.stats
        return f"model '{stats.name}' version {stats.version}" if stats is not None else "a model"

    @property
    def cheap(self) -> bool:
        """Batches are fast enough to run inline on the event loop."""
        return self.releases_gil and not self.timeout_ns and self.exec_ns < INLINE_BUDGET_NS

    def execute(self, instance: Backend, jobs: Sequence[Job]) -> list[Tensors | BaseException]:
        """Run `jobs` as one batch on `instance` (then give the instance back); one result per job."""
        if self.timeout_ns and not self._claim(instance, jobs):
            self.idle.put(instance)  # every job of the batch timed out already: nobody waits for it
            return [self._timeout_error()] * len(jobs)
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
                if self.timeout_ns:
                    self._unclaim(jobs)
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
        if len(jobs) == 1:  # no generators for the common single request
            job = jobs[0]
            if self.stats is not None:
                self.stats.record_execution(job.rows, 1, ready - start, done - ready, end - done,
                                            start - job.enqueued_ns)
            if job.trace is not None:
                _trace_batch(jobs, results, start, ready, done, end)
            return results
        if self.stats is not None:
            queue_ns = sum(start - j.enqueued_ns for j in jobs)
            self.stats.record_execution(sum(j.rows for j in jobs), len(jobs), ready - start, done - ready,
                                        end - done, queue_ns)
        for job in jobs:
            if job.trace is not None:
                _trace_batch(jobs, results, start, ready, done, end)
                break
        return results

    # ---- the model's request timeout ----

    def _timeout_error(self) -> InferError:
        name = self.stats.name if self.stats is not None else "model"
        return InferError(ErrorKind.DEADLINE_EXCEEDED, timeout_message(name, self.timeout_ms))

    def _claim(self, instance: Backend, jobs: Sequence[Job]) -> bool:
        """Note the instance that executes `jobs`; False when all of them timed out already."""
        with self._claims:
            if all(job.expired for job in jobs):
                return False
            for job in jobs:
                job.instance = instance
            return True

    def _unclaim(self, jobs: Sequence[Job]) -> None:
        with self._claims:
            for job in jobs:
                job.instance = None

    def expire(self, job: Job) -> None:
        """The job's request timeout is up: fail its caller now; an instance process executing it is killed (and
        restarts), while an instance thread cannot be stopped and stays busy until the model returns."""
        error = self._timeout_error()
        with self._claims:
            future = job.future
            if job.expired or (future is not None and future.done()):
                return
            job.expired = True
            instance = job.instance
            abort = getattr(instance, "abort", None) if instance is not None else None
            if abort is not None:
                abort(error.message)  # under the lock: the instance is still executing this job
        if instance is not None and abort is None:
            log.warning("%s: %s; its instance runs in a thread, which cannot be stopped: it stays busy until the "
                        "model returns", self._label(), error.message)
        if isinstance(future, asyncio.Future):
            if not future.done():  # expire runs on the future's own loop
                future.set_exception(error)
        elif future is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)

    def _remaining_s(self, job: Job) -> float:
        return max(0.0, (job.enqueued_ns + self.timeout_ns - time.perf_counter_ns()) / 1e9)

    async def run_with_deadline(self, job: Job, submit: Callable[[Job], None]) -> Tensors:
        """Hand `job` to `submit` (which settles its future) and wait for it, up to the model's request timeout
        counted from the job's arrival."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensors] = loop.create_future()
        job.future, job.loop = future, loop
        handle = loop.call_later(self._remaining_s(job), self.expire, job)
        try:
            submit(job)
            return await future
        finally:
            handle.cancel()

    def run_sync_with_deadline(self, job: Job, submit: Callable[[Job], None]) -> Tensors:
        """`run_with_deadline` for a caller's thread."""
        future: concurrent.futures.Future[Tensors] = concurrent.futures.Future()
        job.future = future
        submit(job)
        try:
            return future.result(self._remaining_s(job))
        except TimeoutError:
            self.expire(job)
            return future.result()  # the timeout's error (or the answer, had it come meanwhile)


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


class Instances(Protocol):
    """What the rest of the server reads of a scheduler's pool: its instances (none for a graph)."""

    @property
    def instances(self) -> Sequence[Backend]: ...


class Scheduler(Protocol):
    """How requests reach a model's instances."""

    @property
    def pool(self) -> Instances: ...

    def make_job(self, feeds: Tensors, rows: int, priority: int, timeout_us: int) -> Job: ...

    def run_now(self, job: Job) -> Tensors | None:
        """The job's results when it can run at once on the caller's thread, as `run` would run it there (a cheap
        model with an idle instance and nothing to batch it with); else None, and the caller awaits `run`. No
        coroutine to make for the common fast request."""
        ...

    async def run(self, job: Job) -> Tensors: ...

    def run_sync(self, job: Job) -> Tensors: ...

    def close(self) -> None: ...


def unwrap(result: Tensors | BaseException) -> Tensors:
    if isinstance(result, BaseException):
        raise result
    return result
