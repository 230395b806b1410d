"""An object-store prefix (s3://, gs://, az://) mirrored file by file through fsspec: only changed files download."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..archives import ARCHIVE_SUFFIXES, is_archive_name
from ..paths import UnsafePathError, safe_join
from .cache import MirrorCache
from .checksums import ChecksumError, expected_md5, md5_of, size_of
from .progress import ProgressLog, SyncReport
from .store_options import S3Settings, fsspec_options
from .unpack import sync_archive
from .uris import HTTP_SCHEMES, LOCAL_SCHEMES, redact, uri_scheme

__all__ = ["STORE_SCHEMES", "MissingExtraError", "StoreMirror", "is_azure_blob_url"]

log = logging.getLogger("inferd.repository")

# URI scheme -> (fsspec protocol, the inferd extra that installs its filesystem package).
STORE_SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3"),
    "s3a": ("s3", "s3"),
    "gs": ("gcs", "gcs"),
    "gcs": ("gcs", "gcs"),
    "az": ("az", "azure"),
    "abfs": ("abfs", "azure"),
    "abfss": ("abfss", "azure"),
}
_AZURE_BLOB_URL = re.compile(r"^https://(?P<account>[^./]+)\.blob\.core\.windows\.net/(?P<path>[^?#]+)$")


class MissingExtraError(ImportError):
    """The filesystem package for a URI scheme is not installed."""


def is_azure_blob_url(uri: str) -> bool:
    """KServe's Azure form `https://<account>.blob.core.windows.net/<container>/<prefix>`, without a SAS query (a SAS
    URL is downloaded as plain https)."""
    return _AZURE_BLOB_URL.match(uri) is not None


@dataclass(frozen=True)
class _Remote:
    """One entry of a listing: relative key, size and the store's change marker (ETag or its stand-in)."""

    key: str
    path: str
    size: int
    etag: str
    info: Mapping[str, Any]


