"""`--shared-memory system`: the inputs placed once in a registered system shared-memory region.

Requests then name the region instead of carrying the bytes, which takes serialization and copies out of what the
benchmark measures (Triton's shared-memory extension; the server must list `system_shared_memory`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from ._inputs import TensorData
from ._loadgen import BenchError

__all__ = ["system_shared_memory"]


@contextlib.asynccontextmanager
async def system_shared_memory(api: Any, protocol: str, url: str,
                               input_sets: list[list[TensorData]]) -> AsyncIterator[list[list[TensorData]]]:
    """Every input in one region registered with the server; yields the input sets pointing into it.

    `api` is a tritonclient asyncio client. The region is unregistered and freed when the block ends.
    """
    metadata = await api.get_server_metadata(as_json=True) if protocol == "grpc" else await api.get_server_metadata()
    extensions = set(metadata.get("extensions", []))
    if "system_shared_memory" not in extensions:
        raise BenchError(f"the server at {url} does not offer system shared memory (its extensions: "
                         f"{', '.join(sorted(extensions)) or 'none'})")
    from tritonclient.utils import serialize_byte_tensor
    from tritonclient.utils import shared_memory as shm

    # BYTES go in serialized (4-byte length before each element), as the server reads them from the region.
    contents = [[serialize_byte_tensor(t.array) if t.datatype == "BYTES" else np.ascontiguousarray(t.array)
                 for t in tensors] for tensors in input_sets]
    sizes = [[len(c.item()) if c.dtype == np.object_ else c.nbytes for c in row] for row in contents]
    total = max(sum(sum(row) for row in sizes), 1)
    name = f"inferd_bench_{os.getpid()}"
    handle = shm.create_shared_memory_region(name, f"/{name}", total)
    placed: list[list[TensorData]] = []
    try:
        offset = 0
        for tensors, row_contents, row_sizes in zip(input_sets, contents, sizes, strict=True):
            placed_row = []
            for tensor, content, size in zip(tensors, row_contents, row_sizes, strict=True):
                shm.set_shared_memory_region(handle, [content], offset=offset)
                placed_row.append(dataclasses.replace(tensor, shm_region=name, shm_byte_size=size, shm_offset=offset))
                offset += size
            placed.append(placed_row)
        await api.register_system_shared_memory(name, f"/{name}", total)
        try:
            yield placed
        finally:
            with contextlib.suppress(Exception):
                await api.unregister_system_shared_memory(name)
    finally:
        shm.destroy_shared_memory_region(handle)
