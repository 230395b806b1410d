"""Instance processes: a GIL-bound backend (plain Python code) runs in a child process of its own.

Two instances of a pure-Python model on two threads would take turns on one GIL; in two processes they run at
once. `ProcessInstance` is itself a backend with `releases_gil = True`: the instance thread that drives it only
waits on a pipe, so the schedulers treat it like any other thread-friendly instance.

* The child is a fresh interpreter started with `subprocess` (a threaded server is never forked), running
  `worker.py`: it imports only its own model's backend class, by its registry target ("module:Class"), loads the
  model once and then serves `execute` calls one at a time. One process per instance: a model is never loaded into
  a process that does not serve it. Unlike multiprocessing's spawn, the child never imports the server's
  `__main__` module, so a script, a notebook or `python -c` embeds `inferd.Server` with no `__main__` guard.
* Tensors cross through shared memory, not pickles (see memory/arenas.py): the server writes a call's inputs into the
  instance's request arena and copies its outputs out of the response arena once (the arena is reused by the next
  call). BYTES (object) tensors have no fixed size and travel pickled in the pipe message instead.
* During a call the child may send BLS requests (a model calling another model, see bls.py): `_call` hands each
  to the `bls` handler on a thread of its own and keeps listening; the answer goes back over the same pipe.
* A backend exception fails that call only, with the backend's message (an `InferError` keeps its kind). If the
  process dies (a crash, `os._exit`, `kill -9`), the call in flight fails with "model instance process exited
  with code X" and the instance starts a new process (reloading the model) for the next call.
* `abort(reason)` (a request past the model's `request_timeout_ms`) kills the process of the call in flight: the
  call fails with the reason and the process restarts. With `instance_memory_limit_bytes` the child limits its own
  data size (worker.py `limit_memory`); a MemoryError there fails the call with RESOURCE_EXHAUSTED naming the
  limit, and the process is replaced (whatever the model holds may be half-built).
* `unload()` stops the process and unlinks both arenas; instances left running at interpreter exit are stopped
  by an exit hook.
* An instance given a `PythonEnvironment` (a model's own requirements, see environments.py) runs that
  environment's interpreter, and its site-packages go first on the child's `sys.path` before the backend is
  imported.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..config import ConfigError, ModelConfig
from ..memory.arenas import SHM_PREFIX, Header, ServerArena, Tensors, layout, view, write
from ..model_limits import memory_limit_bytes, memory_limit_text
from ..types import ErrorKind, InferError, describe_error
from .bls import BlsHandler, BlsRequest
from .environments import PythonEnvironment
from .worker import command as worker_command

__all__ = ["SHM_PREFIX", "InstanceProcessError", "ProcessInstance"]

log = logging.getLogger("inferd.instances.process")

class InstanceProcessError(RuntimeError):
    """A call on an instance process failed: the backend raised, or the process died."""


class _OverMemoryLimit(Exception):
    """The model raised MemoryError in a process with a memory limit (`instance_memory_limit_bytes`)."""


class _ProcessExited(Exception):
    """The child ended (or closed its pipe) before answering."""

    def __init__(self, exitcode: int | None) -> None:
        if exitcode is None:
            text = "model instance process stopped answering"
        elif exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = f"signal {-exitcode}"
            text = f"model instance process exited with code {exitcode} (killed by {name})"
        else:
            text = f"model instance process exited with code {exitcode}"
        super().__init__(text)
        self.exitcode = exitcode


# ---- the server side ----


class _WorkerProcess:
    """A started instance process (see worker.py): its `Popen`, and a sentinel that becomes readable when it ends.

    The sentinel is the read end of a pipe whose only write end the child holds (multiprocessing's own way): it
    wakes `multiprocessing.connection.wait` when the process exits, whatever became of the process's end of the
    pipe to the server.
    """

    def __init__(self, python: str, conn_fd: int) -> None:
        tracker_fd = multiprocessing.resource_tracker.getfd()  # started (once) with the server's interpreter
        if tracker_fd is None:
            raise OSError("multiprocessing's resource tracker is not running")
        sentinel, alive = os.pipe()
        # The parent watch: the child reads its end until end-of-file, which comes when this process is gone (even
        # killed by SIGKILL), and then exits. Only this process holds the write end (close_fds: no other child
        # inherits it), closed when the instance process has ended or this process exits.
        watched, watch = os.pipe()
        try:
            self._popen = subprocess.Popen(worker_command(python, conn_fd, tracker_fd, watched),
                                           stdin=subprocess.DEVNULL,
                                           pass_fds=(conn_fd, alive, tracker_fd, watched))
        except BaseException:
            os.close(sentinel)
            os.close(watch)
            raise
        finally:
            os.close(alive)
            os.close(watched)
        self.sentinel = sentinel
        self._watch = watch
        self.pid = self._popen.pid

    @property
    def exitcode(self) -> int | None:
        """None while it runs; negative: the signal that ended it."""
        return self._popen.poll()

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    def close(self) -> None:
        sentinel, self.sentinel = self.sentinel, -1
        if sentinel >= 0:
            os.close(sentinel)
        watch, self._watch = self._watch, -1
        if watch >= 0:
            os.close(watch)


class _Child:
    """One started child process and the server's end of its pipe."""

    def __init__(self, process: _WorkerProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.loaded = False
        self.pid = process.pid
        self.send_lock = threading.Lock()  # BLS answers are sent from threads of their own

    def send(self, message: tuple[Any, ...]) -> None:
        try:
            with self.send_lock:
                self.conn.send(message)
        except OSError:  # a broken pipe: the process is gone
            raise self.exited() from None

    def send_quietly(self, message: tuple[Any, ...]) -> None:
        """Send from a BLS thread: a child that has gone meanwhile is the call's thread's to notice."""
        with contextlib.suppress(OSError, ValueError), self.send_lock:
            self.conn.send(message)

    def recv(self) -> Any:
        """The child's next message; `_ProcessExited` if it ends first."""
        ready = multiprocessing.connection.wait([self.conn, self.process.sentinel])
        if self.conn in ready:
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
        raise self.exited()

    def exited(self) -> _ProcessExited:
        self.process.join(timeout=5)
        if self.process.exitcode is None:  # it closed its pipe but lives on: it cannot serve any more
            self.process.kill()
            self.process.join(timeout=5)
            return _ProcessExited(None)
        return _ProcessExited(self.process.exitcode)

    def stop(self, timeout: float) -> None:
        """Ask the child to unload and exit; terminate, then kill, one that does not within `timeout` s."""
        process = self.process
        if process.exitcode is None:
            with contextlib.suppress(OSError):
                self.conn.send(("stop",))
            process.join(timeout)
            if process.exitcode is None:
                log.warning("model instance process %s did not stop in %.0f s; terminating it", self.pid, timeout)
                process.terminate()
                process.join(2)
            if process.exitcode is None:
                process.kill()
                process.join(5)
        self.close()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()

    def close(self) -> None:
        """Close the server's ends: the pipe and the sentinel (the process has ended, or been killed)."""
        self.conn.close()
        self.process.close()


class _Resources:
    """What an instance holds outside this process: its child and its two arenas.

    Kept apart from `ProcessInstance` so that a finalizer (an instance dropped without `unload`) and the exit
    hook can free them without the instance.
    """

    def __init__(self) -> None:
        self.child: _Child | None = None
        self.requests = ServerArena()
        self.responses = ServerArena()

    def release(self, timeout: float) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.stop(timeout)
        self.requests.release()
        self.responses.release()
        _HELD.pop(id(self), None)


# Resources of every instance that has started a process, until released.
_HELD: dict[int, _Resources] = {}
_EXIT_STOP_TIMEOUT_S = 5.0
# Set by `terminate_all` (a shutdown past its deadline): no waiting on instance processes any more, no restarts.
_TERMINATING = threading.Event()
_TERMINATING_WAIT_S = 1.0  # how long an unload then waits for a call's lock (its process is ended already)


def terminate_all(grace: float = 1.0) -> None:
    """End every instance process now: SIGTERM, then SIGKILL to those still running after `grace` s.

    For a shutdown whose time is up: calls blocked on a hung model return (their process is gone), unloads and the
    exit hook stop waiting on the processes, and none is restarted (for the rest of this process's life: it is
    for a process that is exiting). Safe from any thread, and to call again."""
    _TERMINATING.set()
    processes = [child.process for resources in list(_HELD.values())
                 if (child := resources.child) is not None]
    for process in processes:
        if process.exitcode is None:
            log.warning("terminating model instance process %s", process.pid)
            with contextlib.suppress(OSError):
                process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is None:
            with contextlib.suppress(OSError):
                process.kill()
            process.join(1.0)


def _release_all_at_exit() -> None:
    timeout = 0.0 if _TERMINATING.is_set() else _EXIT_STOP_TIMEOUT_S
    for resources in list(_HELD.values()):
        with contextlib.suppress(Exception):
            resources.release(timeout)


atexit.register(_release_all_at_exit)


class ProcessInstance:
    """One model instance in a child process, driven like a thread-friendly backend.

    `ProcessInstance(target, config, files, device)` starts the process and has it load the model without
    waiting; `wait_loaded()` waits for it (and raises what stopped the load), as does the first `execute`.
    So several instances load at the same time. `load(config, files, device)` (the Backend contract) starts
    a new process and waits for it. `unload()` stops the process and unlinks the shared memory; an instance
    dropped without it is cleaned up when collected, and any left at interpreter exit are stopped then.
    With `environment`, the process runs that environment's interpreter with its packages first.
    """

    releases_gil = True  # the calling thread only waits on the pipe

    def __init__(self, target: str, config: ModelConfig | None = None, files: str | Path | None = None,
                 device: str = "cpu", *, stop_timeout: float = 10.0, environment: PythonEnvironment | None = None,
                 bls: BlsHandler | None = None) -> None:
        self.target = target
        self.environment = environment
        self.bls = bls  # runs the model's BLS requests (see bls.py); None: they are answered with an error
        self.stop_timeout = stop_timeout
        self.restarts = 0  # processes started again after one died
        self._config_bytes = b""
        self._files = ""
        self._device = device
        self._name = "model"
        self._version = ""
        self._lock = threading.Lock()
        self._closed = False
        self._memory_limit = 0  # the config's instance_memory_limit_bytes, which the process applies to itself
        # `abort` of a timed-out call: which call (numbered by `_calls`) and why; the child executing it, if any.
        self._calls = 0
        self._aborted: tuple[int, str] | None = None
        self._calling: _Child | None = None
        self._resources = _Resources()
        weakref.finalize(self, self._resources.release, stop_timeout).atexit = False  # _release_all_at_exit
        if config is not None and files is not None:
            self._configure(config, files, device)
            with self._lock:
                self._spawn()

    @property
    def pid(self) -> int | None:
        """The instance process's id (None while none runs)."""
        child = self._resources.child
        return child.pid if child is not None else None

    # ---- Backend contract ----

    def autocomplete(self, config: ModelConfig, files: Path) -> ModelConfig:
        """The server autocompletes with the backend class itself; nothing is loaded here for it."""
        return config

    def load(self, config: ModelConfig, files: Path, device: str) -> None:
        with self._lock:
            self._closed = False
            if self._resources.child is not None:
                self._discard(self._resources.child, stop=True)
            self._configure(config, files, device)
            self._spawn()
            self._wait_loaded_locked()

    def wait_loaded(self) -> None:
        """Wait until the process has loaded the model; raises the reason when it could not."""
        with self._lock:
            self._wait_loaded_locked()

    def execute(self, inputs: Tensors) -> Tensors:
        self._calls += 1  # one call at a time: the scheduler hands an instance to one batch at a time
        call = self._calls
        with self._lock:
            child = self._usable_child()
            self._calling = child  # before the check: an `abort` from now on kills it
            try:
                if self._abort_reason(call) is not None:  # given up while it waited for the instance (a restart)
                    raise InstanceProcessError(f"{self._abort_reason(call)}: it waited for its instance process")
                return self._call(child, inputs)
            except _ProcessExited as exc:
                self._discard(child, stop=False)
                self._restart_in_background()
                reason = self._abort_reason(call)
                if reason is not None:
                    log.error("model '%s': %s; its instance process %s was killed, restarting it", self._name,
                              reason, child.pid)
                    raise InstanceProcessError(f"{reason}: the instance process was killed and is restarting") \
                        from None
                limit = f" (memory limit {memory_limit_text(self._memory_limit)})" if self._memory_limit else ""
                log.error("model '%s': %s during a call%s; restarting it", self._name, exc, limit)
                raise InstanceProcessError(f"{exc}{limit}; the instance is restarting") from None
            except _OverMemoryLimit as exc:
                self._discard(child, stop=False)
                self._restart_in_background()
                message = (f"model '{self._name}' went over its memory limit of "
                           f"{memory_limit_text(self._memory_limit)}: {exc}; the instance process is restarting")
                log.error("%s", message)
                raise InferError(ErrorKind.RESOURCE_EXHAUSTED, message) from None
            finally:
                self._calling = None

    def abort(self, reason: str) -> None:
        """Give up the call in flight (its request timed out): it fails with `reason`; a process executing it is
        killed (the instance restarts), one still loading for it is left to load. Does not wait; any thread."""
        self._aborted = (self._calls, reason)
        child = self._calling
        if child is not None:
            child.kill()

    def _abort_reason(self, call: int) -> str | None:
        aborted = self._aborted
        return aborted[1] if aborted is not None and aborted[0] == call else None

    def unload(self) -> None:
        """Stop the process (it unloads the model) and free the shared memory."""
        self._closed = True
        terminating = _TERMINATING.is_set()
        stop_timeout = 0.0 if terminating else self.stop_timeout
        locked = self._lock.acquire(timeout=_TERMINATING_WAIT_S if terminating else self.stop_timeout)
        if not locked:
            child = self._resources.child  # a call (or a restart) holds the lock: end its process so it lets go
            if child is not None:
                child.kill()
            # The call sees its process gone and lets go; never wait on it without an end.
            locked = self._lock.acquire(timeout=_TERMINATING_WAIT_S if terminating else self.stop_timeout)
            if not locked:
                log.warning("model '%s': a call still holds the instance after its process was killed; "
                            "releasing the instance without it", self._name)
        try:
            self._resources.release(stop_timeout)
        finally:
            if locked:
                self._lock.release()

    # ---- process lifecycle (with the lock held) ----

    def _configure(self, config: ModelConfig, files: str | Path, device: str) -> None:
        self._config_bytes = config.SerializeToString()
        self._files = str(files)
        self._device = device
        self._name = config.name or self._name
        self._version = Path(files).name
        self._memory_limit = memory_limit_bytes(config)

    def _spawn(self) -> _Child:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        environment = self.environment
        python = str(environment.python) if environment is not None else sys.executable
        _HELD[id(self._resources)] = self._resources
        try:
            process = _WorkerProcess(python, child_end.fileno())
        except OSError as exc:
            parent_end.close()
            raise ConfigError(f"cannot start a model instance process with {python}: {exc.strerror or exc}") from None
        finally:
            child_end.close()  # the child holds the only other end: its exit shows as end-of-file here
        child = _Child(process, parent_end)
        self._resources.child = child
        site_dirs = environment.site_dirs if environment is not None else ()
        # What to load; a child that is gone already is noticed by whoever waits for its answer.
        with contextlib.suppress(_ProcessExited):
            child.send((self.target, self._config_bytes, self._files, self._device, site_dirs))
        return child

    def _wait_loaded_locked(self) -> None:
        child = self._resources.child
        if child is None:
            if self._closed:
                raise InferError.unavailable(f"model '{self._name}' instance is unloaded")
            child = self._spawn()
        if child.loaded:
            return
        try:
            reply = child.recv()
        except _ProcessExited as exc:
            self._discard(child, stop=False)
            # It died before it could report why (a crash, a kill, an interpreter that cannot import inferd);
            # what it printed is on the server's standard error.
            raise ConfigError(f"{exc} while loading the model (its reason is on the server's standard error)") from None
        if reply[0] == "ready":
            child.loaded = True
            return
        self._discard(child, stop=True)
        _, kind, type_name, message, remote_traceback = reply
        log.debug("model '%s' failed to load in its instance process:\n%s", self._name, remote_traceback)
        if kind is not None:
            raise InferError(ErrorKind[kind], message)
        if self._memory_limit and "MemoryError" in f"{type_name} {message}":
            message = f"{message} (memory limit {memory_limit_text(self._memory_limit)})"
        if type_name == "ConfigError":
            raise ConfigError(message)
        raise ConfigError(f"{type_name}: {message}")

    def _usable_child(self) -> _Child:
        if self._closed:
            raise InferError.unavailable(f"model '{self._name}' instance is unloaded")
        child = self._resources.child
        if child is not None and child.loaded and child.process.exitcode is not None:
            log.error("model '%s': instance process %s exited with code %s while idle; restarting it",
                      self._name, child.pid, child.process.exitcode)
            self._discard(child, stop=False)
            child = None
        if child is None or not child.loaded:
            try:
                self._wait_loaded_locked()
            except (ConfigError, InferError) as exc:
                message = exc.message if isinstance(exc, InferError) else str(exc)
                raise InstanceProcessError(f"model instance process could not load the model: {message}") from None
            child = self._resources.child
            assert child is not None
        return child

    def _discard(self, child: _Child, *, stop: bool) -> None:
        if stop:
            child.stop(self.stop_timeout)
        else:
            child.kill()
            child.process.join(5)
            child.close()
        if self._resources.child is child:
            self._resources.child = None

    def _restart_in_background(self) -> None:
        if _TERMINATING.is_set():
            return  # shutting down: no new processes

        def restart() -> None:
            with self._lock:
                if self._closed or _TERMINATING.is_set() or self._resources.child is not None:
                    return
                self.restarts += 1
                try:
                    self._spawn()
                    self._wait_loaded_locked()
                except Exception as exc:  # the next call tries again and reports it
                    log.error("model '%s': instance process could not be restarted: %s", self._name, exc)
                else:
                    log.info("model '%s': instance process restarted (pid %s)", self._name, self.pid)

        threading.Thread(target=restart, name=f"inferd-restart-{self._name}", daemon=True).start()

    # ---- one call ----

    def _call(self, child: _Child, inputs: Tensors) -> Tensors:
        headers, pickled, size = layout(inputs)
        requests, responses = self._resources.requests, self._resources.responses
        request = requests.ensure(size) if headers else None
        write(request, headers, inputs)
        answered = False
        try:
            child.send(("execute", requests.name, headers, pickled, responses.name, responses.size))
            grow_error: InferError | None = None
            while True:
                reply = child.recv()
                tag = reply[0]
                if tag == "grow":
                    try:
                        name = responses.ensure(reply[1]).name
                    except InferError as exc:  # the child fails the call; its answer comes next
                        grow_error, name = exc, None
                    child.send(("arena", name))
                elif tag == "bls":
                    self._start_bls(child, reply)
                else:
                    break
            answered = True
        finally:
            if not answered and child.process.exitcode is None:
                child.kill()  # interrupted mid-exchange: this pipe can no longer be trusted
                child.process.join(5)  # so the next call sees it gone, and starts another
        if grow_error is not None:
            raise grow_error
        if reply[0] == "done":
            return self._read(reply[1], reply[2])
        _, kind, type_name, message, remote_traceback = reply
        log.debug("model '%s' raised in its instance process:\n%s", self._name, remote_traceback)
        if type_name == "MemoryError" and self._memory_limit:
            raise _OverMemoryLimit(message)
        if kind is not None:
            raise InferError(ErrorKind[kind], message)
        raise InstanceProcessError(message)

    def _start_bls(self, child: _Child, message: tuple[Any, ...]) -> None:
        """Run a BLS request of the call in flight on a thread of its own, so that several may run at once and
        this thread goes on listening (for more of them, and for the call's answer)."""
        _, call_id, model_name, version, inputs, outputs, timeout_us = message
        request = BlsRequest(str(model_name), str(version), dict(inputs), list(outputs), int(timeout_us))
        caller = (self._name, self._version)
        handler = self.bls

        def run() -> None:
            error: tuple[str, str] | None = None
            results: Tensors | None = None
            try:
                if handler is None:
                    raise InferError(ErrorKind.UNSUPPORTED, "BLS requests need a server: this instance runs alone")
                results = handler(caller, request)
            except InferError as exc:
                error = (exc.kind.name, exc.message)
            except Exception as exc:
                error = (ErrorKind.INTERNAL.name, describe_error(exc))
            child.send_quietly(("bls", call_id, error, results))

        threading.Thread(target=run, name=f"inferd-bls-{self._name}", daemon=True).start()

    def _read(self, headers: list[Header], pickled: Tensors) -> Tensors:
        """The outputs, copied out of the response arena (the next call overwrites it)."""
        outputs: Tensors = {}
        shm = self._resources.responses.shm
        for header in headers:
            assert shm is not None
            tensor = view(shm, header)
            outputs[header[0]] = tensor.copy()
            del tensor
        outputs.update(pickled)
        return outputs
