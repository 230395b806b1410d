"""Safe tar/zip extraction, below repository/ and backends/ so remote archives and TorchServe .mar files share it."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from .paths import UnsafePathError, safe_join

__all__ = ["ARCHIVE_SUFFIXES", "extract_archive", "is_archive_name"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
_CHUNK = 1 << 20


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


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


def _check_link(dest: Path, member: str, target: str, kind: str) -> None:
    if target.startswith(("/", "\\")) or PureWindowsPath(target).anchor:
        raise UnsafePathError(f"refusing archive member {member!r}: {kind} to the absolute path {target!r}")
    parent = PurePosixPath(member).parent
    resolved = os.path.normpath(os.path.join(dest, parent, target)) if kind == "symbolic link" \
        else os.path.normpath(os.path.join(dest, target))
    if resolved != os.path.normpath(dest) and not resolved.startswith(os.path.normpath(dest) + os.sep):
        raise UnsafePathError(f"refusing archive member {member!r}: {kind} to {target!r} points outside the archive")


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
