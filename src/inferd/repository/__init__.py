"""Where models live: repository folders, their model folders and numbered versions."""

from .local import ModelRepository, select_versions, version_dirs
from .paths import safe_join

__all__ = ["ModelRepository", "safe_join", "select_versions", "version_dirs"]
