"""Triton's dynamic batcher: one queue per model version, shared by all its instances.

Two ways to run, chosen by the model's configuration and its measured cost:

* cheap models with a plain `dynamic_batching { }` (no queue delay, one priority level, no queue policy) batch
  on the event loop: requests that arrive in the same loop iteration are gathered by one `call_soon` callback
  and run as one batch inline, so a lone request never waits and no thread hand-off is paid;
* everything else goes through the shared queue, served by one worker thread per instance: an idle instance
  takes the next batch (greedy with no delay; with a delay, it waits up to the delay for a preferred size).

Priorities, queue policies (timeouts with REJECT or DELAY, max queue size) apply to the shared queue, so a model
that configures any of them never takes the inline path: a request run there would overtake the queue (a
low-priority request run the moment it arrives while high-priority ones wait, or a long execution holding the
event loop so that waiting requests reach the queue only after it).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..types import InferError
from .base import (
    Arrivals,
    InstancePool,
    Job,
    Tensors,
    model_label,
    settle,
    settle_from_thread,
    unloading_error,
    unwrap,
)

_REJECT, _DELAY = 0, 1  # ModelQueuePolicy.TimeoutAction


@dataclass(slots=True, frozen=True)
class QueuePolicy:
    timeout_action: int = _REJECT
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0

    @classmethod
    def from_config(cls, policy: Any) -> QueuePolicy:
        return cls(int(policy.timeout_action), int(policy.default_timeout_microseconds),
                   bool(policy.allow_timeout_override), int(policy.max_queue_size))


class DynamicBatcher:
    def __init__(self, pool: InstancePool, name: str, max_batch_size: int, dynamic_batching: Any,
                 arrivals: Arrivals | None = None) -> None:
        self.pool = pool
        # What the front doors report of requests read but not started (no reports: every loop counts as busy).
        self._arrivals = arrivals if arrivals is not None else Arrivals()
        self.name = name
        self.max_batch_size = max(1, max_batch_size)
        self.preferred = sorted({int(s) for s in dynamic_batching.preferred_batch_size if 0 < s <= max_batch_size})
        self.delay_ns = int(dynamic_batching.max_queue_delay_microseconds) * 1000
        self.levels = max(1, int(dynamic_batching.priority_levels))
        default_level = int(dynamic_batching.default_priority_level)
        self.default_level = default_level if 1 <= default_level <= self.levels else (self.levels + 1) // 2
        default_policy = QueuePolicy.from_config(dynamic_batching.default_queue_policy)
        self.policies = [
            QueuePolicy.from_config(dynamic_batching.priority_queue_policy[level])
            if level in dynamic_batching.priority_queue_policy else default_policy
            for level in range(1, self.levels + 1)
        ]
        # Only a plain FIFO queue with no delay may be bypassed by running requests inline (see the docstring).
        self._inline_allowed = self.delay_ns == 0 and self.levels == 1 and self.policies == [QueuePolicy()]
        self._queues: list[collections.deque[Job]] = [collections.deque() for _ in range(self.levels)]
        self._delayed: collections.deque[Job] = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._inline: dict[asyncio.AbstractEventLoop, list[Job]] = {}
        self._workers = [threading.Thread(target=self._work, name=f"inferd-{name}-{i}", daemon=True)
                         for i in range(len(pool.instances))]
        for worker in self._workers:
            worker.start()

    # ---- admission ----

    def make_job(self, feeds: Tensors, rows: int, priority: int, timeout_us: int) -> Job:
        """A job with its priority level and deadline from the request parameters and the queue policy.

        As in Triton, a priority outside 1..priority_levels gets the default level, and a request's own timeout
        counts only where the level's policy allows overrides, and only to shorten the default.
        """
        level = priority if 1 <= priority <= self.levels else self.default_level
        policy = self.policies[level - 1]
        timeout = policy.default_timeout_us
        if policy.allow_timeout_override and timeout_us > 0 and (timeout == 0 or timeout_us < timeout):
            timeout = timeout_us
        job = Job(feeds, rows, level, timeout * 1000)
        # Requests batch together only when every input has the same non-batch shape and dtype.
        job.signature = tuple((k, v.shape[1:], v.dtype.str) for k, v in feeds.items())
        return job

    def _enqueue(self, jobs: list[Job]) -> None:
        with self._cond:
            if self._stopping:
                settle_from_thread(jobs, [unloading_error(self.name)] * len(jobs))
                return
            for job in jobs:
                q = self._queues[job.priority - 1]
                limit = self.policies[job.priority - 1].max_queue_size
                if limit and len(q) >= limit:
                    error = InferError.unavailable(f"Exceeds maximum queue size for {model_label(self.name)}")
                    settle_from_thread([job], [error])
                    continue
                q.append(job)
                self._queued += 1
            self._cond.notify()

    def run_now(self, job: Job) -> Tensors | None:
        """Inline at once only when nothing else has arrived that could join the job's batch: run now rather
        than a loop iteration later (`cheap` is never true with a request timeout)."""
        if self._stopping or not (self._inline_allowed and self.pool.cheap):
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._inline.get(loop) or self._arrivals.get(loop) != 0:
            return None
        try:
            instance = self.pool.idle.get_nowait()
        except queue.Empty:
            return None
        return unwrap(self.pool.execute(instance, [job])[0])

    async def run(self, job: Job) -> Tensors:
        if self._stopping:
            raise unloading_error(self.name)
        if self.pool.timeout_ns:
            return await self.pool.run_with_deadline(job, self._enqueue_one)
        loop = asyncio.get_running_loop()
        if self._inline_allowed and self.pool.cheap:
            results = self.run_now(job)
            if results is not None:
                return results
            pending = self._inline.get(loop)
            job.loop = loop
            future: asyncio.Future[Tensors] = loop.create_future()
            job.future = future
            if pending is None:
                pending = self._inline[loop] = []
            pending.append(job)
            if len(pending) == 1:
                loop.call_soon(self._flush_inline, loop)
        else:
            job.loop = loop
            future = loop.create_future()
            job.future = future
            self._enqueue([job])
        return await future

    def _enqueue_one(self, job: Job) -> None:
        self._enqueue([job])

    def run_sync(self, job: Job) -> Tensors:
        if self.pool.timeout_ns:
            return self.pool.run_sync_with_deadline(job, self._enqueue_one)
        job.future = concurrent.futures.Future()
        self._enqueue([job])
        return unwrap(job.future.result())

    # ---- inline batching on the event loop ----

    def _flush_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = [j for j in self._inline.pop(loop, []) if not j.abandoned()]  # one priority level: arrival order
        while jobs:
            batch, jobs = self._take_compatible(jobs, self.max_batch_size)
            try:
                instance = self.pool.idle.get_nowait()
            except queue.Empty:  # every instance busy: the batch joins the shared queue
                self._enqueue(batch)
                continue
            settle(batch, self.pool.execute(instance, batch))

    @staticmethod
    def _take_compatible(jobs: list[Job], limit: int) -> tuple[list[Job], list[Job]]:
        first = jobs[0]
        batch, rest, rows = [first], [], first.rows
        for job in jobs[1:]:
            if job.signature == first.signature and rows + job.rows <= limit:
                batch.append(job)
                rows += job.rows
            else:
                rest.append(job)
        return batch, rest

    # ---- the shared queue, served by one worker per instance ----

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queued and not self._delayed and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._queued and not self._delayed:
                    return
            instance = self.pool.idle.get()
            with self._cond:
                batch = self._form_batch()
            if not batch:
                self.pool.idle.put(instance)
                continue
            settle_from_thread(batch, self.pool.execute(instance, batch))

    def _form_batch(self) -> list[Job]:
        """Called with the condition held: wait for the delay / preferred size, then take one batch."""
        if self.delay_ns:
            target = self.preferred[-1] if self.preferred else self.max_batch_size
            while not self._stopping:
                self._expire()
                oldest = self._oldest()
                if oldest is None:
                    return []
                waited = time.perf_counter_ns() - oldest.enqueued_ns
                if self._queued_rows() >= target or waited >= self.delay_ns:
                    break
                self._cond.wait((self.delay_ns - waited) / 1e9)
        self._expire()
        limit = self.max_batch_size
        if self.preferred and self.delay_ns:
            rows = self._queued_rows()
            fitting = [p for p in self.preferred if p <= rows]
            oldest = self._oldest()
            expired = oldest is not None and time.perf_counter_ns() - oldest.enqueued_ns >= self.delay_ns
            if fitting and not expired:
                limit = fitting[-1]
        return self._take(limit)

    def _oldest(self) -> Job | None:
        heads = [q[0] for q in self._queues if q]
        if not heads:
            return self._delayed[0] if self._delayed else None
        return min(heads, key=lambda j: j.enqueued_ns)

    def _queued_rows(self) -> int:
        return sum(j.rows for q in self._queues for j in q)

    def _expire(self) -> None:
        """Requests past their queue timeout: rejected, or (DELAY) moved behind every request still on time."""
        now = time.perf_counter_ns()
        rejected: list[Job] = []
        for level, q in enumerate(self._queues):
            if not any(j.deadline_ns and j.deadline_ns <= now for j in q):
                continue
            keep: collections.deque[Job] = collections.deque()
            for job in q:
                if job.deadline_ns and job.deadline_ns <= now:
                    self._queued -= 1
                    if self.policies[level].timeout_action == _DELAY:
                        job.deadline_ns = 0
                        job.delayed = True
                        self._delayed.append(job)
                    else:
                        rejected.append(job)
                else:
                    keep.append(job)
            self._queues[level] = keep
        if rejected:
            settle_from_thread(rejected, [InferError.unavailable("Request timeout expired")] * len(rejected))

    def _take(self, limit: int) -> list[Job]:
        batch: list[Job] = []
        rows = 0
        signature = None
        sources = [*self._queues, self._delayed] if not self._queued else self._queues
        for q in sources:
            keep: collections.deque[Job] = collections.deque()
            while q:
                job = q.popleft()
                if job.abandoned():
                    if not job.delayed:
                        self._queued -= 1
                    continue
                if signature is None:
                    signature = job.signature
                if job.signature == signature and rows + job.rows <= limit:
                    batch.append(job)
                    rows += job.rows
                    if not job.delayed:
                        self._queued -= 1
                else:
                    keep.append(job)
                    if rows >= limit:
                        keep.extend(q)
                        q.clear()
            q.extend(keep)
            if rows >= limit:
                break
        return batch

    def resized(self) -> None:
        """The pool gained instances (scaling/): one worker per instance. A removed instance's worker stays,
        waiting for an idle instance like the others, and serves again when one is added."""
        with self._cond:
            while len(self._workers) < len(self.pool.instances) and not self._stopping:
                worker = threading.Thread(target=self._work, name=f"inferd-{self.name}-{len(self._workers)}",
                                          daemon=True)
                self._workers.append(worker)
                worker.start()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout=30)