class StoreMirror:
    """One object-store URI: its fsspec filesystem, and the sync of its files into a `MirrorCache`.

    Only files whose size or ETag changed are downloaded; files removed remotely are removed locally; a sync that
    finds nothing changed costs one listing. A URI naming one archive object is downloaded and extracted instead.
    """

    def __init__(self, uri: str, protocol: str, extra: str, root: str, options: Mapping[str, Any]) -> None:
        self.uri = uri
        self.scheme = uri_scheme(uri)
        self.protocol = protocol
        self.extra = extra
        self.root = root
        self.options = dict(options)
        self._fs: Any = None

    @classmethod
    def for_uri(cls, uri: str, s3: S3Settings, storage_options: Mapping[str, Any]) -> StoreMirror:
        """The store a URI names; ValueError for a scheme that is not an object store's."""
        blob = _AZURE_BLOB_URL.match(uri)
        if blob:
            return cls(uri, "az", "azure", urllib.parse.unquote(blob.group("path")).strip("/"),
                       {"account_name": blob.group("account"), **storage_options})
        scheme = uri_scheme(uri)
        if scheme not in STORE_SCHEMES:
            known = ", ".join(f"{s}://" for s in [*STORE_SCHEMES, *HTTP_SCHEMES, *LOCAL_SCHEMES])
            raise ValueError(f"{uri}: unsupported repository URI scheme '{scheme}://' (supported: {known})")
        protocol, extra = STORE_SCHEMES[scheme]
        root = uri.split("://", 1)[1].strip("/")
        if not root:
            raise ValueError(f"{uri}: name a bucket (and optionally a prefix)")
        return cls(uri, protocol, extra, root, {**fsspec_options(protocol, s3), **storage_options})

    def filesystem(self) -> Any:
        """The fsspec filesystem (created once; its listing cache is off so each poll sees the store)."""
        if self._fs is None:
            fsspec = _import_fsspec(self.scheme, self.extra)
            try:
                self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, use_listings_cache=False,
                                             **self.options)
            except ImportError as exc:
                raise MissingExtraError(_missing_extra_message(self.scheme, self.extra, exc)) from exc
        return self._fs

    def sync(self, cache: MirrorCache, manifest: dict[str, Any], report: SyncReport) -> Path:
        """Bring the mirror up to date with one listing of the store; return the folder to serve."""
        files, folders, single = self._list()
        if single is not None:
            if not is_archive_name(single.key):
                raise ValueError(f"{self.uri} names one file, not a folder; a repository in a single file must be an "
                                 f"archive ({', '.join(ARCHIVE_SUFFIXES)})")
            return sync_archive(cache, {"etag": single.etag, "size": single.size}, manifest, report,
                                lambda target, progress: self._download(single, target, progress))
        if not files and not folders:
            log.warning("%s holds no files: the repository is empty (is the bucket or prefix right?)",
                        redact(self.uri))
        mirror = cache.mirror_dir
        if manifest.get("kind") != "tree":
            manifest = {}
            if mirror.exists():
                shutil.rmtree(mirror)
        mirror.mkdir(parents=True, exist_ok=True)
        known: dict[str, dict[str, Any]] = dict(manifest.get("files", {}))
        # Map every key before touching the disk: one unsafe key refuses the whole sync.
        targets = {key: safe_join(mirror, key) for key in files}
        for folder in folders:
            safe_join(mirror, folder)
        _remove_extra(mirror, files.keys(), folders, known, report)
        for folder in sorted(folders):
            safe_join(mirror, folder).mkdir(parents=True, exist_ok=True)
        staging: Path | None = None
        try:
            for key, remote in files.items():
                target = targets[key]
                entry = known.get(key)
                if (entry and entry.get("size") == remote.size and entry.get("etag") == remote.etag
                        and size_of(target) == remote.size):
                    report.unchanged += 1
                    continue
                staging = staging or cache.staging()
                partial = staging / hashlib.sha256(key.encode()).hexdigest()[:24]
                self._download(remote, partial, ProgressLog(key, remote.size))
                target.parent.mkdir(parents=True, exist_ok=True)
                safe_join(mirror, key)  # the folder may have changed while downloading
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(partial, target)
                known[key] = {"size": remote.size, "etag": remote.etag}
                report.downloaded.append(key)
                report.bytes += remote.size
        finally:
            cache.write_manifest({"kind": "tree", "files": {k: v for k, v in known.items() if k in files}})
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        return mirror

    def _list(self) -> tuple[dict[str, _Remote], set[str], _Remote | None]:
        """One recursive listing: files by relative key, folder keys, or the object itself when the URI is a file."""
        fs = self.filesystem()
        with contextlib.suppress(Exception):
            fs.invalidate_cache()
        try:
            listing: dict[str, Mapping[str, Any]] = fs.find(self.root, withdirs=True, detail=True)
        except FileNotFoundError as exc:  # no such bucket (an absent prefix is an empty listing)
            raise FileNotFoundError(f"model repository {redact(self.uri)} not found: {exc}") from exc
        files: dict[str, _Remote] = {}
        folders: set[str] = set()
        root = self.root.rstrip("/")
        itself = listing.get(root)
        if itself is not None and itself.get("type") != "directory" and len(listing) == 1:
            return {}, set(), _remote_entry(root.rsplit("/", 1)[-1], root, itself)
        # Files first, so an unsafe key is reported as the store lists it, not as a folder derived from it.
        for name, info in sorted(listing.items(), key=lambda item: (item[1].get("type") == "directory", item[0])):
            if name.rstrip("/") == root:
                continue
            if not name.startswith(root + "/"):
                log.warning("ignoring %s: listed under %s but outside it", name, root)
                continue
            rel = name[len(root) + 1:]
            if info.get("type") == "directory" or rel.endswith("/"):
                if rel.strip("/"):
                    folders.add(_normal_key(rel.rstrip("/"), name, self.uri))
                continue
            key = _normal_key(rel, name, self.uri)
            if key in files:
                raise UnsafePathError(f"{self.uri}: the keys {files[key].path!r} and {name!r} map to the same "
                                      f"local file {key!r}")
            files[key] = _remote_entry(key, name, info)
        for key in files:
            parts = key.split("/")
            folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        clash = folders & files.keys()
        if clash:
            raise ValueError(f"{self.uri}: {sorted(clash)[0]!r} is both a file and a folder in the store")
        return files, folders, None

    def _download(self, remote: _Remote, target: Path, progress: ProgressLog) -> None:
        """Download one object to `target`, then check it: size always, MD5 where the store publishes one."""
        fs = self.filesystem()
        fs.get_file(remote.path, str(target), callback=_fsspec_callback(progress))
        progress.done = size_of(target) or 0
        progress.finish()
        if progress.done != remote.size:
            target.unlink(missing_ok=True)
            raise ChecksumError(f"{remote.path}: downloaded {progress.done} bytes, the store lists {remote.size} "
                                "(did it change during the download? the next sync retries)")
        expected = expected_md5(remote.info)
        if expected is None:
            return
        actual = md5_of(target)
        if actual == expected:
            return
        if self.protocol == "s3" and not self._etag_is_md5(remote.path):
            return  # SSE-KMS / SSE-C objects: their ETag is not the MD5 of the content
        target.unlink(missing_ok=True)
        raise ChecksumError(f"{remote.path}: MD5 {actual} of the download differs from {expected} announced by the "
                            "store (the next sync retries)")

    def _etag_is_md5(self, path: str) -> bool:
        fs = self.filesystem()
        try:
            bucket, key = path.split("/", 1)
            head = fs.call_s3("head_object", Bucket=bucket, Key=key)
        except Exception:  # can't tell: trust the checksum
            return True
        return not (str(head.get("ServerSideEncryption", "")).startswith("aws:kms") or head.get("SSECustomerAlgorithm"))


