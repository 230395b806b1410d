"""Path safety: names and relative paths from requests or remote listings never reach outside their root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def safe_join(root: Path, *parts: str) -> Path:
    """`root / parts`, refusing absolute parts, `..`, and paths that resolve (through symlinks) outside root."""
    relative = PurePosixPath(*[p.replace("\\", "/") for p in parts])
    if relative.is_absolute() or any(p in ("..", "") for p in relative.parts) or not relative.parts:
        raise ValueError(f"path '{'/'.join(parts)}' is not a relative path inside the model folder")
    target = root.joinpath(*relative.parts)
    resolved_root = root.resolve()
    resolved = target.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise ValueError(f"path '{'/'.join(parts)}' leads outside {root}")
    return target
