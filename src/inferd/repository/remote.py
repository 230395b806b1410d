"""Remote model repositories: mirror an object store, an archive or a KServe storage URI into a local folder.

Everything downstream of this module (the manager, the backends, polling) reads a local folder; this module is the
only one that knows a repository can live elsewhere. `RemoteRepository(uri).sync()` returns that folder:

- `s3://bucket/prefix`, `gs://bucket/prefix` (or `gcs://`), `az://container/prefix` (also `abfs://`, `abfss://`
  and KServe's `https://<account>.blob.core.windows.net/<container>/<prefix>`) are listed through fsspec and the
  filesystem package of that store (`pip install 'inferd[s3]'`, `'inferd[gcs]'`, `'inferd[azure]'`), and mirrored
  into `<cache_dir>/<hash of the uri>/`. Only files whose size or ETag changed are downloaded; files removed
  remotely are removed locally; a sync that finds nothing changed costs one listing.
- A URI naming one object that is a `.tar.gz`/`.tgz`/`.tar`/`.tar.bz2`/`.tar.xz`/`.zip` archive (on a store, or
  `http(s)://` - downloaded with the standard library, no extra needed) is downloaded and extracted safely; it is
  downloaded again only when its ETag / size / Last-Modified changes.
- `file:///path` and KServe's `pvc://<claim>/<path>` are local folders and are returned as they are (no copy).
  KServe mounts the claim itself at `/mnt/pvc`, so `pvc://claim/models` is `/mnt/pvc/models` (the claim name is not
  part of the path; `$INFERD_PVC_MOUNT_PATH` changes the mount point).

Credentials come from where each store's SDK looks by itself (for S3: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
`AWS_PROFILE`, `~/.aws/credentials`, instance roles). The S3 settings KServe exposes are read from the environment
unless given as arguments: endpoint (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `S3_ENDPOINT`), `S3_USE_HTTPS`,
region (`AWS_REGION`, `AWS_DEFAULT_REGION`), anonymous access (`AWS_ANONYMOUS`, KServe's `awsAnonymousCredential`)
and `S3_VERIFY_SSL`.

Every remote key and every archive member becomes a local path through `safe_join`, so nothing a repository holds can
be written outside the cache folder.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .paths import UnsafePathError, safe_join

log = logging.getLogger("inferd.repository")

# URI scheme -> (fsspec protocol, the inferd extra that installs its filesystem package).
_STORE_SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3"),
    "s3a": ("s3", "s3"),
    "gs": ("gcs", "gcs"),
    "gcs": ("gcs", "gcs"),
    "az": ("az", "azure"),
    "abfs": ("abfs", "azure"),
    "abfss": ("abfss", "azure"),
}
_HTTP_SCHEMES = ("http", "https")
_LOCAL_SCHEMES = ("file", "pvc")
_AZURE_BLOB_URL = re.compile(r"^https://(?P<account>[^./]+)\.blob\.core\.windows\.net/(?P<path>[^?#]+)$")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
PVC_MOUNT_PATH = "/mnt/pvc"  # where KServe mounts the claim of a pvc:// storage URI
_MANIFEST_VERSION = 1
_CHUNK = 1 << 20
_BIG = 16 << 20  # files this large get a line when they start, and a progress bar while they last
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class MissingExtraError(ImportError):
    """The filesystem package for a URI scheme is not installed."""


class ChecksumError(OSError):
    """A downloaded file differs from what the store announced (size or MD5)."""


# ---- path safety ----

def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for a repository URI (`scheme://...`) this module turns into a local folder, False for a plain path.

    `file://` and `pvc://` count too: they need `RemoteRepository` to become a path, though nothing is copied.
    Windows paths (`C:\\models`, `C:/models`) are plain paths.
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", os.fspath(uri))
    return match is not None and len(match.group(1)) > 1


def uri_scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if is_remote(uri) else ""


def local_path(uri: str) -> Path:
    """The folder a `file://` or `pvc://` URI names (KServe: `pvc://claim/path` -> `/mnt/pvc/path`)."""
    scheme = uri_scheme(uri)
    rest = uri.split("://", 1)[1] if scheme else uri
    if scheme == "file":
        path = urllib.parse.unquote(rest)
        if path.startswith("localhost/"):
            path = path[len("localhost"):]
        return Path(path)
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        if not claim:
            raise ValueError(f"{uri}: a pvc:// URI names the claim first (pvc://<claim>/<path>)")
        mount = Path(os.environ.get("INFERD_PVC_MOUNT_PATH") or PVC_MOUNT_PATH)
        return safe_join(mount, sub) if sub.strip("/") else mount
    raise ValueError(f"{uri} is not a file:// or pvc:// URI")


def redact(uri: str) -> str:
    """A URI fit for logs: no user:password, no query string (a presigned URL's signature lives there)."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def default_cache_dir() -> Path:
    """`$INFERD_CACHE_DIR`, else `$XDG_CACHE_HOME/inferd/repositories` (`~/.cache/inferd/repositories`)."""
    explicit = os.environ.get("INFERD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "inferd" / "repositories"


def _env_bool(*names: str) -> bool | None:
    for name in names:
        value = os.environ.get(name)
        if value is None or not value.strip():
            continue
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(_TRUE + _FALSE)}")
    return None


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value and value.strip():
            return value.strip()
    return None


@dataclass(frozen=True)
class S3Settings:
    """The S3 settings KServe's storage initializer exposes; each None means "the SDK's default"."""

    endpoint_url: str | None = None
    use_https: bool | None = None
    region: str | None = None
    anonymous: bool | None = None
    verify_ssl: bool | None = None

    @classmethod
    def resolve(cls, endpoint_url: str | None = None, use_https: bool | None = None, region: str | None = None,
                anonymous: bool | None = None, verify_ssl: bool | None = None) -> S3Settings:
        """Arguments first, then the environment.

        `S3_ENDPOINT` may be a bare `host:port` as KServe sets it; an endpoint without a scheme gets `https://`, or
        `http://` when HTTPS is off (`S3_USE_HTTPS=0`).
        """
        use_https = use_https if use_https is not None else _env_bool("S3_USE_HTTPS")
        endpoint = endpoint_url or _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT")
        if endpoint and "://" not in endpoint:
            endpoint = ("http://" if use_https is False else "https://") + endpoint
        return cls(
            endpoint_url=endpoint,
            use_https=use_https,
            region=region or _env("AWS_REGION", "AWS_DEFAULT_REGION"),
            anonymous=anonymous if anonymous is not None else _env_bool("AWS_ANONYMOUS", "awsAnonymousCredential"),
            verify_ssl=verify_ssl if verify_ssl is not None else _env_bool("S3_VERIFY_SSL"),
        )

    def fsspec_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        client: dict[str, Any] = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.use_https is not None:
            options["use_ssl"] = self.use_https
        if self.region:
            client["region_name"] = self.region
        if self.verify_ssl is False:
            client["verify"] = False
        if self.anonymous:
            options["anon"] = True
        if client:
            options["client_kwargs"] = client
        return options


# ---- progress in the log ----

def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


class _ProgressLog:
    """`downloading simple/1/model.onnx [#####.....] 50% 6.1 MB / 12.3 MB`, at most every `interval` seconds."""

    def __init__(self, label: str, total: int | None, interval: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.interval = interval
        self.started = time.monotonic()
        self._last = self.started
        if total is None or total >= _BIG:  # small files get one line, when done
            log.info("downloading %s (%s)", label, _human(total) if total is not None else "size unknown")

    def set_total(self, total: int | None) -> None:
        if total:
            self.total = int(total)

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info("downloading %s %s", self.label, self._bar())

    def _bar(self) -> str:
        if not self.total:
            return _human(self.done)
        fraction = min(1.0, self.done / self.total)
        filled = int(fraction * 20)
        return f"[{'#' * filled}{'.' * (20 - filled)}] {fraction:4.0%} {_human(self.done)} / {_human(self.total)}"

    def finish(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        log.info("downloaded %s %s in %.1f s (%s/s)", self.label, _human(self.done), elapsed,
                 _human(self.done / elapsed))


def _fsspec_callback(progress: _ProgressLog) -> Any:
    from fsspec.callbacks import Callback

    def hook(size: int | None, value: int, **_: Any) -> None:
        progress.set_total(size)
        progress.update(int(value or 0))

    return Callback(hooks={"log": hook})


# ---- archives ----

def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_link(dest: Path, member: str, target: str, kind: str) -> None:
    if target.startswith(("/", "\\")) or PureWindowsPath(target).anchor:
        raise UnsafePathError(f"refusing archive member {member!r}: {kind} to the absolute path {target!r}")
    parent = PurePosixPath(member).parent
    resolved = os.path.normpath(os.path.join(dest, parent, target)) if kind == "symbolic link" \
        else os.path.normpath(os.path.join(dest, target))
    if resolved != os.path.normpath(dest) and not resolved.startswith(os.path.normpath(dest) + os.sep):
        raise UnsafePathError(f"refusing archive member {member!r}: {kind} to {target!r} points outside the archive")


def extract_archive(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Extract a tar (any compression) or zip archive into `dest`, refusing anything that would leave it.

    Refused with `UnsafePathError`: members with absolute paths or `..`, symbolic and hard links pointing outside
    `dest` (or to absolute paths), device files and FIFOs, and members written through a link already extracted.
    """
    source, target = Path(archive), Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(source):
        _extract_zip(source, target)
    elif tarfile.is_tarfile(source):
        _extract_tar(source, target)
    else:
        raise ValueError(f"{source.name} is neither a tar nor a zip archive")


def _extract_tar(source: Path, dest: Path) -> None:
    with tarfile.open(source, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            safe_join(dest, member.name)
            if member.issym():
                _check_link(dest, member.name, member.linkname, "symbolic link")
            elif member.islnk():
                _check_link(dest, member.name, member.linkname, "hard link")
            elif not (member.isfile() or member.isdir()):
                raise UnsafePathError(f"refusing archive member {member.name!r}: device files and FIFOs are "
                                      "not allowed in a model repository")
        for member in members:
            safe_join(dest, member.name)  # again: an earlier member may have made a link on the way
            if not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python 3.10.11 and older
                tar.extract(member, dest)
                continue
            try:
                tar.extract(member, dest, filter="data")
            except tarfile.FilterError as exc:
                raise UnsafePathError(f"refusing archive member {member.name!r}: {exc}") from exc


def _extract_zip(source: Path, dest: Path) -> None:
    with zipfile.ZipFile(source) as archive:
        infos = archive.infolist()
        for info in infos:
            safe_join(dest, info.filename)
        for info in infos:
            path = safe_join(dest, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                link = archive.read(info).decode("utf-8", errors="replace")
                _check_link(dest, info.filename, link, "symbolic link")
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                os.symlink(link, path)
            elif info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(path, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)


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


# ---- the repository ----

@dataclass
class SyncReport:
    """What the last `sync()` did."""

    downloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.downloaded or self.removed)


@dataclass(frozen=True)
class _Remote:
    """One entry of a listing: relative key, size and the store's change marker (ETag or its stand-in)."""

    key: str
    path: str
    size: int
    etag: str
    info: Mapping[str, Any]


class RemoteRepository:
    """A repository URI and its local mirror. `sync()` brings the mirror up to date and returns its folder.

    >>> repo = RemoteRepository("s3://models/triton")        # doctest: +SKIP
    >>> ModelRepository([repo.sync()])                      # doctest: +SKIP

    Call `sync()` again (a poll) to pick up what changed; it is safe to call from any one thread at a time, and
    processes sharing a cache folder take turns through a lock file.
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
        self._fs: Any = None
        self._protocol, self._extra, self._root, self._options = self._store(storage_options or {})
        identity = json.dumps([uri.rstrip("/"), self.s3.endpoint_url if self._protocol == "s3" else None])
        self.key = hashlib.sha256(identity.encode()).hexdigest()[:16]

    def _store(self, extra_options: Mapping[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
        """(fsspec protocol or '', extra, root path in that filesystem, filesystem options)."""
        if self.scheme in _LOCAL_SCHEMES:
            return "", "", str(local_path(self.uri)), {}
        blob = _AZURE_BLOB_URL.match(self.uri)
        if blob:  # KServe's Azure form, without a SAS query (a SAS URL is downloaded as plain https)
            return ("az", "azure", urllib.parse.unquote(blob.group("path")).strip("/"),
                    {"account_name": blob.group("account"), **extra_options})
        if self.scheme in _HTTP_SCHEMES:
            return "", "", self.uri, {}
        if self.scheme not in _STORE_SCHEMES:
            known = ", ".join(f"{s}://" for s in [*_STORE_SCHEMES, *_HTTP_SCHEMES, *_LOCAL_SCHEMES])
            raise ValueError(f"{self.uri}: unsupported repository URI scheme '{self.scheme}://' (supported: {known})")
        protocol, extra = _STORE_SCHEMES[self.scheme]
        options: dict[str, Any] = dict(self.s3.fsspec_options()) if protocol == "s3" else {}
        if protocol == "gcs" and _env_bool("GCS_ANONYMOUS"):
            options["token"] = "anon"
        options.update(extra_options)
        root = self.uri.split("://", 1)[1].strip("/")
        if not root:
            raise ValueError(f"{self.uri}: name a bucket (and optionally a prefix)")
        return protocol, extra, root, options

    # -- paths --

    @property
    def is_local(self) -> bool:
        """file:// and pvc:// URIs: served in place, nothing copied."""
        return self.scheme in _LOCAL_SCHEMES and not is_archive_name(self._root)

    @property
    def mirror_dir(self) -> Path:
        return self.cache_dir / self.key

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / f"{self.key}.json"

    def __repr__(self) -> str:
        return f"RemoteRepository({redact(self.uri)!r}, cache_dir={str(self.cache_dir)!r})"

    # -- sync --

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
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            manifest = self._read_manifest()
            if self.scheme in _LOCAL_SCHEMES:
                root = self._sync_local_archive(manifest, report)
            elif not self._protocol:
                root = self._sync_http(manifest, report)
            else:
                root = self._sync_store(manifest, report)
        report.seconds = time.monotonic() - started
        if report.changed:
            log.info("synced %s: %d file(s) downloaded (%s), %d removed, %d unchanged in %.1f s", redact(self.uri),
                     len(report.downloaded), _human(report.bytes), len(report.removed), report.unchanged,
                     report.seconds)
        else:
            log.debug("synced %s: nothing changed (%d files)", redact(self.uri), report.unchanged)
        return root

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
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

    def _read_manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != _MANIFEST_VERSION or data.get("uri") != self.uri:
            return {}
        return data

    def _write_manifest(self, data: dict[str, Any]) -> None:
        data = {"version": _MANIFEST_VERSION, "uri": self.uri, **data}
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.manifest_path)

    def _staging(self) -> Path:
        """A fresh folder beside the mirror (same filesystem, so finished files move in with one rename)."""
        staging = self.cache_dir / f"{self.key}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    # -- object stores --

    def filesystem(self) -> Any:
        """The fsspec filesystem of this URI (created once; its listing cache is off so each poll sees the store)."""
        if self._fs is None:
            fsspec = _import_fsspec(self.scheme, self._extra)
            try:
                self._fs = fsspec.filesystem(self._protocol, skip_instance_cache=True, use_listings_cache=False,
                                             **self._options)
            except ImportError as exc:
                raise MissingExtraError(_missing_extra_message(self.scheme, self._extra, exc)) from exc
        return self._fs

    def _list(self) -> tuple[dict[str, _Remote], set[str], _Remote | None]:
        """One recursive listing: files by relative key, folder keys, or the object itself when the URI is a file."""
        fs = self.filesystem()
        with contextlib.suppress(Exception):
            fs.invalidate_cache()
        try:
            listing: dict[str, Mapping[str, Any]] = fs.find(self._root, withdirs=True, detail=True)
        except FileNotFoundError as exc:  # no such bucket (an absent prefix is an empty listing)
            raise FileNotFoundError(f"model repository {redact(self.uri)} not found: {exc}") from exc
        files: dict[str, _Remote] = {}
        folders: set[str] = set()
        root = self._root.rstrip("/")
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

    def _sync_store(self, manifest: dict[str, Any], report: SyncReport) -> Path:
        files, folders, single = self._list()
        if single is not None:
            if not is_archive_name(single.key):
                raise ValueError(f"{self.uri} names one file, not a folder; a repository in a single file must be an "
                                 f"archive ({', '.join(ARCHIVE_SUFFIXES)})")
            return self._sync_archive({"etag": single.etag, "size": single.size}, manifest, report,
                                      lambda target, progress: self._download(single, target, progress))
        if not files and not folders:
            log.warning("%s holds no files: the repository is empty (is the bucket or prefix right?)",
                        redact(self.uri))
        mirror = self.mirror_dir
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
        self._remove_extra(mirror, files.keys(), folders, known, report)
        for folder in sorted(folders):
            safe_join(mirror, folder).mkdir(parents=True, exist_ok=True)
        staging: Path | None = None
        try:
            for key, remote in files.items():
                target = targets[key]
                entry = known.get(key)
                if (entry and entry.get("size") == remote.size and entry.get("etag") == remote.etag
                        and _size_of(target) == remote.size):
                    report.unchanged += 1
                    continue
                staging = staging or self._staging()
                partial = staging / hashlib.sha256(key.encode()).hexdigest()[:24]
                progress = _ProgressLog(key, remote.size)
                self._download(remote, partial, progress)
                target.parent.mkdir(parents=True, exist_ok=True)
                safe_join(mirror, key)  # the folder may have changed while downloading
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(partial, target)
                known[key] = {"size": remote.size, "etag": remote.etag}
                report.downloaded.append(key)
                report.bytes += remote.size
        finally:
            self._write_manifest({"kind": "tree", "files": {k: v for k, v in known.items() if k in files}})
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        return mirror

    def _remove_extra(self, mirror: Path, keys: Any, folders: set[str], known: dict[str, dict[str, Any]],
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

    def _download(self, remote: _Remote, target: Path, progress: _ProgressLog) -> None:
        """Download one object to `target`, then check it: size always, MD5 where the store publishes one."""
        fs = self.filesystem()
        fs.get_file(remote.path, str(target), callback=_fsspec_callback(progress))
        progress.done = _size_of(target) or 0
        progress.finish()
        if progress.done != remote.size:
            target.unlink(missing_ok=True)
            raise ChecksumError(f"{remote.path}: downloaded {progress.done} bytes, the store lists {remote.size} "
                                "(did it change during the download? the next sync retries)")
        expected = _expected_md5(remote.info)
        if expected is None:
            return
        actual = _md5_of(target)
        if actual == expected:
            return
        if self._protocol == "s3" and not self._etag_is_md5(remote.path):
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

    # -- archives --

    def _sync_archive(self, version: dict[str, Any], manifest: dict[str, Any], report: SyncReport,
                      fetch: Callable[[Path, _ProgressLog], None]) -> Path:
        """Download and extract an archive unless `version` (etag, size, ...) matches the one extracted last."""
        mirror = self.mirror_dir
        previous = manifest.get("archive", {}) if manifest.get("kind") == "archive" else {}
        root = manifest.get("root", "")
        size = version.get("size")
        if previous and previous.get("etag") == version["etag"] and previous.get("size") == size and mirror.is_dir():
            report.unchanged = 1
            return safe_join(mirror, root)
        staging = self._staging()
        try:
            download = staging / "archive"
            name = urllib.parse.urlsplit(self.uri).path.rsplit("/", 1)[-1] or redact(self.uri)
            fetch(download, _ProgressLog(name, size))
            extracted = staging / "tree"
            extract_archive(download, extracted)
            root = _repository_root(extracted).relative_to(extracted).as_posix()
            root = "" if root == "." else root
            old = self.cache_dir / f"{self.key}.old"
            shutil.rmtree(old, ignore_errors=True)
            if mirror.exists():
                os.replace(mirror, old)
            os.replace(extracted, mirror)
            shutil.rmtree(old, ignore_errors=True)
            report.downloaded.append(name)
            report.bytes += _size_of(download) or 0
            self._write_manifest({"kind": "archive", "archive": version, "root": root})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return safe_join(mirror, root)

    def _sync_local_archive(self, manifest: dict[str, Any], report: SyncReport) -> Path:
        source = Path(self._root)
        st = source.stat()

        def copy(target: Path, progress: _ProgressLog) -> None:
            shutil.copyfile(source, target)
            progress.done = st.st_size
            progress.finish()

        return self._sync_archive({"etag": str(st.st_mtime_ns), "size": st.st_size}, manifest, report, copy)

    def _sync_http(self, manifest: dict[str, Any], report: SyncReport) -> Path:
        """An archive over http(s): a conditional GET (If-None-Match / If-Modified-Since) answers 304 if unchanged."""
        previous = manifest.get("archive", {}) if manifest.get("kind") == "archive" else {}
        headers = {"User-Agent": "inferd"}
        if previous and self.mirror_dir.is_dir():
            if previous.get("http_etag"):
                headers["If-None-Match"] = previous["http_etag"]
            if previous.get("last_modified"):
                headers["If-Modified-Since"] = previous["last_modified"]
        request = urllib.request.Request(self.uri, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=60)  # the scheme is http(s) here
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                report.unchanged = 1
                return safe_join(self.mirror_dir, manifest.get("root", ""))
            raise OSError(f"{redact(self.uri)}: HTTP {exc.code} {exc.reason}") from exc
        except urllib.error.URLError as exc:
            raise OSError(f"{redact(self.uri)}: {exc.reason}") from exc
        with response:
            http_etag = response.headers.get("ETag") or ""
            last_modified = response.headers.get("Last-Modified") or ""
            length_text = response.headers.get("Content-Length")
            length = int(length_text) if length_text and length_text.isdigit() else None
            marker = http_etag or last_modified or (str(length) if length is not None else "")
            if previous and marker and previous.get("etag") == marker and previous.get("size") == length \
                    and self.mirror_dir.is_dir():
                report.unchanged = 1
                return safe_join(self.mirror_dir, manifest.get("root", ""))

            def fetch(target: Path, progress: _ProgressLog) -> None:
                done = 0
                with open(target, "wb") as out:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        progress.update(done)
                progress.finish()
                if length is not None and done != length:
                    raise ChecksumError(f"{redact(self.uri)}: downloaded {done} bytes, Content-Length was {length}")

            version = {"etag": marker or str(time.time()), "size": length, "http_etag": http_etag,
                       "last_modified": last_modified}  # the validators of the next conditional GET
            return self._sync_archive(version, manifest, report, fetch)


# ---- helpers ----

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


def _expected_md5(info: Mapping[str, Any]) -> str | None:
    """The MD5 (hex) a store announces for an object: an S3 single-part ETag, GCS `md5Hash`, Azure `content_md5`."""
    etag = str(info.get("ETag") or "").strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{32}", etag):
        return etag
    gcs = info.get("md5Hash")
    if gcs:
        with contextlib.suppress(binascii.Error, ValueError):
            return base64.b64decode(gcs).hex()
    settings = info.get("content_settings")
    md5 = settings.get("content_md5") if isinstance(settings, Mapping) else getattr(settings, "content_md5", None)
    if isinstance(md5, (bytes, bytearray)) and len(md5) == 16:
        return bytes(md5).hex()
    return None


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _size_of(path: Path) -> int | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


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
