"""Stage `fair-share`: one tenant's burst waits in its own share of a model's queue instead of in front of
everyone else's requests.

Why here: the scheduler's queue behind `admit` is first come, first served, so 200 requests of one tenant put
every other tenant's request 200 places back. This stage sits between `resolve` (the model is known) and `admit`
(the request gets its place in the scheduler) and bounds how many requests of one model version may be past it:

- The window. Per served model version at most W requests are past this stage at once, W = 2 x instances x
  max(1, max_batch_size) and at least 2: enough for every instance to have a full batch running and the next one
  gathering, so dynamic batching still sees full batches, while the rest of a burst waits here where the order
  can still change. A request takes a slot when it passes and gives it back when it ends (`call.on_finish`:
  success, error or cancellation), so a slot never outlives its request.
- The queues. A request that finds the window full waits (an asyncio future) in its tenant's own FIFO lane;
  requests without a tenant (auth off, or none given) share one anonymous lane.
- The scheduling rule: stride scheduling (a virtual-time weighted round robin). Each lane has a pass value; a
  freed slot goes to the head of the lane with the smallest pass (ties: the lane that queued first), whose pass
  then grows by 1 / weight. A lane that starts waiting starts at the current virtual time (the pass of the last
  lane served), so an idle tenant saves no credit and a new one does not wait behind a burst. Equal weights give
  round robin; weights 3:1 give 3 slots to 1 under contention. Picking is a scan of the lanes that have waiters
  (one per tenant waiting on this model), not of the waiting requests.
- Cancellation. A waiter whose request is cancelled (the client went away) leaves its lane; if its slot had
  already been handed to it, the slot goes on to the next waiter, so none leaks.
- Synchronous calls (`call.sync`: the SDK, a Python model's BLS call) pass without waiting and are not counted in
  the window: they run on their caller's thread and cannot wait for the event loop; their callers' threads
  bound them, and a BLS call is part of a request that already holds a slot.
- Threads and unloads. The HTTP and gRPC front doors run separate event loops, so each window has a lock and a
  waiter on another loop is woken through that loop (`call_soon_threadsafe`). Waiters are woken only by finishing
  requests; since every request in the window finishes, no waiter hangs, even while its model unloads. Windows
  are kept in a WeakKeyDictionary keyed by the ServedModel (which holds no reference back), so an unloaded
  version's window goes with it.

The path of a request that finds room costs one dictionary lookup, a locked counter and one finish callback.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model import ServedModel
    from ..pipeline.call import Call

__all__ = ["FairShareStage", "default_window"]


def default_window(model: ServedModel) -> int:
    """W = 2 x instances x max(1, max_batch_size), at least 2: a full batch running and one gathering per
    instance."""
    instances = len(model.scheduler.pool.instances)
    if not instances:  # a graph: its nodes' own windows share their instances
        return 1 << 30
    return max(2, 2 * instances * max(1, model.max_batch_size))


class _Waiter:
    """A request waiting for a slot: its future, on the loop (and thread) that awaits it."""

    __slots__ = ("future", "gone", "granted", "lane", "loop", "thread")

    def __init__(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        self.lane = lane
        self.loop = loop
        self.thread = threading.get_ident()
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False  # a slot was handed to it (set under the window's lock)
        self.gone = False  # it left its lane before getting one (cancelled)


class _Lane:
    """One tenant's FIFO of waiters on one model version, with its stride-scheduling pass."""

    __slots__ = ("key", "live", "pass_", "queue", "stride")

    def __init__(self, key: str | None, pass_: float, stride: float) -> None:
        self.key = key
        self.pass_ = pass_
        self.stride = stride
        self.queue: deque[_Waiter] = deque()
        self.live = 0  # waiters in `queue` that have not gone (the gone ones are skipped when popped)


