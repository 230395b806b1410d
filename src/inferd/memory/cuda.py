"""Triton's CUDA shared-memory extension, as far as a server without CUDA IPC can honour it.

Registering a region is refused with a clear error. Status lists no regions and unregistering succeeds, as on
Triton, so clients that clean up before and after their work (NVIDIA's examples do) run unchanged.
"""

from __future__ import annotations

from typing import Any

from ..types import ErrorKind, InferError

__all__ = ["CudaSharedMemory"]

NOT_SUPPORTED = "CUDA shared memory is not supported on this server"


class CudaSharedMemory:
    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int, owner: str = "") -> None:
        raise InferError(ErrorKind.UNSUPPORTED, f"{NOT_SUPPORTED}: cannot register region '{name}'; use system "
                         "shared memory")

    def unregister(self, name: str = "", owner: str = "") -> None:
        """Nothing is ever registered, so there is nothing to do."""

    def status(self, name: str = "", owner: str = "") -> list[dict[str, Any]]:
        if name:
            raise InferError.invalid(f"unable to find CUDA shared memory region: '{name}' ({NOT_SUPPORTED})")
        return []
