"""Where models live: repository folders, their model folders and numbered versions."""

from ..paths import UnsafePathError, safe_join
from .local import ModelRepository, loose_entries, select_versions, version_dirs
from .remote import RemoteRepository
from .uris import is_remote

__all__ = ["ModelRepository", "RemoteRepository", "UnsafePathError", "is_remote", "loose_entries", "safe_join",
           "select_versions", "version_dirs"]
