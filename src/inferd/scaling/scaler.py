"""The scaler: one thread that watches every model with instances, and what it decides.

- **Scale to zero**: a model idle for its window (`idle_unload_seconds`, else `--model-idle-unload-secs`) has its
  instances unloaded; its `ServedModel` stays (config, metadata, statistics), listed READY "scaled to zero", with a
  `ColdScheduler` in place of its scheduler. From then on the `wake` stage holds its requests; the first one starts
  the load (new instances made as the first ones were: `ServedModel.spawn`), and all of them go on once it is done.
- **Memory limit** (`--model-memory-limit`): each model's resident memory is measured as it loads (the server's
  RSS growth plus its instance processes'); before a load, the least recently used idle models (no request in
  flight or queued, not `pinned`) are evicted until it fits. Loads run one at a time, so measurements do not mix.
- **Instance autoscaling** (`autoscale_*` parameters): see `_autoscale`.

Loaded models pay nothing for any of this: the thread reads their statistics' pending count; the `wake` stage
(installed only when some model can scale to zero) notes the time of each request.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from ..backends import Backend
from ..manager import ModelEntry, ModelManager
from ..model import ServedModel
from ..pipeline import Stage
from ..scheduling import Scheduler
from ..types import InferError, describe_error, public_error_text
from .cold import ColdScheduler, is_cold
from .memory import Footprint, folder_bytes, instances_rss, release_freed_memory
from .metrics import ScalingMetrics
from .params import AutoscalePolicy, autoscale_policy, idle_unload_seconds, pinned
from .wake import WakeStage

log = logging.getLogger("inferd.scaling")

SCALED_TO_ZERO = "scaled to zero"
EVICTED = "scaled to zero (evicted to stay under --model-memory-limit)"
# A request that passed the `wake` stage just before its model began to scale down reaches the model's statistics
# (its pending count) within microseconds; scaling down waits this long before trusting "nothing pending".
_GRACE_S = 0.05
# How long removing an instance waits for one to finish its batch.
_REMOVE_WAIT_S = 1.0


class Waker:
    """The requests held for one load of a model: `done` completes (or fails with the reason) when it is loaded."""

    __slots__ = ("done", "held", "started")

    def __init__(self) -> None:
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.held = 0
        self.started = False


class Tracked:
    """What the scaler knows of one model (a name with instance versions)."""

    __slots__ = ("counts", "idle_s", "lock", "memory", "name", "over_since", "pinned", "policy", "quiet_since",
                 "used", "waker")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.used = now  # the last request's time (the wake stage sets it)
        self.waker: Waker | None = None  # set while the model is (going) cold: requests are held on it
        self.lock = threading.Lock()  # scaling down and waking one model never overlap
        self.memory = 0  # measured resident bytes while loaded (0 until measured; kept while cold)
        self.counts: dict[int, int] = {}  # instances per version when it went cold (what waking makes)
        self.idle_s = 0.0
        self.pinned = False
        self.policy: AutoscalePolicy | None = None
        self.over_since: float | None = None  # autoscaler: since when pending per instance is above target
        self.quiet_since: float | None = None  # autoscaler: since when nothing is pending


class Scaler:
    def __init__(self, manager: ModelManager, install: Callable[[Stage], None], *, idle_unload_s: float = 0.0,
                 load_timeout_s: float = 300.0, held_limit: int = 10000, memory_limit: int = 0) -> None:
        self.manager = manager
        self._install = install  # adds the wake stage to the pipeline (once some model can scale to zero)
        self.idle_unload_s = idle_unload_s
        self.load_timeout_s = load_timeout_s
        self.held_limit = held_limit
        self.memory_limit = memory_limit
        self.states: dict[str, Tracked] = {}
        self.metrics = ScalingMetrics(self)
        self.stage: WakeStage | None = None
        self._loading = threading.Lock()  # one load at a time: each measurement is one model's
        self._wake_lock = threading.Lock()  # the first held request starts the load, once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- start, stop ----

    def load_all(self, names: list[str] | None) -> None:
        """Load the models at start-up. Under a memory limit one at a time, each measured, the least recently
        loaded idle ones evicted as the limit requires; without one, as the manager loads them."""
        if not self.memory_limit:
            self.manager.load_all(names)
            release_freed_memory()  # what loading freed again (a model file read, a graph before optimising)
            return
        models, problems = self.manager.repository.scan()
        self.manager.load_all([])  # records the repository's problems
        for name in sorted(models) if names is None else names:
            if name in problems:
                continue
            before = Footprint()
            self.manager.load_all([name], workers=1)
            self.refresh()
            state = self.states.get(name)
            if state is not None:
                state.used = time.monotonic()
                state.memory = self._measured(name, before.growth(), _instances(self.manager.entry(name)))
                self._fit(state)

    def start(self) -> None:
        self.refresh()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inferd-scaler", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for state in list(self.states.values()):
            waker = state.waker
            if waker is not None and not waker.done.done():
                waker.done.set_exception(InferError.unavailable("the server is shutting down"))

    def _run(self) -> None:
        while not self._stop.wait(self._tick_s()):
            try:
                self.tick()
            except Exception:  # one bad pass must not end scaling
                log.exception("scaling pass failed")

    def _tick_s(self) -> float:
        """A fifth of the shortest window in use (between 0.05 and 1 s)."""
        windows = [s.idle_s for s in self.states.values() if s.idle_s > 0]
        windows += [s.policy.window_s for s in self.states.values() if s.policy is not None]
        return max(0.05, min([1.0, *(w / 5 for w in windows)]))

    # ---- what is tracked ----

    def refresh(self) -> None:
        """Track every model with instance versions (not graphs), with its parameters as loaded now."""
        now = time.monotonic()
        seen = set()
        for name in self.manager.names():
            entry = self.manager.entry(name)
            if entry is None or entry.config is None or not any(m.spawn is not None for m in entry.ready):
                continue
            seen.add(name)
            state = self.states.get(name)
            if state is None:
                state = self.states[name] = Tracked(name, now)
                if self.memory_limit:  # loaded since start-up (the repository API, polling): its files, until
                    state.memory = self._measured(name, 0, [])  # it is measured as it loads from zero
            config = entry.config
            state.idle_s = idle_unload_seconds(config, self.idle_unload_s)
            state.pinned = pinned(config)
            state.policy = autoscale_policy(config)
            if self.stage is None and (state.idle_s > 0 or self.memory_limit):
                self.stage = WakeStage(self.states, self._start_wake, self.held_limit, self.load_timeout_s)
                self._install(self.stage)
        for name in [n for n in self.states if n not in seen]:
            state = self.states.pop(name)
            if state.waker is not None and not state.waker.done.done():
                state.waker.done.set_result(None)  # gone: `resolve` says so to the held requests

    def tick(self) -> None:
        self.refresh()
        now = time.monotonic()
        for state in list(self.states.values()):
            entry = self.manager.entry(state.name)
            if entry is None or state.waker is not None:
                continue
            versions = [m for m in entry.ready if m.spawn is not None]
            cold = any(is_cold(m.scheduler) for m in versions)
            if cold:
                continue
            if state.idle_s > 0 and now - state.used >= state.idle_s and not _pending(versions):
                self.scale_to_zero(state, SCALED_TO_ZERO, blocking=False)
                continue
            if state.policy is not None:
                for served in versions:
                    self._autoscale(state, state.policy, served, now)

    # ---- scale to zero ----

    def scale_to_zero(self, state: Tracked, reason: str, *, blocking: bool = True) -> bool:
        """Unload the model's instances (it stays listed READY with `reason`); False when it is busy, or busy
        being loaded (`blocking=False`)."""
        if not state.lock.acquire(blocking=blocking):
            return False
        try:
            entry = self.manager.entry(state.name)
            versions = [m for m in entry.ready if m.spawn is not None and not is_cold(m.scheduler)] if entry else []
            if not versions or state.waker is not None:
                return False
            waker = state.waker = Waker()  # from now on its requests are held
            time.sleep(_GRACE_S)
            if _pending(versions):  # one arrived just before: it stays loaded
                state.waker = None
                _settle(waker)
                return False
            state.counts = {m.version: len(m.scheduler.pool.instances) for m in versions}
            # A backend that can make its next load faster (ONNX Runtime keeps its optimized graph) prepares it
            # once the lock is released: a request arriving meanwhile wakes the model as usual. Not for an
            # eviction: that needs the memory now, and preparing takes as much as the model for a while.
            prepares = [hook for hook in (getattr(m.scheduler.pool.instances[0], "prepare_reload", None)
                                          for m in versions if m.scheduler.pool.instances and reason != EVICTED)
                        if hook is not None]
            for served in versions:
                _unload(served)
            _set_reason(entry, versions, reason)
            self.metrics.scaled_down(state.name, reason)
        finally:
            state.lock.release()
        release_freed_memory()
        log.info("model '%s' %s", state.name, reason)
        if prepares:
            threading.Thread(target=_prepare_reload, args=(state.name, prepares), name=f"inferd-prepare-{state.name}",
                             daemon=True).start()
        return True

    def _start_wake(self, state: Tracked, waker: Waker) -> None:
        """The first request held on `waker` starts the load (the wake stage calls this for each)."""
        if waker.started:
            return
        with self._wake_lock:
            if waker.started:
                return
            waker.started = True
        threading.Thread(target=self._wake, args=(state, waker), name=f"inferd-wake-{state.name}",
                         daemon=True).start()

    def _wake(self, state: Tracked, waker: Waker) -> None:
        started = time.monotonic()
        try:
            with self._loading, state.lock:
                woke = self._load_cold(state)
        except Exception as exc:
            error = exc if isinstance(exc, InferError) else InferError.unavailable(
                f"model '{state.name}' was scaled to zero and failed to load: "
                f"{public_error_text(describe_error(exc))}")
            log.error("model '%s' failed to load from zero: %s", state.name, describe_error(exc))
            state.waker = Waker()  # the next request tries again
            if not waker.done.done():
                waker.done.set_exception(error)
            return
        state.waker = None
        _settle(waker)
        if woke:
            seconds = time.monotonic() - started
            self.metrics.cold_start(state.name, seconds)
            log.info("model '%s' loaded from zero in %.3f s", state.name, seconds)

    def _load_cold(self, state: Tracked) -> bool:
        """Make the instances of the model's cold versions (called with the load lock and the model's lock)."""
        entry = self.manager.entry(state.name)
        cold = [m for m in entry.ready if is_cold(m.scheduler)] if entry else []
        if not cold:
            return False
        self._make_room(state)
        before = Footprint()
        instances: list[tuple[ServedModel, list[Backend]]] = []
        try:
            for served in cold:
                spawn = served.spawn
                assert spawn is not None
                count = state.counts.get(served.version) or sum(max(1, g.count) for g in served.config.instance_group)
                made: list[Backend] = []
                instances.append((served, made))
                for _ in range(count):
                    made.append(spawn())
        except BaseException:
            for _, made in instances:
                for instance in made:
                    with contextlib.suppress(Exception):
                        instance.unload()
            release_freed_memory()
            raise
        for served, made in instances:
            served.scheduler = self.manager.make_scheduler(served.name, served.version, served.config, made,
                                                           served.stats)
        state.memory = self._measured(state.name, before.growth(), [i for _, made in instances for i in made])
        state.used = time.monotonic()
        _set_reason(entry, cold, "")
        error = self._fit(state)
        if error is not None:
            raise error
        return True

    # ---- memory ----

    def resident(self, exclude: Tracked | None = None) -> int:
        """The measured memory of the loaded models (`exclude` left out)."""
        total = 0
        for state in list(self.states.values()):
            if state is not exclude and not self.is_cold(state.name):
                total += state.memory
        return total

    def _measured(self, name: str, growth: int, instances: list[Backend]) -> int:
        """A model's resident memory: what the server grew by while it loaded (RSS, or the heap in use when more:
        pages an evicted model freed and the allocator kept hide a load's RSS growth), plus its instance
        processes'; at least the size of its files."""
        entry = self.manager.entry(name)
        folder = (entry.override if entry is not None else None) or self.manager.repository.find(name)
        return max(max(0, growth) + instances_rss(instances), folder_bytes(folder))

    def memory_of(self, name: str) -> int:
        """A model's measured resident memory; 0 while cold, or when not measured (it is measured as it loads
        under a memory limit, and whenever it loads from zero)."""
        state = self.states.get(name)
        return 0 if state is None or self.is_cold(name) else state.memory

    def is_cold(self, name: str) -> bool:
        entry = self.manager.entry(name)
        return entry is not None and any(is_cold(m.scheduler) for m in entry.ready)

    def _make_room(self, state: Tracked) -> None:
        """Before `state`'s model loads: evict least recently used idle models until its last measured memory
        fits; wait (up to the load timeout) while only busy ones could make room."""
        limit = self.memory_limit
        if not limit:
            return
        if state.memory > limit:
            raise _too_big(state, limit)
        deadline = time.monotonic() + self.load_timeout_s
        while self.resident(exclude=state) + state.memory > limit:
            if self._evict_one(exclude=state):
                continue
            if time.monotonic() > deadline:
                raise InferError.unavailable(
                    f"model '{state.name}' does not fit under --model-memory-limit ({limit} bytes): the models "
                    f"using it are busy or pinned")
            time.sleep(0.02)

    def _fit(self, state: Tracked) -> InferError | None:
        """After `state`'s model loaded and was measured: a model larger than the limit is unloaded and
        UNAVAILABLE with why (returned); otherwise others are evicted until the limit holds (as far as idle ones
        allow)."""
        limit = self.memory_limit
        if not limit:
            return None
        if state.memory > limit:
            error = _too_big(state, limit)
            log.error("%s", error.message)
            with contextlib.suppress(InferError):
                self.manager.unload(state.name)
            release_freed_memory()
            entry = self.manager.entry(state.name)
            if entry is not None:
                entry.reason = error.message
            return error
        while self.resident() > limit and self._evict_one(exclude=state):
            pass
        return None

    def _evict_one(self, exclude: Tracked) -> bool:
        """Scale the least recently used idle, unpinned model to zero; False when there is none."""
        candidates = []
        for other in list(self.states.values()):
            if other is exclude or other.pinned or other.waker is not None or self.is_cold(other.name):
                continue
            entry = self.manager.entry(other.name)
            if entry is None or _pending(entry.ready):
                continue
            candidates.append(other)
        for victim in sorted(candidates, key=lambda s: s.used):
            if self.scale_to_zero(victim, EVICTED, blocking=False):
                self.metrics.evicted(victim.name)
                return True
        return False

    # ---- instance autoscaling ----

    def _autoscale(self, state: Tracked, policy: AutoscalePolicy, served: ServedModel, now: float) -> None:
        """One more instance when the pending requests per instance stayed above the target for a whole window;
        one fewer after a whole window with nothing pending; never outside [min, max]."""
        pool = served.scheduler.pool
        count = len(pool.instances)
        if count < policy.min_instances:
            self._add_instance(served)
            return
        pending = served.stats.pending
        state.over_since = (state.over_since or now) if pending > policy.target_pending * count else None
        state.quiet_since = (state.quiet_since or now) if pending == 0 else None
        if state.over_since is not None and now - state.over_since >= policy.window_s \
                and count < policy.max_instances:
            self._add_instance(served)
            state.over_since = now
        elif (state.quiet_since is not None and now - state.quiet_since >= policy.window_s
              and count > policy.min_instances) or count > policy.max_instances:
            self._remove_instance(served)
            state.quiet_since = now

    def _add_instance(self, served: ServedModel) -> None:
        spawn = served.spawn
        scheduler = served.scheduler
        add = getattr(scheduler.pool, "add", None)
        if spawn is None or add is None:
            return
        try:
            instance = spawn()
        except Exception as exc:
            log.error("model '%s' version %d: another instance failed to load: %s", served.name, served.version,
                      describe_error(exc))
            return
        add(instance)
        _resized(served, scheduler)
        log.info("model '%s' version %d: scaled up to %d instances", served.name, served.version,
                 len(scheduler.pool.instances))

    def _remove_instance(self, served: ServedModel) -> None:
        scheduler = served.scheduler
        remove = getattr(scheduler.pool, "remove_idle", None)
        instance = remove(_REMOVE_WAIT_S) if remove is not None else None
        if instance is None:
            return
        _resized(served, scheduler)
        try:
            instance.unload()
        except Exception:
            log.exception("model '%s' version %d: unloading an instance failed", served.name, served.version)
        release_freed_memory()
        log.info("model '%s' version %d: scaled down to %d instances", served.name, served.version,
                 len(scheduler.pool.instances))


