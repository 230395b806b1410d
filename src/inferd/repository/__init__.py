"""Where models live: repository folders, their model folders and numbered versions."""

from .local import ModelRepository, select_versions, version_dirs
from .paths import UnsafePathError, safe_join
from .remote import RemoteRepository, is_remote

__all__ = ["ModelRepository", "RemoteRepository", "UnsafePathError", "is_remote", "safe_join", "select_versions",
           "version_dirs"]
