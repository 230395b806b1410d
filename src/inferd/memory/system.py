"""Triton's system shared-memory extension: POSIX shared-memory objects that clients create and register by name.

A region is mapped once, when it is registered. Inputs placed in it are read as numpy views of the mapping and
outputs are written straight into it (see `binding`). Regions are kept per owner (`""` until tenants exist), so
one tenant can never name another's region.

A region unregistered while requests use it leaves the registry at once; its mapping stays until the last of those
requests lets go (they fail: see `SharedMemoryLease`), then it is unmapped. Numpy views of it that outlive even
that keep the mapping alive until they go.

Client shared memory is off unless the server is started with it (`--allow-client-shm=true`, as Triton 26.04+):
a registered key is opened and written by the server, as the server's user. Even then the server's own segments
(its instance arenas, `/inferd-<pid>-...`) can never be registered, and at most `max_regions` regions are registered
at once (each keeps a file descriptor open).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from typing import Any

from ..types import ErrorKind, InferError
from .segments import SHM_PREFIX, is_server_segment

try:  # what multiprocessing.shared_memory opens segments with; POSIX only
    import _posixshmem
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

__all__ = ["DEFAULT_MAX_SHM_REGIONS", "SharedMemoryRegion", "SystemSharedMemory"]

# Regions registered at once, over all owners: each holds a file descriptor (the mapping's) until unregistered.
DEFAULT_MAX_SHM_REGIONS = 128

_DISABLED = "client shared memory is disabled on this server (start it with --allow-client-shm=true)"


class SharedMemoryRegion:
    """One registered region: `byte_size` bytes at `offset` of the shared-memory object `key`."""

    __slots__ = ("_mapping", "buffer", "byte_size", "key", "name", "offset", "owner", "retired", "users")

    def __init__(self, owner: str, name: str, key: str, offset: int, byte_size: int) -> None:
        self.owner = owner
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self.users = 0  # requests holding the region (guarded by the registry's lock)
        self.retired = False  # unregistered; unmapped once no request holds it
        self._mapping: mmap.mmap | None = _map(key, offset, byte_size)
        start = offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be page-aligned
        self.buffer: memoryview | None = memoryview(self._mapping)[start:start + byte_size]

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def view(self, offset: int, byte_size: int, what: str) -> memoryview:
        """`byte_size` bytes at `offset` of the region, for `what` (e.g. "input 'INPUT0'")."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InferError.invalid(
                f"{what}: shared memory offset {offset} + byte size {byte_size} runs past the end of region "
                f"'{self.name}' ({self.byte_size} bytes)")
        buffer = self.buffer
        if buffer is None:
            raise InferError.invalid(f"{what}: shared memory region '{self.name}' was unregistered")
        return buffer[offset:offset + byte_size]

    def close(self) -> None:
        """Unmap now; if numpy views of the mapping are still alive, the mapping goes with the last of them."""
        buffer, mapping = self.buffer, self._mapping
        self.buffer = self._mapping = None
        with contextlib.suppress(BufferError):
            if buffer is not None:
                buffer.release()
            if mapping is not None:
                mapping.close()


def _map(key: str, offset: int, byte_size: int) -> mmap.mmap:
    if _posixshmem is None:
        raise InferError(ErrorKind.UNSUPPORTED, "system shared memory is not supported on this platform")
    try:
        fd = _posixshmem.shm_open(key, os.O_RDWR, mode=0o600)
    except FileNotFoundError:
        raise InferError.invalid(f"unable to open shared memory object '{key}': it does not exist") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InferError.invalid(f"unable to open shared memory object '{key}': {reason}") from None
    try:
        size = os.fstat(fd).st_size
        if offset + byte_size > size:
            raise InferError.invalid(f"offset {offset} + byte_size {byte_size} runs past the end of shared memory "
                                     f"object '{key}' ({size} bytes)")
        start = offset % mmap.ALLOCATIONGRANULARITY
        try:
            return mmap.mmap(fd, start + byte_size, offset=offset - start)
        except (OSError, ValueError) as exc:
            raise InferError.invalid(f"unable to map shared memory object '{key}': {exc}") from None
    finally:
        os.close(fd)


