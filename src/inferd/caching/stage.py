"""Stage `cache` (after `admit`): a request whose answer is in the response cache gets it without running its
model; the answer of one that is not is kept when it ends well.

A hit sets `call.response`, so `schedule` and `respond` have nothing left to do. Bypassed: models without
`response_cache { enable: true }`, decoupled models, requests with shared-memory inputs or outputs (their answer
belongs in the client's memory) and whole-message requests (Seldon's).
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from functools import partial

from ..model import ServedModel
from ..pipeline import Call
from ..types import InferenceResponse
from .key import RequestKey, key_size, request_key
from .store import ResponseCache

log = logging.getLogger("inferd.cache")


class CacheStage:
    name = "cache"
    after = "admit"

    def __init__(self, cache: ResponseCache) -> None:
        self.cache = cache
        # Per loaded version: its token in the keys (a reload's answers never mix with the old one's), 0 when it
        # does not use the cache. Weak: an unloaded version's entry goes with it.
        self._tokens: weakref.WeakKeyDictionary[ServedModel, int] = weakref.WeakKeyDictionary()
        self._tokens_made = itertools.count(1)  # next() is atomic: no two versions share a token

    def __call__(self, call: Call) -> None:
        model = call.model
        token = self._tokens.get(model)
        if token is None:
            token = self._token_for(model)
        if not token:
            return
        request = call.request
        if request.message is not None or call.admitted.lease is not None:
            return
        start = time.perf_counter_ns()
        key = request_key(token, request)
        outputs = self.cache.get(key)
        if outputs is None:
            call.on_finish(partial(self._keep, key, time.perf_counter_ns() - start))
            return
        call.response = InferenceResponse(model.name, model.version_str, dict(outputs), request.id)
        model.stats.record_cache_hit(time.perf_counter_ns() - start)

    def _token_for(self, model: ServedModel) -> int:
        config = model.config
        enabled = config.response_cache.enable and not config.model_transaction_policy.decoupled
        if config.response_cache.enable and not enabled:
            log.warning("model '%s' is decoupled: its response_cache is not used (decoupled models are never cached)",
                        model.name)
        token = 0
        if enabled:
            token = next(self._tokens_made)
            model.stats.caching = True
        self._tokens[model] = token
        return token

    def _keep(self, key: RequestKey, lookup_ns: int, call: Call) -> None:
        """When a missed request ends: keep its answer if it has one (a failure is not cached)."""
        start = time.perf_counter_ns()
        response = call.response
        if call.error is None and response is not None and not response.shared_outputs:
            self.cache.put(key, response.outputs, key_size(key))
        call.model.stats.record_cache_miss(lookup_ns + time.perf_counter_ns() - start)
