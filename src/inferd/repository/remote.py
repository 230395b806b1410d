"""The entry point for a repository named by a URI: `RemoteRepository(uri).sync()` returns the local folder to serve."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..archives import is_archive_name
from .cache import MirrorCache, default_cache_dir
from .http_archive import sync_http_archive
from .mirror import StoreMirror, is_azure_blob_url
from .progress import SyncReport, human_size
from .store_options import S3Settings
from .unpack import sync_local_archive
from .uris import HTTP_SCHEMES, LOCAL_SCHEMES, is_remote, local_path, redact, uri_scheme

__all__ = ["RemoteRepository", "sync_repositories"]

log = logging.getLogger("inferd.repository")


class RemoteRepository:
    """A repository URI and its local mirror. `sync()` brings the mirror up to date and returns its folder.

    >>> repo = RemoteRepository("s3://models/triton")        # doctest: +SKIP
    >>> ModelRepository([repo.sync()])                      # doctest: +SKIP

    Everything downstream (the manager, the backends, polling) reads a local folder; this is the only place that knows
    a repository can live elsewhere:

    - `s3://bucket/prefix`, `gs://bucket/prefix` (or `gcs://`), `az://container/prefix` (also `abfs://`, `abfss://`
      and KServe's `https://<account>.blob.core.windows.net/<container>/<prefix>`) are mirrored through fsspec and
      the filesystem package of that store (`pip install 'inferd[s3]'`, `'inferd[gcs]'`, `'inferd[azure]'`) into
      `<cache_dir>/<hash of the uri>/` (see `mirror.StoreMirror`, and `store_options` for the S3 settings).
    - A URI naming one `.tar.gz`/`.tgz`/`.tar`/`.tar.bz2`/`.tar.xz`/`.zip` archive (on a store, on `http(s)://` with
      the standard library, or a local file) is downloaded and extracted safely, again only when it changes.
    - `file:///path` and KServe's `pvc://<claim>/<path>` folders are served as they are (no copy).

    Every remote key and archive member becomes a local path through `safe_join`: nothing a repository holds is
    written outside the cache folder. Call `sync()` again (a poll) to pick up what changed; it is safe to call from
    any one thread at a time, and processes sharing a cache folder take turns through a lock file.
    """

    def __init__(self, uri: str, cache_dir: str | os.PathLike[str] | None = None, *,
                 s3_endpoint: str | None = None, s3_use_https: bool | None = None, s3_region: str | None = None,
                 s3_anonymous: bool | None = None, s3_verify_ssl: bool | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        if not is_remote(uri):
            raise ValueError(f"{uri!r} is not a repository URI (expected s3://, gs://, az://, https://, file:// "
                             "or pvc://)")
        self.uri = uri
        self.scheme = uri_scheme(uri)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.s3 = S3Settings.resolve(s3_endpoint, s3_use_https, s3_region, s3_anonymous, s3_verify_ssl)
        self.last_report = SyncReport()
        self._store: StoreMirror | None = None
        if self.scheme in LOCAL_SCHEMES:
            self._root = str(local_path(uri))
        elif self.scheme in HTTP_SCHEMES and not is_azure_blob_url(uri):
            self._root = uri
        else:
            self._store = StoreMirror.for_uri(uri, self.s3, storage_options or {})
            self._root = self._store.root
        s3_endpoint_url = self.s3.endpoint_url if self._store is not None and self._store.protocol == "s3" else None
        identity = json.dumps([uri.rstrip("/"), s3_endpoint_url])
        self.key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self._cache = MirrorCache(self.cache_dir, self.key, uri)

    @property
    def is_local(self) -> bool:
        """file:// and pvc:// URIs: served in place, nothing copied."""
        return self.scheme in LOCAL_SCHEMES and not is_archive_name(self._root)

    @property
    def mirror_dir(self) -> Path:
        return self._cache.mirror_dir

    @property
    def manifest_path(self) -> Path:
        return self._cache.manifest_path

    def __repr__(self) -> str:
        return f"RemoteRepository({redact(self.uri)!r}, cache_dir={str(self.cache_dir)!r})"

    def filesystem(self) -> Any:
        """The fsspec filesystem of an object-store URI (created once; its listing cache is off)."""
        if self._store is None:
            raise ValueError(f"{redact(self.uri)} is not an object-store URI: it has no fsspec filesystem")
        return self._store.filesystem()

    def sync(self) -> Path:
        """Bring the local mirror up to date and return the folder to serve (the same one from sync to sync).

        Raises UnsafePathError before writing anything when a key would leave the mirror, MissingExtraError when the
        filesystem package is not installed, OSError (ChecksumError included) when a download fails; after a failed
        sync every file is whole (an old or a new version of it: files move in by rename) and the next sync retries.
        """
        started = time.monotonic()
        self.last_report = report = SyncReport()
        if self.is_local:
            path = Path(self._root)
            if not path.is_dir():
                raise FileNotFoundError(f"model repository {path} (from {self.uri}) is not a folder")
            return path
        with self._cache.locked():
            manifest = self._cache.read_manifest()
            if self.scheme in LOCAL_SCHEMES:
                root = sync_local_archive(self._cache, Path(self._root), manifest, report)
            elif self._store is None:
                root = sync_http_archive(self._cache, manifest, report)
            else:
                root = self._store.sync(self._cache, manifest, report)
        report.seconds = time.monotonic() - started
        if report.changed:
            log.info("synced %s: %d file(s) downloaded (%s), %d removed, %d unchanged in %.1f s", redact(self.uri),
                     len(report.downloaded), human_size(report.bytes), len(report.removed), report.unchanged,
                     report.seconds)
        else:
            log.debug("synced %s: nothing changed (%d files)", redact(self.uri), report.unchanged)
        return root


def sync_repositories(uris: list[str], cache_dir: str | os.PathLike[str] | None = None,
                      **s3: Any) -> tuple[list[Path], list[RemoteRepository]]:
    """Local folders for a mix of paths and URIs, and the remote repositories a poll must `sync()` again."""
    paths: list[Path] = []
    remotes: list[RemoteRepository] = []
    for uri in uris:
        if is_remote(uri):
            repo = RemoteRepository(uri, cache_dir, **s3)
            paths.append(repo.sync())
            if not repo.is_local:
                remotes.append(repo)
        else:
            paths.append(Path(uri))
    return paths, remotes
