"""Triton's shared-memory extensions over HTTP: `/v2/systemsharedmemory/...` and `/v2/cudasharedmemory/...`.

Paths and JSON bodies only; the regions live in the core (`Server.shared_memory`, `Server.cuda_shared_memory`).
Which registry a route works on is the path's second segment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...types import InferError
from .messages import EMPTY_OK, HttpRequest, Params, Reply, json_reply
from .v2 import load_json_object

if TYPE_CHECKING:
    from ...memory import CudaSharedMemory, SystemSharedMemory
    from .app import HttpFrontend

__all__ = ["register", "status", "unregister"]


def _registry(app: HttpFrontend, request: HttpRequest) -> SystemSharedMemory | CudaSharedMemory:
    server = app.server
    return server.cuda_shared_memory if "/cudasharedmemory/" in request.path else server.shared_memory


async def status(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    return json_reply(200, _registry(app, request).status(params.get("region_name", "")))


async def unregister(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    _registry(app, request).unregister(params.get("region_name", ""))
    return EMPTY_OK


async def register(app: HttpFrontend, request: HttpRequest, params: Params) -> Reply:
    name = params["region_name"]
    doc = load_json_object(request.body)
    server = app.server
    if "/cudasharedmemory/" in request.path:
        handle = doc.get("raw_handle")
        raw = handle.get("b64", "") if isinstance(handle, dict) else ""
        server.cuda_shared_memory.register(name, str(raw).encode(), doc.get("device_id", 0), doc.get("byte_size", 0))
        return EMPTY_OK
    missing = [field for field in ("key", "byte_size") if field not in doc]
    if missing:
        needs = " and ".join(repr(m) for m in missing)
        raise InferError.invalid(f"registering shared memory region '{name}' needs {needs} in the request body "
                                 '({"key": ..., "offset": ..., "byte_size": ...})')
    server.shared_memory.register(name, doc["key"], doc.get("offset", 0), doc["byte_size"])
    return EMPTY_OK
