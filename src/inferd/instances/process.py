"""Instance processes: a GIL-bound backend (plain Python code) runs in a child process of its own.

Two instances of a pure-Python model on two threads would take turns on one GIL; in two processes they run at
once. `ProcessInstance` is itself a backend with `releases_gil = True`: the instance thread that drives it only
waits on a pipe, so the schedulers treat it like any other thread-friendly instance.

* The child is started with multiprocessing's "spawn" method (a threaded server is never forked). It imports
  only its own model's backend class, by its registry target ("module:Class"), loads the model once and then
  serves `execute` calls one at a time. One process per instance: a model is never loaded into a process that
  does not serve it. Like any spawned process, the child imports the server's `__main__` module (as
  `__mp_main__`): a script that embeds `inferd.Server` needs the usual `if __name__ == "__main__":` guard.
* Tensors cross through shared memory, not pickles. Each instance has a request arena and a response arena
  (`multiprocessing.shared_memory` segments the server process creates, grows and unlinks; the child only maps
  them). The pipe carries a small header per tensor (name, dtype, shape, offset); the child's inputs are numpy
  views of the request arena (no copy) and it writes its outputs into the response arena, which the server
  copies out once (the arena is reused by the next call). BYTES (object) tensors have no fixed size and travel
  pickled in the pipe message instead.
* During a call the child may send BLS requests (a model calling another model, see bls.py): `_call` hands each
  to the `bls` handler on a thread of its own and keeps listening; the answer goes back over the same pipe.
* A backend exception fails that call only, with the backend's message (an `InferError` keeps its kind). If the
  process dies (a crash, `os._exit`, `kill -9`), the call in flight fails with "model instance process exited
  with code X" and the instance starts a new process (reloading the model) for the next call.
* `unload()` stops the process and unlinks both arenas; instances left running at interpreter exit are stopped
  by an exit hook (their children are not daemonic, so a model may start processes of its own).
* An instance given a `PythonEnvironment` (a model's own requirements, see environments.py) is spawned with that
  environment's interpreter, and its site-packages go first on the child's `sys.path` before the backend is
  imported. multiprocessing's executable is process-wide, so every spawn here holds `_SPAWN_LOCK` around it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import multiprocessing.spawn
import multiprocessing.util  # its exit hook is registered now, so ours (see _hold) always comes after and runs first
import os
import pkgutil
import secrets
import signal
import threading
import traceback
import weakref
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, ModelConfig
from ..types import ErrorKind, InferError
from .bls import BlsHandler, BlsRequest, Channel, set_channel
from .environments import PythonEnvironment, enter_environment

__all__ = ["SHM_PREFIX", "InstanceProcessError", "ProcessInstance"]

log = logging.getLogger("inferd.instances.process")

Tensors = dict[str, np.ndarray]
# (name, dtype str, shape, offset): where one fixed-size tensor lies in an arena.
Header = tuple[str, str, tuple[int, ...], int]

SHM_PREFIX = "inferd-"  # shared memory segments are /dev/shm/inferd-<server pid>-<random>
_ALIGN = 64
_MIN_ARENA = 1 << 16
_PAGE = 1 << 12


class InstanceProcessError(RuntimeError):
    """A call on an instance process failed: the backend raised, or the process died."""


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


# ---- tensors in arenas (both sides) ----


def _aligned(size: int, to: int = _ALIGN) -> int:
    return (size + to - 1) // to * to


def _layout(tensors: Tensors) -> tuple[list[Header], Tensors, int]:
    """Headers of the fixed-size tensors, the tensors that go pickled (object or structured dtypes), total bytes."""
    headers: list[Header] = []
    pickled: Tensors = {}
    offset = 0
    for name, value in tensors.items():
        if value.dtype.hasobject or value.dtype.fields is not None:
            pickled[name] = value
            continue
        headers.append((name, value.dtype.str, tuple(value.shape), offset))
        offset += _aligned(value.nbytes)
    return headers, pickled, offset


def _view(shm: SharedMemory, header: Header) -> np.ndarray:
    _, dtype, shape, offset = header
    return np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=offset)


def _write(shm: SharedMemory | None, headers: list[Header], tensors: Tensors) -> None:
    if shm is None:
        return
    for header in headers:
        view = _view(shm, header)
        view[...] = tensors[header[0]]
        del view


def _close_mapping(shm: SharedMemory) -> bool:
    """Unmap a segment; False when numpy views of it are still alive (it is unmapped when they go)."""
    try:
        shm.close()
    except BufferError:
        return False
    return True


class _Arena:
    """A shared memory segment owned by the server process: created, grown and unlinked here, mapped by the child."""

    def __init__(self) -> None:
        self.shm: SharedMemory | None = None

    @property
    def name(self) -> str | None:
        return self.shm.name if self.shm is not None else None

    @property
    def size(self) -> int:
        return self.shm.size if self.shm is not None else 0

    def ensure(self, size: int) -> SharedMemory:
        """The segment, replaced by a larger one (at least double) when it holds fewer than `size` bytes."""
        shm = self.shm
        if shm is not None and shm.size >= size:
            return shm
        new_size = _aligned(max(size, 2 * self.size, _MIN_ARENA), _PAGE)
        new = SharedMemory(f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(6)}", create=True, size=new_size)
        try:
            # Reserve the pages now: a full /dev/shm then fails here, not with SIGBUS on the first write.
            fd = getattr(new, "_fd", -1)
            if fd >= 0 and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, new_size)
        except OSError as exc:
            _close_mapping(new)
            new.unlink()
            raise InferError(ErrorKind.RESOURCE_EXHAUSTED,
                             f"cannot allocate {new_size} bytes of shared memory for a model instance: "
                             f"{exc.strerror or exc}") from None
        self.release()
        self.shm = new
        return new

    def release(self) -> None:
        shm, self.shm = self.shm, None
        if shm is not None:
            _close_mapping(shm)
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()


# ---- the child process ----


class _ChildArenas:
    """The child's mappings of the server's arenas, remapped when the server replaces one."""

    def __init__(self) -> None:
        self.mapped: dict[str, SharedMemory] = {}  # role ("request" / "response") -> mapping
        self.lingering: list[SharedMemory] = []  # replaced mappings a backend still holds views of

    def get(self, role: str, name: str) -> SharedMemory:
        shm = self.mapped.get(role)
        if shm is not None and shm.name == name:
            return shm
        if shm is not None and not _close_mapping(shm):
            self.lingering.append(shm)
        self.lingering = [s for s in self.lingering if not _close_mapping(s)]
        # Python < 3.13 registers a mapped segment with the resource tracker too; a spawned child shares the
        # server's tracker, and the server unregisters the name when it unlinks the segment.
        shm = SharedMemory(name, create=False)
        self.mapped[role] = shm
        return shm

    def close(self) -> None:
        for shm in [*self.mapped.values(), *self.lingering]:
            _close_mapping(shm)
        self.mapped.clear()
        self.lingering.clear()


def _describe(exc: BaseException) -> tuple[str, str | None, str, str, str]:
    """A backend exception as plain data for the pipe: ("failed", InferError kind, type, message, traceback)."""
    kind = exc.kind.name if isinstance(exc, InferError) else None
    message = " ".join(str(exc).split()) or type(exc).__name__
    return "failed", kind, type(exc).__name__, message, "".join(traceback.format_exception(exc))


def _child_outputs(value: object) -> Tensors:
    if not isinstance(value, dict):
        raise TypeError(f"execute returned {type(value).__name__}, not a dict of output name -> array")
    return {str(name): np.asarray(array) for name, array in value.items()}


def _child_execute(channel: Channel, arenas: _ChildArenas, backend: Any, message: tuple[Any, ...]) -> tuple[Any, ...]:
    _, request_name, headers, pickled, response_name, response_size = message
    inputs: Tensors = dict(pickled)
    if headers:
        request = arenas.get("request", request_name)
        for header in headers:
            inputs[header[0]] = _view(request, header)
    channel.active = True  # the server listens for BLS requests until this call's answer
    try:
        outputs = _child_outputs(backend.execute(inputs))
    finally:
        channel.active = False
    del inputs
    out_headers, out_pickled, size = _layout(outputs)
    if size > response_size:
        channel.send(("grow", size))
        response_name = channel.receive("arena")[1]
        if response_name is None:
            raise MemoryError(f"the server could not allocate {size} bytes of shared memory for the outputs")
    response = arenas.get("response", response_name) if out_headers else None
    _write(response, out_headers, outputs)
    return "done", out_headers, out_pickled


def _child_main(conn: Connection, target: str, config_bytes: bytes, files: str, device: str,
                site_dirs: tuple[str, ...] = ()) -> None:
    """The instance process: load the model, then answer execute calls until told to stop or the server goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the server's to handle; it stops its instances
    try:
        enter_environment(site_dirs)
        backend: Any = pkgutil.resolve_name(target)()  # "module:Class", the registry's target
        backend.load(ModelConfig.FromString(config_bytes), Path(files), device)
    except BaseException as exc:  # whatever stops the load is the reason the instance is unavailable
        conn.send(_describe(exc))
        return
    conn.send(("ready", os.getpid()))
    arenas = _ChildArenas()
    channel = Channel(conn)  # from now on the pipe's only reader (BLS replies may come to other threads)
    set_channel(channel)
    try:
        while True:
            try:
                message = channel.receive("command")
            except EOFError:
                return  # the server went away
            if message[0] == "stop":
                return
            try:
                reply = _child_execute(channel, arenas, backend, message)
            except EOFError:
                return  # the server went away while this call asked for a larger response arena
            except Exception as exc:
                reply = _describe(exc)
            try:
                channel.send(reply)
            except OSError:
                return
    finally:
        set_channel(None)
        try:
            backend.unload()
        except Exception:
            traceback.print_exc()
        arenas.close()