def _prepare_reload(name: str, hooks: list[Callable[[], None]]) -> None:
    started = time.monotonic()
    for hook in hooks:
        try:
            hook()
        except Exception as exc:  # only the next load's speed is at stake
            log.debug("model '%s': preparing its next load failed: %s", name, describe_error(exc))
    release_freed_memory()
    log.info("model '%s': its next load prepared in %.3f s", name, time.monotonic() - started)


def _pending(versions: list[ServedModel]) -> int:
    return sum(m.stats.pending for m in versions)


def _instances(entry: ModelEntry | None) -> list[Backend]:
    return [i for m in (entry.ready if entry else []) for i in m.scheduler.pool.instances]


def _settle(waker: Waker) -> None:
    if not waker.done.done():
        waker.done.set_result(None)


def _unload(served: ServedModel) -> None:
    """Swap in a ColdScheduler, then stop the old scheduler and free its instances."""
    old = served.scheduler
    served.scheduler = ColdScheduler(getattr(old, "name", served.name),
                                     f"model '{served.name}' version {served.version}")
    old.close()
    for instance in old.pool.instances:
        try:
            instance.unload()
        except Exception:  # a backend that fails to clean up must not keep the others
            log.exception("model '%s' version %d: unload failed", served.name, served.version)


def _set_reason(entry: ModelEntry | None, versions: list[ServedModel], reason: str) -> None:
    """The versions' reason in the repository index (their state stays READY)."""
    if entry is None:
        return
    for served in versions:
        status = entry.versions.get(served.version)
        if status is not None and status.served is served:
            status.reason = reason


def _resized(served: ServedModel, scheduler: Scheduler) -> None:
    """The scheduler learns its pool's new size; the config answer shows the count."""
    hook = getattr(scheduler, "resized", None)
    if hook is not None:
        hook()
    groups = served.config.instance_group
    if groups:
        count = len(scheduler.pool.instances)
        others = sum(g.count for g in groups[1:])
        groups[0].count = max(1, count - others)


def _too_big(state: Tracked, limit: int) -> InferError:
    return InferError.unavailable(f"model '{state.name}' needs {state.memory} bytes, more than "
                                  f"--model-memory-limit ({limit} bytes)")
