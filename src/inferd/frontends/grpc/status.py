"""Failures inside an RPC become gRPC statuses here, and only here."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import grpc

from ...types import InferError, describe_error, public_error_text

log = logging.getLogger("inferd.grpc")

__all__ = ["status_on_error"]


class status_on_error:  # lower case: it reads as the function it was, `async with status_on_error(ctx, "Rpc"):`
    """End the RPC with the failure's status: an InferError by its kind, anything else INTERNAL (and logged).

    A plain class rather than `contextlib.asynccontextmanager`: grpc keeps the abort's exception in a reference
    cycle, and a generator-based manager would keep the failure's traceback in it too, with the frames of the
    request (and its tensors, views of client shared memory among them) alive until the next garbage collection.
    Here the traceback is dropped before aborting.
    """

    __slots__ = ("_context", "_rpc")

    def __init__(self, context: Any, rpc: str) -> None:
        self._context = context
        self._rpc = rpc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        # Returns None, never True: the manager never swallows an exception (so type checkers see every RPC
        # body as either returning or raising).
        if exc is None or isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
            return
        if isinstance(exc, InferError):
            code, message = grpc.StatusCode[exc.kind.grpc_code_name], exc.message
        else:
            log.error("gRPC %s failed", self._rpc, exc_info=(type(exc), exc, tb))
            code, message = grpc.StatusCode.INTERNAL, f"{self._rpc} failed: {public_error_text(describe_error(exc))}"
        exc.__traceback__ = None
        del exc, tb
        await self._context.abort(code, message)  # raises
