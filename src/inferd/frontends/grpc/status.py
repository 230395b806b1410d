"""Failures inside an RPC become gRPC statuses here, and only here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from ...types import InferError

log = logging.getLogger("inferd.grpc")

__all__ = ["status_on_error"]


@asynccontextmanager
async def status_on_error(context: Any, rpc: str) -> AsyncIterator[None]:
    """End the RPC with the failure's status: an InferError by its kind, anything else INTERNAL (and logged)."""
    try:
        yield
    except InferError as err:
        await context.abort(grpc.StatusCode[err.kind.grpc_code_name], err.message)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        log.exception("gRPC %s failed", rpc)
        await context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed: {type(exc).__name__}: {exc}")
