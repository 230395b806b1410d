"""Checking a download against what its source announced: its size, and the MD5 a store publishes for an object."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CHUNK", "ChecksumError", "expected_md5", "md5_of", "size_of"]

CHUNK = 1 << 20  # bytes read or written at a time


class ChecksumError(OSError):
    """A downloaded file differs from what the store announced (size or MD5)."""


def expected_md5(info: Mapping[str, Any]) -> str | None:
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


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def size_of(path: Path) -> int | None:
    """The size of a regular file, None for anything else (missing, a folder, a device)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
