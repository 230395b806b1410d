"""Where models live: repository folders, their model folders and numbered versions."""

from .local import ModelRepository, select_versions, version_dirs

__all__ = ["ModelRepository", "select_versions", "version_dirs"]
