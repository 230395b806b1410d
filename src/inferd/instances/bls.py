"""Business Logic Scripting (BLS): a model in an instance process calls another model of the same server.

Triton's python backend lets `execute` build `pb_utils.InferenceRequest(model_name=..., inputs=...)` and run it
with `exec()` / `await async_exec()`. Here the request travels over the instance's existing pipe:

* The child sends `("bls", id, model, version, inputs, outputs, timeout_us)` in the middle of `execute`; the
  server side (`ProcessInstance._call`, which is waiting for that call's answer anyway) hands it to a thread that
  runs it through the server's core (the `BlsHandler` the server installs on the model manager), so statistics,
  limits, queue policies and errors are the core's. The answer comes back as `("bls", id, error, outputs)`.
* BLS tensors are pickled in the pipe messages (one copy each way), not placed in the instance's shared-memory
  arenas: those hold the current call's inputs and outputs, and several BLS calls of one `execute` may be in flight
  at once (`asyncio.gather` over `async_exec`). An ordinary call's path is unchanged: no extra round trip.
* In the child, several threads may wait on the pipe at once (the executor threads of `async_exec`, and the main
  thread for its next command), so `Channel` is the pipe's only reader: whoever reads hands each message to the
  waiter it belongs to.

Deadlocks, as in Triton: a model waits for the model it calls. A call to the very model version that calls, when
that version has a single instance, could only wait for itself forever; it is refused at once with an
UNAVAILABLE error. A longer cycle (A calls B calls A, one instance each) still waits; the request's `timeout`
(microseconds, Triton's queue timeout) bounds it where the called model's queue policy allows a timeout override.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..types import ErrorKind, InferError, Tensors

__all__ = ["BlsHandler", "BlsRequest", "Channel", "call_model"]



@dataclass(frozen=True, slots=True)
class BlsRequest:
    """One model's call of another: what the child asked for."""

    model_name: str
    model_version: str  # "" for the latest ready version (Triton's -1)
    inputs: Tensors
    outputs: list[str]  # empty: all the model's outputs
    timeout_us: int = 0


# (caller model name, caller version), request -> the outputs, or raises InferError.
BlsHandler = Callable[[tuple[str, str], BlsRequest], Tensors]


def _key(message: tuple[Any, ...]) -> Any:
    """Which waiter a message from the server belongs to."""
    tag = message[0]
    if tag == "bls":
        return ("bls", message[1])
    if tag == "arena":
        return "arena"
    return "command"  # execute, stop: the main loop's


class Channel:
    """The child's end of the pipe, shared by its threads: sends take turns, and each reply reaches its waiter."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._arrived: dict[Any, tuple[Any, ...]] = {}
        self._reading = False
        self._closed = False
        self._ids = itertools.count(1)
        self.active = False  # inside `execute`: only then is the server listening for BLS requests

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    def receive(self, key: Any) -> tuple[Any, ...]:
        """The next message for `key` ("command", "arena", ("bls", id)); EOFError when the server is gone."""
        with self._cond:
            while True:
                if key in self._arrived:
                    return self._arrived.pop(key)
                if self._closed:
                    raise EOFError
                if not self._reading:
                    self._reading = True
                    break
                self._cond.wait()
        while True:  # this thread reads for everyone until its own message comes
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                with self._cond:
                    self._closed = True
                    self._reading = False
                    self._cond.notify_all()
                raise EOFError from None
            mine = _key(message) == key
            with self._cond:
                if mine:
                    self._reading = False
                else:
                    self._arrived[_key(message)] = message
                self._cond.notify_all()
            if mine:
                return message

    def call(self, request: BlsRequest) -> Tensors:
        if not self.active:
            raise InferError(ErrorKind.UNSUPPORTED, "BLS requests can only be made while execute runs "
                                                    "(not in initialize or finalize)")
        call_id = next(self._ids)
        try:
            self.send(("bls", call_id, request.model_name, request.model_version, request.inputs,
                       request.outputs, request.timeout_us))
            _, _, error, outputs = self.receive(("bls", call_id))
        except (EOFError, OSError):
            raise InferError.unavailable("the server closed the instance's pipe during a BLS request") from None
        if error is not None:
            kind, message = error
            raise InferError(ErrorKind[kind], message)
        return dict(outputs)


_CHANNEL: Channel | None = None


def set_channel(channel: Channel | None) -> None:
    """Called by the instance process's main function: the channel BLS requests go through."""
    global _CHANNEL
    _CHANNEL = channel


def call_model(request: BlsRequest) -> Tensors:
    """Run `request` on the server this instance process belongs to (from a model's `execute`); raises InferError."""
    channel = _CHANNEL
    if channel is None:
        raise InferError(ErrorKind.UNSUPPORTED, "BLS requests can only be made by a model that an inferd server "
                                                "runs in an instance process")
    return channel.call(request)
