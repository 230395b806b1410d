"""A repository shipped as one archive: unpacked into the mirror once per version, served from its models' folder."""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..archives import extract_archive
from ..paths import safe_join
from .cache import MirrorCache
from .checksums import size_of
from .progress import ProgressLog, SyncReport
from .uris import redact

__all__ = ["Fetch", "sync_archive", "sync_local_archive", "unpacked_root"]

Fetch = Callable[[Path, ProgressLog], None]  # writes the archive to the path, reporting progress


def sync_archive(cache: MirrorCache, version: dict[str, Any], manifest: dict[str, Any], report: SyncReport,
                 fetch: Fetch) -> Path:
    """Fetch and extract the archive unless `version` (etag, size, ...) matches the one extracted last.

    The new tree is extracted beside the mirror and replaces it whole: an unsafe or broken archive leaves the
    previous tree in place.
    """
    previous = manifest.get("archive", {}) if manifest.get("kind") == "archive" else {}
    size = version.get("size")
    if previous and previous.get("etag") == version["etag"] and previous.get("size") == size \
            and cache.mirror_dir.is_dir():
        report.unchanged = 1
        return unpacked_root(cache, manifest)
    staging = cache.staging()
    try:
        download = staging / "archive"
        name = urllib.parse.urlsplit(cache.uri).path.rsplit("/", 1)[-1] or redact(cache.uri)
        fetch(download, ProgressLog(name, size))
        extracted = staging / "tree"
        extract_archive(download, extracted)
        root = _repository_root(extracted).relative_to(extracted).as_posix()
        root = "" if root == "." else root
        cache.replace_mirror(extracted)
        report.downloaded.append(name)
        report.bytes += size_of(download) or 0
        cache.write_manifest({"kind": "archive", "archive": version, "root": root})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return safe_join(cache.mirror_dir, root)


def sync_local_archive(cache: MirrorCache, source: Path, manifest: dict[str, Any], report: SyncReport) -> Path:
    """An archive named by file:// or pvc://: copied and extracted again when its modification time or size changes."""
    st = source.stat()

    def copy(target: Path, progress: ProgressLog) -> None:
        shutil.copyfile(source, target)
        progress.done = st.st_size
        progress.finish()

    return sync_archive(cache, {"etag": str(st.st_mtime_ns), "size": st.st_size}, manifest, report, copy)


def unpacked_root(cache: MirrorCache, manifest: dict[str, Any]) -> Path:
    """The folder served from the archive extracted last (the mirror, or the wrapper folder inside it)."""
    return safe_join(cache.mirror_dir, manifest.get("root", ""))


def _repository_root(extracted: Path) -> Path:
    """An archive of `models/<model>/...` serves `models/`: descend into a lone folder that is not itself a model.

    A model folder holds `config.pbtxt` or numbered version folders; anything else at the top is a wrapper.
    """
    entries = [e for e in extracted.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
        return extracted
    lone = entries[0]
    looks_like_model = (lone / "config.pbtxt").exists() or any(c.is_dir() and c.name.isdigit()
                                                                 for c in lone.iterdir())
    return extracted if looks_like_model else lone
