"""The scaling parameters of a model's config (`parameters { key: ... value: { string_value: ... } }`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import ModelConfig

log = logging.getLogger("inferd.scaling")

IDLE_UNLOAD = "idle_unload_seconds"
PINNED = "pinned"
MIN_INSTANCES = "autoscale_min_instances"
MAX_INSTANCES = "autoscale_max_instances"
TARGET_PENDING = "autoscale_target_pending"
WINDOW = "autoscale_window_seconds"


@dataclass(slots=True, frozen=True)
class AutoscalePolicy:
    """Instances are added while the pending requests per instance stay above `target_pending` for a window, and
    removed after a window with none pending; always between `min_instances` and `max_instances`."""

    min_instances: int
    max_instances: int
    target_pending: float = 2.0
    window_s: float = 10.0


def _text(config: ModelConfig, key: str) -> str | None:
    if key not in config.parameters:
        return None
    return config.parameters[key].string_value.strip()


def _number(config: ModelConfig, key: str, default: float) -> float:
    text = _text(config, key)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        log.warning("model '%s': parameter %s='%s' is not a non-negative number; using %g", config.name, key,
                    text, default)
        return default
    return value


def idle_unload_seconds(config: ModelConfig, default: float) -> float:
    """Seconds without a request before the model scales to zero (0: never); its own parameter wins."""
    return _number(config, IDLE_UNLOAD, default)


def pinned(config: ModelConfig) -> bool:
    """A pinned model is never evicted to make room under the memory limit."""
    return (_text(config, PINNED) or "").lower() in ("true", "1", "yes")


def autoscale_policy(config: ModelConfig) -> AutoscalePolicy | None:
    """The model's autoscaling, when it sets autoscale_max_instances (None: its instance count is fixed)."""
    if _text(config, MAX_INSTANCES) is None and _text(config, MIN_INSTANCES) is None:
        return None
    start = sum(max(1, g.count) for g in config.instance_group) or 1
    low = max(1, int(_number(config, MIN_INSTANCES, 1)))
    high = max(low, int(_number(config, MAX_INSTANCES, max(start, low))))
    return AutoscalePolicy(low, high, _number(config, TARGET_PENDING, 2.0) or 2.0,
                           _number(config, WINDOW, 10.0) or 10.0)
