"""Triton's shared-memory extensions over HTTP: `/v2/systemsharedmemory/...` and `/v2/cudasharedmemory/...`.

Paths and JSON bodies only; the regions live in the core (`Server.shared_memory`, `Server.cuda_shared_memory`).
"""

from __future__ import annotations

from typing import Any

from ...server import Server
from ...types import InferError
from .v2 import load_json_object

__all__ = ["SHARED_MEMORY_ROUTES", "shared_memory_route"]

SHARED_MEMORY_ROUTES = frozenset(("systemsharedmemory", "cudasharedmemory"))

_METHODS = {"status": ("GET", "HEAD"), "register": ("POST",), "unregister": ("POST",)}


def shared_memory_route(server: Server, method: str, kind: str, rest: list[str],
                        body: bytes) -> tuple[int, Any]:
    """(HTTP status, JSON body; None for an empty 200) of `/v2/<kind>[/region/<name>]/<action>`.

    Raises InferError for the core's refusals (unknown region, bad key, ...).
    """
    if len(rest) == 1:
        name, action = "", rest[0]
    elif len(rest) == 3 and rest[0] == "region" and rest[1]:
        name, action = rest[1], rest[2]
    else:
        return 404, {"error": "Not Found"}
    if action not in _METHODS or (action == "register" and not name):
        return 404, {"error": "Not Found"}
    if method not in _METHODS[action]:
        return 405, {"error": f"method {method} is not allowed here (use {_METHODS[action][0]})"}
    registry = server.shared_memory if kind == "systemsharedmemory" else server.cuda_shared_memory
    if action == "status":
        return 200, registry.status(name)
    if action == "unregister":
        registry.unregister(name)
        return 200, None
    doc = load_json_object(body)
    if kind == "cudasharedmemory":
        handle = doc.get("raw_handle")
        raw = handle.get("b64", "") if isinstance(handle, dict) else ""
        server.cuda_shared_memory.register(name, str(raw).encode(), doc.get("device_id", 0), doc.get("byte_size", 0))
        return 200, None
    missing = [field for field in ("key", "byte_size") if field not in doc]
    if missing:
        needs = " and ".join(repr(m) for m in missing)
        raise InferError.invalid(f"registering shared memory region '{name}' needs {needs} in the request body "
                                 '({"key": ..., "offset": ..., "byte_size": ...})')
    server.shared_memory.register(name, doc["key"], doc.get("offset", 0), doc["byte_size"])
    return 200, None
