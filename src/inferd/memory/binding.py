"""Tensors of one request placed in shared memory: the `shared_memory_*` parameters, inputs read as views of a
region, outputs written into one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..rawdata import decode_raw, encode_raw
from ..types import InferError, SharedMemoryRef
from .system import SharedMemoryRegion, SystemSharedMemory

__all__ = [
    "SHM_BYTE_SIZE",
    "SHM_OFFSET",
    "SHM_REGION",
    "SharedMemoryLease",
    "shared_memory_parameters",
    "shared_memory_ref",
]

SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"


def _size(what: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InferError.invalid(f"{what}: parameter '{key}' must be a non-negative integer, got {value!r}")
    return value


def shared_memory_ref(what: str, parameters: Mapping[str, Any]) -> SharedMemoryRef | None:
    """Where a tensor lies according to its parameters, or None when it does not use shared memory.

    `what` names the tensor in errors ("input 'INPUT0'"). As in Triton, region and byte size go together and
    the offset defaults to 0.
    """
    region = parameters.get(SHM_REGION)
    size = parameters.get(SHM_BYTE_SIZE)
    offset = parameters.get(SHM_OFFSET)
    if region is None and size is None:
        if offset is not None:
            raise InferError.invalid(f"{what}: '{SHM_OFFSET}' is given without '{SHM_REGION}'")
        return None
    if region is None or size is None:
        raise InferError.invalid(f"{what}: '{SHM_REGION}' and '{SHM_BYTE_SIZE}' must be given together")
    if not isinstance(region, str) or not region:
        raise InferError.invalid(f"{what}: parameter '{SHM_REGION}' must be a region name, got {region!r}")
    return SharedMemoryRef(region, _size(what, SHM_BYTE_SIZE, size),
                           _size(what, SHM_OFFSET, offset) if offset is not None else 0)


def shared_memory_parameters(ref: SharedMemoryRef) -> dict[str, Any]:
    """The parameters a response gives an output written into shared memory (where, and how many bytes)."""
    params: dict[str, Any] = {SHM_REGION: ref.region, SHM_BYTE_SIZE: ref.byte_size}
    if ref.offset:
        params[SHM_OFFSET] = ref.offset
    return params


class SharedMemoryLease:
    """The regions one request reads inputs from and writes outputs to, held from admission until its response
    is built (`release`), so that a region cannot be unmapped under the request."""

    __slots__ = ("_held", "_owner", "_registry", "outputs")

    def __init__(self, registry: SystemSharedMemory, owner: str = "") -> None:
        self._registry = registry
        self._owner = owner
        self._held: dict[str, SharedMemoryRegion] = {}
        self.outputs: dict[str, SharedMemoryRef] = {}  # requested outputs to write into shared memory

    def _region(self, name: str) -> SharedMemoryRegion:
        region = self._held.get(name)
        if region is None:
            region = self._registry.acquire(name, self._owner)
            self._held[name] = region
        return region

    def read_input(self, name: str, datatype: str, shape: tuple[int, ...], ref: SharedMemoryRef) -> np.ndarray:
        """The input as a read-only view of the region (BYTES: its elements, copied out)."""
        data = self._region(ref.region).view(ref.offset, ref.byte_size, f"input '{name}'")
        array = decode_raw(name, datatype, shape, data)
        if array.dtype == np.object_:
            return array
        if not array.flags.aligned:  # an offset that splits elements: a copy, so that every backend can read it
            return array.copy()
        array.flags.writeable = False  # the client's memory: a backend must not write into it
        return array

    def place_output(self, name: str, ref: SharedMemoryRef) -> None:
        """Check that the region exists and holds the span, before the model runs."""
        self._region(ref.region).view(ref.offset, ref.byte_size, f"output '{name}'")
        self.outputs[name] = ref

    def finish(self, outputs: Mapping[str, np.ndarray]) -> dict[str, SharedMemoryRef]:
        """Write the placed outputs into their regions; where each went and how many bytes it took."""
        for region in self._held.values():
            if region.retired:
                raise InferError.invalid(f"shared memory region '{region.name}' was unregistered while this "
                                         "request was using it")
        written: dict[str, SharedMemoryRef] = {}
        for name, ref in self.outputs.items():
            array = outputs.get(name)
            if array is not None:
                written[name] = self._write(name, array, ref)
        return written

    def _write(self, name: str, array: np.ndarray, ref: SharedMemoryRef) -> SharedMemoryRef:
        encoded = encode_raw(array) if array.dtype == np.object_ or array.dtype.byteorder == ">" else None
        size = len(encoded) if encoded is not None else int(array.nbytes)
        if size > ref.byte_size:
            raise InferError.invalid(f"output '{name}' needs {size} bytes but shared memory region '{ref.region}' "
                                     f"was given only {ref.byte_size} for it (shared_memory_byte_size)")
        target = self._region(ref.region).view(ref.offset, size, f"output '{name}'")
        if encoded is not None:
            target[:] = encoded
        else:
            np.copyto(np.frombuffer(target, dtype=array.dtype).reshape(array.shape), array)
        target.release()
        return SharedMemoryRef(ref.region, size, ref.offset)

    def release(self) -> None:
        held = list(self._held.values())
        self._held.clear()
        for region in held:
            self._registry.release(region)