def _check_int(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InferError.invalid(f"'{field}' must be an integer >= {minimum}, got {value!r}")
    return value


class SystemSharedMemory:
    """The registered system shared-memory regions, by (owner, name). Thread-safe: every frontend shares it."""

    def __init__(self, enabled: bool = False, max_regions: int = DEFAULT_MAX_SHM_REGIONS) -> None:
        if isinstance(max_regions, bool) or not isinstance(max_regions, int) or max_regions < 0:
            raise ValueError(f"max_regions must be an integer >= 0, got {max_regions!r}")
        self.enabled = enabled
        self.max_regions = max_regions  # regions registered at once, over all owners
        self._regions: dict[tuple[str, str], SharedMemoryRegion] = {}
        self._mapping = 0  # registrations mapping their region now: they count against the cap too
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int, owner: str = "") -> None:
        if not self.enabled:
            raise InferError(ErrorKind.PERMISSION_DENIED, _DISABLED)
        if not isinstance(name, str) or not name:
            raise InferError.invalid("a shared memory region needs a name")
        if not isinstance(key, str) or not key:
            raise InferError.invalid(f"shared memory region '{name}': 'key' must be the name of a shared memory "
                                     "object, e.g. '/my_region'")
        _check_int("offset", offset, 0)
        _check_int("byte_size", byte_size, 1)
        if is_server_segment(key):
            # The server's own instance arenas: a client that mapped them could read and rewrite other requests.
            raise InferError(ErrorKind.PERMISSION_DENIED,
                             f"cannot register shared memory region '{name}': '{key}' is in the namespace of the "
                             f"server's own segments ('/{SHM_PREFIX}*'), which clients may not register")
        with self._lock:  # a place under the cap is taken before mapping: a refused registration opens nothing
            if (owner, name) in self._regions:
                raise InferError.invalid(f"shared memory region '{name}' is already registered")
            if len(self._regions) + self._mapping >= self.max_regions:
                raise InferError(ErrorKind.RESOURCE_EXHAUSTED,
                                 f"cannot register shared memory region '{name}': {self.max_regions} system shared "
                                 "memory regions are registered, the most this server allows at once; unregister "
                                 "one first")
            self._mapping += 1
        try:
            region = SharedMemoryRegion(owner, name, key, offset, byte_size)  # maps it: outside the lock
        except BaseException:
            with self._lock:
                self._mapping -= 1
            raise
        with self._lock:
            self._mapping -= 1
            taken = (owner, name) in self._regions
            if not taken:
                self._regions[(owner, name)] = region
        if taken:  # registered by a concurrent call meanwhile
            region.close()
            raise InferError.invalid(f"shared memory region '{name}' is already registered")

    def unregister(self, name: str = "", owner: str = "") -> None:
        """Unregister one region, or all of the owner's when `name` is empty. An unknown name is not an error
        (as in Triton), so clients can clean up unconditionally."""
        with self._lock:
            keys = [(owner, name)] if name else [k for k in self._regions if k[0] == owner]
            gone = [r for r in (self._regions.pop(k, None) for k in keys) if r is not None]
            idle = []
            for region in gone:
                region.retired = True
                if region.users == 0:
                    idle.append(region)
        for region in idle:
            region.close()

    def status(self, name: str = "", owner: str = "") -> list[dict[str, Any]]:
        """Triton's status response: one `{"name", "key", "offset", "byte_size"}` per region (or the named one)."""
        with self._lock:
            if not name:
                return [r.status() for (o, _), r in sorted(self._regions.items()) if o == owner]
            region = self._regions.get((owner, name))
        if region is None:
            raise InferError.invalid(f"unable to find system shared memory region: '{name}'")
        return [region.status()]

    def acquire(self, name: str, owner: str = "") -> SharedMemoryRegion:
        """The named region, held for one request until `release`."""
        with self._lock:
            region = self._regions.get((owner, name))
            if region is not None:
                region.users += 1
                return region
        if not self.enabled:  # no region can exist: the request names one that is not there (400, as in Triton)
            raise InferError.invalid(f"unable to find shared memory region: '{name}' ({_DISABLED})")
        raise InferError.invalid(f"unable to find shared memory region: '{name}' is not registered")

    def release(self, region: SharedMemoryRegion) -> None:
        with self._lock:
            region.users -= 1
            idle = region.retired and region.users == 0
        if idle:
            region.close()

    def close(self) -> None:
        """Unregister and unmap every region (the server is closing: no request uses them any more)."""
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
        for region in regions:
            region.retired = True
            region.close()

    def __len__(self) -> int:
        return len(self._regions)
