"""Client memory the server reads inputs from and writes outputs to: Triton's shared-memory extensions."""

from .binding import (
    SHM_BYTE_SIZE,
    SHM_OFFSET,
    SHM_REGION,
    SharedMemoryLease,
    shared_memory_parameters,
    shared_memory_ref,
)
from .cuda import CudaSharedMemory
from .system import DEFAULT_MAX_SHM_REGIONS, SharedMemoryRegion, SystemSharedMemory

__all__ = [
    "DEFAULT_MAX_SHM_REGIONS",
    "SHM_BYTE_SIZE",
    "SHM_OFFSET",
    "SHM_REGION",
    "CudaSharedMemory",
    "SharedMemoryLease",
    "SharedMemoryRegion",
    "SystemSharedMemory",
    "shared_memory_parameters",
    "shared_memory_ref",
]
