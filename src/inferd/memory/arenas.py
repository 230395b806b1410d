"""Tensors in shared memory between the server and an instance process.

Each instance has a request arena and a response arena: `multiprocessing.shared_memory` segments that the server
process creates, grows and unlinks (`ServerArena`); the child only maps them (`ChildArenas`). The pipe carries a
small header per tensor (name, dtype, shape, offset); a reader gets numpy views of the arena (no copy). BYTES
(object) and structured tensors have no fixed layout and travel pickled in the pipe message instead (`layout`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from ..types import ErrorKind, InferError, Tensors
from .segments import SHM_PREFIX, is_server_segment

__all__ = ["SHM_PREFIX", "ChildArenas", "Header", "ServerArena", "Tensors", "close_mapping", "is_server_segment",
           "layout", "view", "write"]

# (name, dtype str, shape, offset): where one fixed-size tensor lies in an arena.
Header = tuple[str, str, tuple[int, ...], int]

_ALIGN = 64
_MIN_ARENA = 1 << 16
_PAGE = 1 << 12


def _aligned(size: int, to: int = _ALIGN) -> int:
    return (size + to - 1) // to * to


def layout(tensors: Tensors) -> tuple[list[Header], Tensors, int]:
    """Headers of the fixed-size tensors, the tensors that go pickled (object or structured dtypes), total bytes."""
    headers: list[Header] = []
    pickled: Tensors = {}
    offset = 0
    for name, value in tensors.items():
        if value.dtype.hasobject or value.dtype.fields is not None:
            pickled[name] = value
            continue
        headers.append((name, value.dtype.str, tuple(value.shape), offset))
        offset += _aligned(value.nbytes)
    return headers, pickled, offset


def view(shm: SharedMemory, header: Header) -> np.ndarray:
    _, dtype, shape, offset = header
    return np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf, offset=offset)


def write(shm: SharedMemory | None, headers: list[Header], tensors: Tensors) -> None:
    if shm is None:
        return
    for header in headers:
        target = view(shm, header)
        target[...] = tensors[header[0]]
        del target


def close_mapping(shm: SharedMemory) -> bool:
    """Unmap a segment; False when numpy views of it are still alive (it is unmapped when they go)."""
    try:
        shm.close()
    except BufferError:
        return False
    return True


class ServerArena:
    """A shared memory segment owned by the server process: created, grown and unlinked here, mapped by the child."""

    def __init__(self) -> None:
        self.shm: SharedMemory | None = None

    @property
    def name(self) -> str | None:
        return self.shm.name if self.shm is not None else None

    @property
    def size(self) -> int:
        return self.shm.size if self.shm is not None else 0

    def ensure(self, size: int) -> SharedMemory:
        """The segment, replaced by a larger one (at least double) when it holds fewer than `size` bytes."""
        shm = self.shm
        if shm is not None and shm.size >= size:
            return shm
        new_size = _aligned(max(size, 2 * self.size, _MIN_ARENA), _PAGE)
        new = SharedMemory(f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(6)}", create=True, size=new_size)
        try:
            # Reserve the pages now: a full /dev/shm then fails here, not with SIGBUS on the first write.
            fd = getattr(new, "_fd", -1)
            if fd >= 0 and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, new_size)
        except OSError as exc:
            close_mapping(new)
            new.unlink()
            raise InferError(ErrorKind.RESOURCE_EXHAUSTED,
                             f"cannot allocate {new_size} bytes of shared memory for a model instance: "
                             f"{exc.strerror or exc}") from None
        self.release()
        self.shm = new
        return new

    def release(self) -> None:
        shm, self.shm = self.shm, None
        if shm is not None:
            close_mapping(shm)
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()


class ChildArenas:
    """The child's mappings of the server's arenas, remapped when the server replaces one."""

    def __init__(self) -> None:
        self.mapped: dict[str, SharedMemory] = {}  # role ("request" / "response") -> mapping
        self.lingering: list[SharedMemory] = []  # replaced mappings a backend still holds views of

    def get(self, role: str, name: str) -> SharedMemory:
        shm = self.mapped.get(role)
        if shm is not None and shm.name == name:
            return shm
        if shm is not None and not close_mapping(shm):
            self.lingering.append(shm)
        self.lingering = [s for s in self.lingering if not close_mapping(s)]
        # Python < 3.13 registers a mapped segment with the resource tracker too; the child shares the server's
        # tracker (see worker.py), and the server unregisters the name when it unlinks the segment.
        shm = SharedMemory(name, create=False)
        self.mapped[role] = shm
        return shm

    def close(self) -> None:
        for shm in [*self.mapped.values(), *self.lingering]:
            close_mapping(shm)
        self.mapped.clear()
        self.lingering.clear()
