"""The local cache: answers (their output tensors) in least-recently-used order, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from ..types import Tensors

# What an entry costs beyond its tensors' bytes: the key, the dictionaries and the array headers (an estimate of
# the Python objects' size, so a cache of many tiny answers still holds to its size).
ENTRY_OVERHEAD = 256
TENSOR_OVERHEAD = 128


def entry_size(outputs: Tensors) -> int:
    """The bytes an entry counts against the cache's size: its outputs' data plus a fixed overhead. A BYTES
    element counts its length and 4 bytes (Triton's serialised length prefix)."""
    size = ENTRY_OVERHEAD
    for name, array in outputs.items():
        size += TENSOR_OVERHEAD + len(name)
        if array.dtype == np.object_:
            size += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in array.flat) + 4 * array.size
        else:
            size += array.nbytes
    return size


class ResponseCache:
    """Thread-safe LRU of read-only output tensors. `size`: the bytes all entries may count together."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("the response cache needs a size above 0 bytes")
        self.size = size
        self.used = 0
        self.evictions = 0
        self._entries: OrderedDict[Hashable, tuple[Tensors, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Tensors | None:
        """The cached outputs (read-only arrays, shared by every hit), now the most recently used; None if absent."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, outputs: Tensors, key_bytes: int = 0) -> bool:
        """Keep a copy of `outputs` under `key` (whose data counts `key_bytes`), evicting the least recently used
        entries to make room. False when the entry alone is larger than the cache (it is not kept)."""
        size = entry_size(outputs) + key_bytes
        if size > self.size:
            return False
        kept = {}
        for name, array in outputs.items():
            copy = np.array(array, copy=True)  # never a view that keeps a whole batch's output alive
            copy.flags.writeable = False
            kept[name] = copy
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used -= old[1]
            while self._entries and self.used + size > self.size:
                _, (_, freed) = self._entries.popitem(last=False)
                self.used -= freed
                self.evictions += 1
            self._entries[key] = (kept, size)
            self.used += size
        return True
