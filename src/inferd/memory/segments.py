"""The namespace of inferd's own POSIX shared-memory segments (instance arenas), which clients may never register."""

from __future__ import annotations

__all__ = ["SHM_PREFIX", "is_server_segment"]

SHM_PREFIX = "inferd-"  # shared memory segments are /dev/shm/inferd-<server pid>-<random>


def is_server_segment(key: str) -> bool:
    """Whether a POSIX shared-memory name, as a client would give it to `shm_open` ("/name"; leading slashes are
    ignored there), is in the namespace of inferd's own segments: the arenas of this server or another on the host."""
    return key.lstrip("/").startswith(SHM_PREFIX)
