"""`--cache-config <cache>,<setting>=<value>` (Triton's flag; given once per setting): the cache and its size."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_FORMAT = "--cache-config option format is '<cache name>,<setting>=<value>'"
CACHES = ("local",)


@dataclass(frozen=True)
class CacheOptions:
    """The configured cache: its name ("local", the only one inferd has) and its size in bytes."""

    name: str
    size: int

    @classmethod
    def parse(cls, options: Iterable[str]) -> CacheOptions | None:
        """The flags' values, in order (a later setting replaces an earlier one); None when none is given.
        ValueError, with what is wrong, for a malformed value, another cache, an unknown setting or no size."""
        name = ""
        settings: dict[str, str] = {}
        for option in options:
            cache, comma, assignment = option.partition(",")
            if not comma or not cache or "=" not in assignment:
                raise ValueError(f"{_FORMAT}. Got {option}")
            if cache not in CACHES:
                raise ValueError(f"--cache-config {option}: there is no cache named '{cache}' (inferd has: "
                                 f"{', '.join(CACHES)})")
            if name and cache != name:
                raise ValueError(f"--cache-config: one cache at a time, got '{name}' and '{cache}'")
            name = cache
            for item in assignment.split(","):  # `local,size=N` (Triton); several settings in one value, too
                setting, equals, value = item.partition("=")
                if not equals or not value or setting != "size":
                    raise ValueError(f"--cache-config {option}: the local cache has one setting, size=BYTES")
                settings[setting] = value
        if not name:
            return None
        size = settings.get("size", "")
        if not (size.isascii() and size.isdigit()) or int(size) <= 0:
            raise ValueError(f"--cache-config {name},size={size}: the size must be a number of bytes above 0")
        return cls(name, int(size))
