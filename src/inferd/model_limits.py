"""Per-model limits set in config.pbtxt `parameters` (read at load time; a bad value is a load error).

* `request_timeout_ms`: a request not answered within this many milliseconds of reaching the scheduler (queue and
  execution together) fails with DEADLINE_EXCEEDED; an instance process still executing it is killed and replaced.
* `instance_memory_limit_bytes`: the data limit (RLIMIT_DATA) of each instance process; an execution that goes
  over it fails with RESOURCE_EXHAUSTED and the process is replaced.
"""

from __future__ import annotations

from .config import ConfigError, ModelConfig, string_parameter

REQUEST_TIMEOUT = "request_timeout_ms"
MEMORY_LIMIT = "instance_memory_limit_bytes"

__all__ = ["MEMORY_LIMIT", "REQUEST_TIMEOUT", "memory_limit_bytes", "memory_limit_text", "request_timeout_ms",
           "timeout_message"]


def _positive_int(config: ModelConfig, key: str) -> int:
    """The parameter as a positive integer; 0 when it is absent."""
    if key not in config.parameters:
        return 0
    text = string_parameter(config, key).strip().replace("_", "")
    if not text.isdigit() or int(text) <= 0:
        raise ConfigError(f"parameter '{key}' must be a positive integer, got "
                          f"'{string_parameter(config, key)}'")
    return int(text)


def request_timeout_ms(config: ModelConfig) -> int:
    """The model's `request_timeout_ms` (0: none)."""
    return _positive_int(config, REQUEST_TIMEOUT)


def memory_limit_bytes(config: ModelConfig) -> int:
    """The model's `instance_memory_limit_bytes` (0: none)."""
    return _positive_int(config, MEMORY_LIMIT)


def timeout_message(model: str, timeout_ms: int) -> str:
    return f"model '{model}' did not answer within {timeout_ms} ms ({REQUEST_TIMEOUT})"


def memory_limit_text(limit: int) -> str:
    """The limit as people read it: `300000000 bytes (286 MiB) (instance_memory_limit_bytes)`."""
    return f"{limit} bytes ({limit / 2**20:.0f} MiB) ({MEMORY_LIMIT})"