class _Window:
    """One model version's slots and lanes. Holds no reference to the model (its key in a WeakKeyDictionary)."""

    __slots__ = ("active", "lanes", "limit", "lock", "vtime")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0  # slots taken; waiters exist only while all `limit` are taken
        self.lanes: dict[str | None, _Lane] = {}  # only lanes with live waiters, in the order they started
        self.vtime = 0.0  # the pass of the lane served last
        self.lock = threading.Lock()

    def enqueue(self, key: str | None, stride: float, loop: asyncio.AbstractEventLoop) -> _Waiter:
        """Queue a waiter in its lane (called with the lock held)."""
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = _Lane(key, self.vtime, stride)
        else:
            lane.stride = stride  # the tenant's weight as it is now
        waiter = _Waiter(lane, loop)
        lane.queue.append(waiter)
        lane.live += 1
        return waiter

    def release(self, call: Call) -> None:
        """A request that held a slot ended (its finish callback)."""
        self.hand_on()

    def hand_on(self) -> None:
        """Give a freed slot to the next waiter by the stride rule, or free it when none waits."""
        while True:
            with self.lock:
                waiter = self._next()
                if waiter is None:
                    self.active -= 1
                    return
                waiter.granted = True
            if _wake(waiter):
                return
            # Its event loop is closed, so its request is gone with it: the slot goes on to the next one.

    def withdraw(self, waiter: _Waiter) -> None:
        """A waiter's request was cancelled: leave its lane, or pass on the slot it was just handed."""
        with self.lock:
            if not waiter.granted:
                waiter.gone = True
                self._drop(waiter.lane)
                return
        self.hand_on()

    def _next(self) -> _Waiter | None:
        lanes = self.lanes
        if not lanes:
            return None
        lane = min(lanes.values(), key=_pass)  # the first of equals: the lane that started waiting first
        self.vtime = lane.pass_
        lane.pass_ += lane.stride
        queue = lane.queue
        waiter = queue.popleft()
        while waiter.gone:
            waiter = queue.popleft()
        self._drop(lane)
        return waiter

    def _drop(self, lane: _Lane) -> None:
        """One live waiter fewer in `lane`; an empty lane leaves (and with no lane left, virtual time restarts)."""
        lane.live -= 1
        if lane.live == 0:
            lane.queue.clear()
            if self.lanes.get(lane.key) is lane:
                del self.lanes[lane.key]
            if not self.lanes:
                self.vtime = 0.0


def _pass(lane: _Lane) -> float:
    return lane.pass_


def _wake(waiter: _Waiter) -> bool:
    """Resolve the waiter's future on its own loop; False when that loop is closed."""
    if waiter.thread == threading.get_ident():
        _settle(waiter.future)
        return True
    try:
        waiter.loop.call_soon_threadsafe(_settle, waiter.future)
    except RuntimeError:
        return False
    return True


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled one: its coroutine passes the slot on (`withdraw`)
        future.set_result(None)


def _lane_of(call: Call) -> tuple[str | None, float]:
    """The lane key (the tenant's name; None for the anonymous lane) and its stride (1 / weight)."""
    tenant: Any = call.state.get("tenant")
    if tenant is None:
        return None, 1.0
    try:
        weight = float(getattr(tenant, "weight", 1.0))
    except (TypeError, ValueError):
        weight = 1.0
    if not (weight > 0.0 and math.isfinite(weight)):
        weight = 1.0
    return str(tenant.name), 1.0 / weight


class FairShareStage:
    """Bound each model version's requests past this point to a window; share freed slots between tenants by
    weighted round robin (see the module docstring)."""

    name = "fair-share"
    before = "admit"  # `Server.add_stage` places it after `resolve`/`account`, before the request is queued

    def __init__(self, window: Callable[[ServedModel], int] | None = None) -> None:
        self._size = window or default_window
        self._windows: weakref.WeakKeyDictionary[ServedModel, _Window] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, call: Call) -> Awaitable[None] | None:
        if call.sync:
            return None
        model = call.model
        window = self._windows.get(model)
        if window is None:
            window = self._window_for(model)
        with window.lock:
            if window.active < window.limit:
                window.active += 1
                waiter = None
            else:
                key, stride = _lane_of(call)
                waiter = window.enqueue(key, stride, asyncio.get_running_loop())
        if waiter is None:
            call.on_finish(window.release)
            return None
        return _wait(call, window, waiter)

    def load(self, model: ServedModel) -> tuple[int, int]:
        """(slots taken, requests waiting) for a model version: for tests and metrics."""
        window = self._windows.get(model)
        if window is None:
            return 0, 0
        with window.lock:
            return window.active, sum(lane.live for lane in window.lanes.values())

    def _window_for(self, model: ServedModel) -> _Window:
        with self._lock:
            window = self._windows.get(model)
            if window is None:
                window = self._windows[model] = _Window(max(1, int(self._size(model))))
            return window


async def _wait(call: Call, window: _Window, waiter: _Waiter) -> None:
    try:
        await waiter.future
    except BaseException:  # CancelledError: the client went away while the request waited
        window.withdraw(waiter)
        raise
    call.on_finish(window.release)
