"""Repository URIs: which strings are URIs, their scheme, the folder of file:// and pvc://, a form fit for logs."""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from ..paths import safe_join

__all__ = ["HTTP_SCHEMES", "LOCAL_SCHEMES", "PVC_MOUNT_PATH", "is_remote", "local_path", "redact", "uri_scheme"]

HTTP_SCHEMES = ("http", "https")
LOCAL_SCHEMES = ("file", "pvc")  # folders already on this machine: served in place
PVC_MOUNT_PATH = "/mnt/pvc"  # where KServe mounts the claim of a pvc:// storage URI


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for a repository URI (`scheme://...`) that `RemoteRepository` turns into a local folder, else False.

    `file://` and `pvc://` count too: they need `RemoteRepository` to become a path, though nothing is copied.
    Windows paths (`C:\\models`, `C:/models`) are plain paths.
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", os.fspath(uri))
    return match is not None and len(match.group(1)) > 1


def uri_scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if is_remote(uri) else ""


def local_path(uri: str) -> Path:
    """The folder a `file://` or `pvc://` URI names (KServe: `pvc://claim/path` -> `/mnt/pvc/path`).

    KServe mounts the claim itself, so the claim name is not part of the path; `$INFERD_PVC_MOUNT_PATH` changes the
    mount point.
    """
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
