"""Memory as the kernel counts it: resident set sizes from /proc, the machine's memory, `--model-memory-limit`."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss(pid: int | str = "self") -> int:
    """Resident bytes of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    function.restype = _MallInfo2
    return cast(Callable[[], _MallInfo2], function)


_MALLINFO2 = _mallinfo2()


def heap_in_use() -> int:
    """Bytes the C heap has handed out and not got back (glibc; 0 elsewhere). Unlike RSS, it grows by what a load
    allocates even when the allocator reuses pages an evicted model freed."""
    if _MALLINFO2 is None:
        return 0
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


class Footprint:
    """Measures what loading something adds: the larger of the RSS growth and the heap-in-use growth."""

    def __init__(self) -> None:
        release_freed_memory()
        self.rss = rss()
        self.heap = heap_in_use()

    def growth(self) -> int:
        release_freed_memory()  # what the load freed again (a file read, then copied) is not its footprint
        return max(0, rss() - self.rss, heap_in_use() - self.heap)


def instances_rss(instances: Iterable[object]) -> int:
    """Resident bytes of the instance processes among `instances` (instance threads live in the server's)."""
    return sum(rss(pid) for pid in (getattr(i, "pid", None) for i in instances) if isinstance(pid, int))


def folder_bytes(folder: Path | None) -> int:
    """The size of a model's files (0 for no folder)."""
    if folder is None:
        return 0
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def machine_memory() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PHYS_PAGES") * _PAGE
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as handle:
                text = handle.read().strip()
            if text.isdigit():
                total = min(total, int(text))
    return total


def parse_memory_limit(text: str) -> int:
    """`--model-memory-limit`: bytes (`2000000000`, or with a suffix K/M/G/Ki/Mi/Gi) or a share of the machine's
    memory (`60%`); 0 turns the limit off. ValueError, one line, otherwise."""
    value = text.strip()
    try:
        if value.endswith("%"):
            share = float(value[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return int(machine_memory() * share / 100)
        units = {"ki": 1024, "mi": 1024**2, "gi": 1024**3, "k": 1000, "m": 1000**2, "g": 1000**3}
        lowered = value.lower().removesuffix("b")
        for suffix, factor in units.items():
            if lowered.endswith(suffix):
                return int(float(lowered[:-len(suffix)]) * factor)
        number = int(lowered)
        if number < 0:
            raise ValueError
        return number
    except ValueError:
        raise ValueError(f"--model-memory-limit: expected BYTES (optionally with K, M, G, Ki, Mi or Gi) or N% of "
                         f"the machine's memory, got '{text}'") from None


def release_freed_memory() -> None:
    """Hand freed heap pages back to the kernel (glibc keeps them otherwise), so an unloaded model's RSS drops."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
