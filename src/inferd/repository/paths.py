"""Where `classification.py` still imports path safety from; it lives in `inferd.paths` (below archives too)."""

from ..paths import UnsafePathError, safe_join

__all__ = ["UnsafePathError", "safe_join"]
