"""The instance process: load one model's backend, then answer `execute` calls until the server says stop or goes.

`ProcessInstance` starts it as a plain child process (`command`), not through multiprocessing's spawn:

    <python> -c "<bootstrap>" <pipe fd>,<tracker fd>[,<watch fd>] <the server's sys.path ...>

Spawn would re-import the server's `__main__` module in the child (a script, `python -m module`), which re-runs a
script without an `if __name__ == "__main__":` guard: an SDK script would start a second server inside each
instance process and the model would never load. The bootstrap imports nothing of the caller's: it ignores SIGINT
(Ctrl+C is the server's to handle; it stops its instances), takes the server's `sys.path` (so the child imports the
same inferd, numpy and backend modules as the server, also under a model environment's interpreter) and calls
`main`. The first message on the pipe says what to load: (backend target "module:Class", config bytes, version
folder, device, environment site dirs).

* The backend class is imported by its registry target; with a `PythonEnvironment`, its site-packages go first on
  `sys.path` before that (see environments.py).
* Inputs are numpy views of the server's request arena; outputs are written into its response arena, which the
  server grows on request ("grow" / "arena"), see memory/arenas.py. BYTES tensors travel pickled.
* During a call the model may send BLS requests (see bls.py): `Channel` is the pipe's only reader from then on.
* The process dies with the server: a thread reads the watch pipe, whose only write end the server holds, and ends
  the process at its end-of-file (the server has exited, however: also SIGKILL), even while the model is busy.
  Not PR_SET_PDEATHSIG: it fires when the server *thread* that started the process ends (a restart thread does).
* A backend exception fails that call only and goes back as plain data ("failed", InferError kind, type,
  message, traceback); whatever stops the load is sent the same way, and the process ends.
"""

from __future__ import annotations

import multiprocessing.resource_tracker
import os
import pkgutil
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..memory.arenas import ChildArenas, Tensors, layout, view, write
from ..model_limits import memory_limit_bytes
from ..types import InferError
from .bls import Channel, set_channel
from .environments import enter_environment

__all__ = ["command", "main", "serve"]

# Runs before anything of inferd is imported: SIGINT ignored at once, the server's import path, then `main`.
_BOOTSTRAP = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); sys.path[:] = sys.argv[2:]; "
              "from inferd.instances.worker import main; main(sys.argv[1])")


def command(python: str, conn_fd: int, tracker_fd: int, watch_fd: int | None = None) -> list[str]:
    """The command line of an instance process run by `python`, talking over `conn_fd` (see the module docstring);
    with `watch_fd`, it exits when that pipe reads end-of-file (the server is gone)."""
    fds = f"{conn_fd},{tracker_fd}" + (f",{watch_fd}" if watch_fd is not None else "")
    return [python, "-c", _BOOTSTRAP, fds, *sys.path]


PARENT_GONE_EXIT_CODE = 70  # the instance process's exit code when the server went away without stopping it


def watch_parent(watch_fd: int) -> threading.Thread:
    """Exit this process (at once, whatever the model is doing) when `watch_fd` reads end-of-file."""
    def watch() -> None:
        try:
            while os.read(watch_fd, 1):
                pass
        except OSError:
            pass
        os._exit(PARENT_GONE_EXIT_CODE)

    thread = threading.Thread(target=watch, name="inferd-parent-watch", daemon=True)
    thread.start()
    return thread


def main(fds: str) -> None:
    """The instance process's entry point (called by the bootstrap): the parent watch, the pipe, then `serve`."""
    conn_fd, tracker_fd, *watch = (int(fd) for fd in fds.split(","))
    if watch:
        watch_parent(watch[0])
    # The server's resource tracker, as a spawned child would share it: on Python < 3.13 mapping a segment registers
    # it, and a tracker of the child's own would unlink the server's arenas when the child exits.
    multiprocessing.resource_tracker._resource_tracker._fd = tracker_fd  # type: ignore[attr-defined]
    conn = Connection(conn_fd)
    try:
        target, config_bytes, files, device, site_dirs = conn.recv()
    except EOFError:
        return  # the server went away before saying what to load
    serve(conn, target, config_bytes, files, device, tuple(site_dirs))


def _describe(exc: BaseException) -> tuple[str, str | None, str, str, str]:
    """A backend exception as plain data for the pipe: ("failed", InferError kind, type, message, traceback)."""
    kind = exc.kind.name if isinstance(exc, InferError) else None
    message = " ".join(str(exc).split()) or type(exc).__name__
    type_name = "MemoryError" if isinstance(exc, MemoryError) else type(exc).__name__  # numpy's subclasses too
    return "failed", kind, type_name, message, "".join(traceback.format_exception(exc))


def limit_memory(config: ModelConfig) -> None:
    """Apply the model's `instance_memory_limit_bytes` to this process, as its data limit (RLIMIT_DATA).

    RLIMIT_DATA (Linux >= 4.7) counts the private writable memory a process maps (heap, anonymous mmaps: numpy's
    arrays), not address space merely reserved (RLIMIT_AS would count thread stacks, malloc arenas and what BLAS
    and torch reserve, failing models far below their real use) nor the shared-memory arenas of the tensors. An
    allocation past it fails at once (MemoryError) rather than the kernel's OOM killer ending the process later.
    """
    limit = memory_limit_bytes(config)
    if limit:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _outputs(value: object) -> Tensors:
    if not isinstance(value, dict):
        raise TypeError(f"execute returned {type(value).__name__}, not a dict of output name -> array")
    return {str(name): np.asarray(array) for name, array in value.items()}


def _execute(channel: Channel, arenas: ChildArenas, backend: Any, message: tuple[Any, ...]) -> tuple[Any, ...]:
    _, request_name, headers, pickled, response_name, response_size = message
    inputs: Tensors = dict(pickled)
    if headers:
        request = arenas.get("request", request_name)
        for header in headers:
            inputs[header[0]] = view(request, header)
    channel.active = True  # the server listens for BLS requests until this call's answer
    try:
        outputs = _outputs(backend.execute(inputs))
    finally:
        channel.active = False
    del inputs
    out_headers, out_pickled, size = layout(outputs)
    if size > response_size:
        channel.send(("grow", size))
        response_name = channel.receive("arena")[1]
        if response_name is None:
            raise MemoryError(f"the server could not allocate {size} bytes of shared memory for the outputs")
    response = arenas.get("response", response_name) if out_headers else None
    write(response, out_headers, outputs)
    return "done", out_headers, out_pickled


def serve(conn: Connection, target: str, config_bytes: bytes, files: str, device: str,
          site_dirs: tuple[str, ...] = ()) -> None:
    """Load the model, then answer execute calls until told to stop or the server goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bootstrap did already; for a caller that did not
    try:
        enter_environment(site_dirs)
        config = ModelConfig.FromString(config_bytes)
        limit_memory(config)  # before the model's own imports and load: they count too
        backend: Any = pkgutil.resolve_name(target)()  # "module:Class", the registry's target
        backend.load(config, Path(files), device)
    except BaseException as exc:  # whatever stops the load is the reason the instance is unavailable
        conn.send(_describe(exc))
        return
    conn.send(("ready", os.getpid()))
    arenas = ChildArenas()
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
                reply = _execute(channel, arenas, backend, message)
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
