"""Triton's response cache: `--cache-config local,size=BYTES` on the server, `response_cache { enable: true }` in a
model's config. A request whose answer is cached is answered by the `cache` stage (after `admit`) without running
its model; the stage is installed only when the server has a cache, so without one it costs nothing.
"""

from .key import RequestKey, key_size, request_key
from .metrics import CacheMetrics
from .options import CacheOptions
from .stage import CacheStage
from .store import ResponseCache, entry_size

__all__ = ["CacheMetrics", "CacheOptions", "CacheStage", "RequestKey", "ResponseCache", "entry_size", "key_size",
           "request_key"]
