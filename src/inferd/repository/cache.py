"""The cache folder of remote repositories: where it is, and one repository's mirror, manifest, lock and staging."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MirrorCache", "default_cache_dir"]

_MANIFEST_VERSION = 1


def default_cache_dir() -> Path:
    """`$INFERD_CACHE_DIR`, else `$XDG_CACHE_HOME/inferd/repositories` (`~/.cache/inferd/repositories`)."""
    explicit = os.environ.get("INFERD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "inferd" / "repositories"


class MirrorCache:
    """One repository's files in the cache folder, all named by its key.

    `<key>/` is the mirror, `<key>.json` the manifest of what the mirror holds (the change markers of the last sync),
    `<key>.lock` lets processes sharing the cache take turns, `<key>.partial/` holds downloads in progress (beside the
    mirror, on the same filesystem, so a finished file moves in with one rename).
    """

    def __init__(self, cache_dir: Path, key: str, uri: str) -> None:
        self.cache_dir = cache_dir
        self.key = key
        self.uri = uri

    @property
    def mirror_dir(self) -> Path:
        return self.cache_dir / self.key

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / f"{self.key}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's lock file (creating the cache folder first)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: one process per cache folder
            yield
            return
        with open(self.cache_dir / f"{self.key}.lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def read_manifest(self) -> dict[str, Any]:
        """The manifest of the last sync; {} when there is none, or it is unreadable or another URI's."""
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION or data.get("uri") != self.uri:
            return {}
        return data

    def write_manifest(self, data: dict[str, Any]) -> None:
        data = {"version": _MANIFEST_VERSION, "uri": self.uri, **data}
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.manifest_path)

    def staging(self) -> Path:
        """A fresh, empty staging folder."""
        staging = self.cache_dir / f"{self.key}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def replace_mirror(self, tree: Path) -> None:
        """Put the folder `tree` (in the staging folder) where the mirror is, the old mirror moved aside and removed."""
        old = self.cache_dir / f"{self.key}.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.mirror_dir.exists():
            os.replace(self.mirror_dir, old)
        os.replace(tree, self.mirror_dir)
        shutil.rmtree(old, ignore_errors=True)
