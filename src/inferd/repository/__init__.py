"""Where models live: repository folders, their model folders and numbered versions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..paths import UnsafePathError, safe_join
from .local import ModelRepository, loose_entries, select_versions, version_dirs
from .uris import is_remote

if TYPE_CHECKING:
    from .remote import RemoteRepository

__all__ = ["ModelRepository", "RemoteRepository", "UnsafePathError", "is_remote", "loose_entries", "safe_join",
           "select_versions", "version_dirs"]


def __getattr__(name: str) -> Any:
    if name == "RemoteRepository":  # its stores and archive formats are imported when a remote repository is used
        from .remote import RemoteRepository

        return RemoteRepository
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
