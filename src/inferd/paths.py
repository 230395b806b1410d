"""Path safety: request names, remote keys and archive members never reach outside their root (a bottom floor)."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["UnsafePathError", "safe_join"]


class UnsafePathError(ValueError):
    """A repository path (remote key, archive member, model name) that would leave its root."""


def safe_join(root: str | os.PathLike[str], *parts: str) -> Path:
    """`root / parts...`, refusing anything that could reach outside `root`.

    Each part may hold several components separated by `/`. Refused with `UnsafePathError` (a ValueError): absolute
    parts (`/etc`, `C:\\x`, `\\\\server\\share`), `..` components, NUL characters, and a joined path that leaves `root`
    once symbolic links already on disk are followed. Empty and `.` components are skipped, as in a filesystem path.
    """
    base = Path(root)
    joined = "/".join(str(p) for p in parts)
    pieces: list[str] = []
    for part in parts:
        text = str(part)
        if "\x00" in text:
            raise UnsafePathError(f"refusing path {joined!r}: it contains a NUL character")
        if text.startswith(("/", "\\")) or Path(text).is_absolute() or (os.name == "nt" and Path(text).anchor):
            raise UnsafePathError(f"refusing path {joined!r}: absolute paths are not allowed (must stay inside {base})")
        # Backslashes separate too, on every OS: a Windows-style "..\\x" from a client is refused, not kept as a name.
        for piece in re.split(r"[/\\]", text):
            if piece in ("", "."):
                continue
            if not piece.strip(" ."):  # "..", and ".. " or "..." which Windows reads as ".." too
                raise UnsafePathError(f"refusing path {joined!r}: '..' is not allowed (must stay inside {base})")
            pieces.append(piece)
    candidate = base.joinpath(*pieces)
    real_root = base.resolve()
    real = candidate.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise UnsafePathError(f"refusing path {joined!r}: it resolves to {real}, outside {base} "
                              "(through a symbolic link)")
    return candidate
