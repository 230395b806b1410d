"""Triton's `--backend-config=[<backend>,]<setting>=<value>`: settings for every backend, or for one by name.

The one inferd uses is `default-max-batch-size`: the `max_batch_size` that auto-complete gives a config-less model
whose inputs and outputs all have a variable first dimension (Triton's default is 4; 0 leaves such models
unbatched). A backend-specific value wins over one given for every backend, as in Triton. Other settings (Triton's
`tensorflow,version=2`, `python,shm-default-byte-size=...`) are accepted for compatibility and do nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..config import ModelConfig

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "DEFAULT_MAX_BATCH_SIZE_SETTING", "BackendSettings", "batch_by_default"]

DEFAULT_MAX_BATCH_SIZE = 4  # Triton's default-max-batch-size
DEFAULT_MAX_BATCH_SIZE_SETTING = "default-max-batch-size"
_USED = frozenset({DEFAULT_MAX_BATCH_SIZE_SETTING})
_FORMAT = "--backend-config option format is '<backend name>,<setting>=<value>' or '<setting>=<value>'"


@dataclass(frozen=True)
class BackendSettings:
    """Setting values by backend name ("" holds those given for every backend)."""

    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Iterable[str]) -> BackendSettings:
        """The flag's values, in order (a later one replaces an earlier one); ValueError with Triton's words for
        one that is not `[<backend>,]<setting>=<value>`, or a default-max-batch-size that is not an integer >= 0."""
        values: dict[str, dict[str, str]] = {}
        for option in options:
            backend, comma, assignment = option.partition(",")
            if not comma or "=" in backend:  # no backend named (a value may hold a comma)
                backend, comma, assignment = "", "", option
            setting, equals, value = assignment.partition("=")
            if (comma and not backend) or not equals or not setting or not value:
                raise ValueError(f"{_FORMAT}. Got {option}")
            if setting == DEFAULT_MAX_BATCH_SIZE_SETTING and not (value.isascii() and value.isdigit()):
                raise ValueError(f"--backend-config {option}: {setting} must be an integer >= 0")
            values.setdefault(backend, {})[setting] = value
        return cls(values)

    def get(self, backend: str, setting: str) -> str | None:
        """The backend's own value of a setting, else the one for every backend, else None."""
        own = self.values.get(backend, {})
        return own[setting] if setting in own else self.values.get("", {}).get(setting)

    def default_max_batch_size(self, backend: str) -> int:
        value = self.get(backend, DEFAULT_MAX_BATCH_SIZE_SETTING)
        return DEFAULT_MAX_BATCH_SIZE if value is None else int(value)

    def unused(self) -> list[str]:
        """The settings given that inferd does not use, as `[backend,]setting` (for one warning at start)."""
        return [f"{backend},{setting}" if backend else setting
                for backend, settings in self.values.items() for setting in settings if setting not in _USED]


def batch_by_default(config: ModelConfig, max_batch_size: int) -> None:
    """What auto-complete does to a config-less model that can batch, as Triton's backends do: `max_batch_size`
    becomes the default-max-batch-size (0: the model stays unbatched), and above 1 the dynamic batcher is on unless
    the config chose a scheduler."""
    if max_batch_size <= 0:
        return
    config.max_batch_size = max_batch_size
    if max_batch_size > 1 and not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
        config.dynamic_batching.SetInParent()
