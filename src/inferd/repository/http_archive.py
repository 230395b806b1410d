"""A repository archive over http(s), with the standard library: a conditional GET answers 304 when it is unchanged."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .cache import MirrorCache
from .checksums import CHUNK, ChecksumError
from .progress import ProgressLog, SyncReport
from .unpack import sync_archive, unpacked_root
from .uris import redact

__all__ = ["sync_http_archive"]


def sync_http_archive(cache: MirrorCache, manifest: dict[str, Any], report: SyncReport) -> Path:
    """Download and extract the archive at `cache.uri` unless its ETag / Last-Modified / length says it is the same.

    The validators of the last download go in the request (If-None-Match / If-Modified-Since); a server that ignores
    them is still caught by comparing the answer's headers with the manifest before reading the body.
    """
    uri = cache.uri
    previous = manifest.get("archive", {}) if manifest.get("kind") == "archive" else {}
    headers = {"User-Agent": "inferd"}
    if previous and cache.mirror_dir.is_dir():
        if previous.get("http_etag"):
            headers["If-None-Match"] = previous["http_etag"]
        if previous.get("last_modified"):
            headers["If-Modified-Since"] = previous["last_modified"]
    request = urllib.request.Request(uri, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=60)  # the scheme is http(s) here
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            report.unchanged = 1
            return unpacked_root(cache, manifest)
        raise OSError(f"{redact(uri)}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise OSError(f"{redact(uri)}: {exc.reason}") from exc
    with response:
        http_etag = response.headers.get("ETag") or ""
        last_modified = response.headers.get("Last-Modified") or ""
        length_text = response.headers.get("Content-Length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        marker = http_etag or last_modified or (str(length) if length is not None else "")
        if previous and marker and previous.get("etag") == marker and previous.get("size") == length \
                and cache.mirror_dir.is_dir():
            report.unchanged = 1
            return unpacked_root(cache, manifest)

        def fetch(target: Path, progress: ProgressLog) -> None:
            done = 0
            with open(target, "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    progress.update(done)
            progress.finish()
            if length is not None and done != length:
                raise ChecksumError(f"{redact(uri)}: downloaded {done} bytes, Content-Length was {length}")

        version = {"etag": marker or str(time.time()), "size": length, "http_etag": http_etag,
                   "last_modified": last_modified}  # the validators of the next conditional GET
        return sync_archive(cache, version, manifest, report, fetch)