def _remove_extra(mirror: Path, keys: Iterable[str], folders: set[str], known: dict[str, dict[str, Any]],
                  report: SyncReport) -> None:
    """Delete local files the store no longer has, then folders left empty that the store does not name."""
    wanted = set(keys)
    for current, dirnames, filenames in os.walk(mirror, topdown=False):
        here = Path(current)
        for name in filenames:
            rel = (here / name).relative_to(mirror).as_posix()
            if rel not in wanted:
                (here / name).unlink()
                known.pop(rel, None)
                report.removed.append(rel)
        for name in dirnames:
            path = here / name
            rel = path.relative_to(mirror).as_posix()
            if path.is_symlink():
                if rel not in wanted:
                    path.unlink()
                    report.removed.append(rel)
            elif rel not in folders:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty


def _fsspec_callback(progress: ProgressLog) -> Any:
    from fsspec.callbacks import Callback

    def hook(size: int | None, value: int, **_: Any) -> None:
        progress.set_total(size)
        progress.update(int(value or 0))

    return Callback(hooks={"log": hook})


def _import_fsspec(scheme: str, extra: str) -> Any:
    try:
        import fsspec
    except ImportError as exc:
        raise MissingExtraError(_missing_extra_message(scheme, extra, exc)) from exc
    return fsspec


def _missing_extra_message(scheme: str, extra: str, exc: Exception) -> str:
    return (f"{scheme}:// model repositories need the optional dependencies of inferd[{extra}]: "
            f"pip install 'inferd[{extra}]' ({exc})")


def _normal_key(rel: str, name: str, uri: str) -> str:
    """A key relative to the repository as a clean POSIX path; one with `..` raises UnsafePathError."""
    pieces = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in pieces):
        raise UnsafePathError(f"refusing remote key {name!r} of {redact(uri)}: '..' would leave the repository "
                              "folder")
    return "/".join(pieces)


def _remote_entry(key: str, path: str, info: Mapping[str, Any]) -> _Remote:
    size = int(info.get("size") or info.get("Size") or 0)
    marker = ""
    for name in ("ETag", "etag", "md5Hash", "generation", "LastModified", "last_modified", "updated", "mtime"):
        value = info.get(name)
        if value:
            marker = str(value)
            break
    return _Remote(key=key, path=path, size=size, etag=marker, info=info)