# ---- the server side ----


class _Child:
    """One started child process and the server's end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
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
        self.conn.close()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()


class _Resources:
    """What an instance holds outside this process: its child and its two arenas.

    Kept apart from `ProcessInstance` so that a finalizer (an instance dropped without `unload`) and the exit
    hook can free them without the instance.
    """

    def __init__(self) -> None:
        self.child: _Child | None = None
        self.requests = _Arena()
        self.responses = _Arena()

    def release(self, timeout: float) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.stop(timeout)
        self.requests.release()
        self.responses.release()
        _HELD.pop(id(self), None)


# multiprocessing's spawn executable is one global: spawns take turns so each starts with its own interpreter.
_SPAWN_LOCK = threading.Lock()


def _start(process: BaseProcess, executable: str | None) -> None:
    """Start a spawned process with `executable` (None: the server's own interpreter)."""
    with _SPAWN_LOCK:
        if executable is None:
            process.start()
            return
        multiprocessing.resource_tracker.ensure_running()  # with the server's interpreter, not the model's
        previous = multiprocessing.spawn.get_executable()
        multiprocessing.spawn.set_executable(executable)
        try:
            process.start()
        finally:
            multiprocessing.spawn.set_executable(previous)


# Resources of every instance that has started a process, until released.
_HELD: dict[int, _Resources] = {}
_EXIT_STOP_TIMEOUT_S = 5.0


def _release_all_at_exit() -> None:
    for resources in list(_HELD.values()):
        with contextlib.suppress(Exception):
            resources.release(_EXIT_STOP_TIMEOUT_S)


def _hold(resources: _Resources) -> None:
    """Track resources for the exit hook, and move the hook to the front of the exit queue.

    multiprocessing's own exit hook waits for every non-daemonic child, and ours would still be waiting on
    their pipes; exit hooks run last-registered first, so ours is re-registered at each start.
    """
    _HELD[id(resources)] = resources
    atexit.unregister(_release_all_at_exit)
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
                 device: str = "cpu", *, start_method: str = "spawn", stop_timeout: float = 10.0,
                 environment: PythonEnvironment | None = None, bls: BlsHandler | None = None) -> None:
        if start_method not in ("spawn", "forkserver"):
            raise ValueError("start_method must be 'spawn' or 'forkserver': a threaded server is never forked")
        if environment is not None and start_method != "spawn":
            raise ValueError("an instance with its own Python environment must use the 'spawn' start method")
        self.target = target
        self.environment = environment
        self.bls = bls  # runs the model's BLS requests (see bls.py); None: they are answered with an error
        self.stop_timeout = stop_timeout
        self.restarts = 0  # processes started again after one died
        self._context: Any = multiprocessing.get_context(start_method)  # typeshed's BaseContext lacks Process
        self._config_bytes = b""
        self._files = ""
        self._device = device
        self._name = "model"
        self._version = ""
        self._lock = threading.Lock()
        self._closed = False
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
        with self._lock:
            child = self._usable_child()
            try:
                return self._call(child, inputs)
            except _ProcessExited as exc:
                self._discard(child, stop=False)
                log.error("model '%s': %s during a call; restarting it", self._name, exc)
                self._restart_in_background()
                raise InstanceProcessError(f"{exc}; the instance is restarting") from None

    def unload(self) -> None:
        """Stop the process (it unloads the model) and free the shared memory."""
        self._closed = True
        if not self._lock.acquire(timeout=self.stop_timeout):
            child = self._resources.child  # a call (or a restart) holds the lock: end its process so it lets go
            if child is not None:
                child.kill()
            self._lock.acquire()
        try:
            self._resources.release(self.stop_timeout)
        finally:
            self._lock.release()

    # ---- process lifecycle (with the lock held) ----

    def _configure(self, config: ModelConfig, files: str | Path, device: str) -> None:
        self._config_bytes = config.SerializeToString()
        self._files = str(files)
        self._device = device
        self._name = config.name or self._name
        self._version = Path(files).name

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe(duplex=True)
        environment = self.environment
        site_dirs = environment.site_dirs if environment is not None else ()
        process = self._context.Process(
            target=_child_main,
            args=(child_end, self.target, self._config_bytes, self._files, self._device, site_dirs),
            name=f"inferd-instance-{self._name}", daemon=False)  # not daemonic: a model may start processes
        _hold(self._resources)
        try:
            _start(process, str(environment.python) if environment is not None else None)
        finally:
            child_end.close()  # the child holds the only other end: its exit shows as end-of-file here
        child = _Child(process, parent_end)
        self._resources.child = child
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
            # It died before it could report why; what it printed is on the server's standard error. The usual
            # cause: the server's `__main__` script, which a spawned process imports, has no `__main__` guard.
            raise ConfigError(f"{exc} while loading the model (its reason is on the server's standard error)") from None
        if reply[0] == "ready":
            child.loaded = True
            return
        self._discard(child, stop=True)
        _, kind, type_name, message, remote_traceback = reply
        log.debug("model '%s' failed to load in its instance process:\n%s", self._name, remote_traceback)
        if kind is not None:
            raise InferError(ErrorKind[kind], message)
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
            child.conn.close()
        if self._resources.child is child:
            self._resources.child = None

    def _restart_in_background(self) -> None:
        def restart() -> None:
            with self._lock:
                if self._closed or self._resources.child is not None:
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
        headers, pickled, size = _layout(inputs)
        requests, responses = self._resources.requests, self._resources.responses
        request = requests.ensure(size) if headers else None
        _write(request, headers, inputs)
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
        _, kind, _type_name, message, remote_traceback = reply
        log.debug("model '%s' raised in its instance process:\n%s", self._name, remote_traceback)
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
                error = (ErrorKind.INTERNAL.name, f"{type(exc).__name__}: {exc}")
            child.send_quietly(("bls", call_id, error, results))

        threading.Thread(target=run, name=f"inferd-bls-{self._name}", daemon=True).start()

    def _read(self, headers: list[Header], pickled: Tensors) -> Tensors:
        """The outputs, copied out of the response arena (the next call overwrites it)."""
        outputs: Tensors = {}
        shm = self._resources.responses.shm
        for header in headers:
            assert shm is not None
            view = _view(shm, header)
            outputs[header[0]] = view.copy()
            del view
        outputs.update(pickled)
        return outputs
