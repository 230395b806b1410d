"""Stage `traffic` (before `resolve`): canary splits, several weighted variants of one name, and shadows.

A model's config may carry, in its `parameters`:
- `canary` = `"VERSION:PERCENT"` (e.g. `"2:10"`): that share of the requests that name no version go to VERSION,
  the rest to the newest other ready version;
- `sticky_header` = a request header (default `X-Session-Id`) whose value keeps a client on one variant: the
  same value always lands in the same bucket;
- `shadow` = `"MODEL[:VERSION]"` (comma-separated for several): each request is copied to it; its answer is
  counted and dropped, its failure never fails the request.

Other parts of the server (Seldon deployments with several predictors) define splits by name with `define`.
Each answer names the variant that served it (`InferenceResponse.variant`: the `X-Inferd-Variant` header over
HTTP, trailing metadata over gRPC); `inferd_traffic_requests_total{model,variant}` counts the split actually
served and `inferd_shadow_requests_total{model,shadow,outcome}` the copies.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ..config import ConfigError, ModelConfig
from ..pipeline.call import Call, RequestContext
from ..types import InferenceRequest, InferError

if TYPE_CHECKING:
    from ..manager import ModelManager

__all__ = ["SHADOW_PROTOCOL", "TrafficMetrics", "TrafficRule", "TrafficStage", "Variant", "rule_of"]

log = logging.getLogger("inferd.traffic")

CANARY = "canary"
STICKY_HEADER = "sticky_header"
SHADOW = "shadow"
DEFAULT_STICKY_HEADER = "x-session-id"
SHADOW_PROTOCOL = "shadow"  # a shadow's copy of a request (trusted: the caller was admitted to the original)
# Copies in flight per name beyond which new ones are dropped (counted): a slow shadow must not pile up work.
MAX_SHADOWS_IN_FLIGHT = 64
_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Variant:
    """Where a share of the traffic goes: `model` ("" for the name asked), `version` ("" for the newest ready one
    other than the canary's; `None`: whatever the request asked), `percent` of the requests."""

    name: str
    model: str
    version: str | None
    percent: float


@dataclass(frozen=True, slots=True)
class TrafficRule:
    variants: tuple[Variant, ...]
    sticky_header: str
    shadows: tuple[tuple[str, str], ...]  # (model, version)
    versioned: bool  # a split between versions of one model (requests that name a version are not split)

    def pick(self, key: str | None) -> Variant:
        """The variant for one request: by its sticky header's value when it has one, else at random."""
        if key is not None:
            bucket = zlib.crc32(key.encode("utf-8", "surrogateescape")) % _BUCKETS
        else:
            bucket = random.randrange(_BUCKETS)
        point = bucket * 100.0 / _BUCKETS
        total = 0.0
        for variant in self.variants:
            total += variant.percent
            if point < total:
                return variant
        return self.variants[-1]


def rule_of(config: ModelConfig) -> TrafficRule | None:
    """The traffic rule of a model's config, or None; raises ConfigError for a malformed one."""
    params = config.parameters
    if CANARY not in params and SHADOW not in params:
        return None
    variants: tuple[Variant, ...] = ()
    if CANARY in params:
        text = params[CANARY].string_value.strip()
        version, sep, percent = text.partition(":")
        try:
            share = float(percent)
        except ValueError:
            share = -1.0
        if not sep or not version.isdigit() or not 0.0 <= share <= 100.0:
            raise ConfigError(f"parameter '{CANARY}' must be 'VERSION:PERCENT' (e.g. '2:10'), got '{text}'")
        variants = (Variant("primary", "", "", 100.0 - share), Variant("canary", "", version, share))
    sticky = params[STICKY_HEADER].string_value.strip().lower() if STICKY_HEADER in params else ""
    shadows = []
    if SHADOW in params:
        for item in params[SHADOW].string_value.split(","):
            model, _, version = item.strip().partition(":")
            if not model or (version and not version.isdigit()):
                raise ConfigError(f"parameter '{SHADOW}' must be 'MODEL[:VERSION]' (comma-separated), got '{item}'")
            shadows.append((model, version))
    return TrafficRule(variants, sticky or DEFAULT_STICKY_HEADER, tuple(shadows), True)


class TrafficMetrics(Collector):
    """Counted in plain dictionaries on the request path, turned into samples only when scraped."""

    def __init__(self) -> None:
        self._served: dict[tuple[str, str], int] = {}
        self._shadows: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def served(self, model: str, variant: str) -> None:
        key = (model, variant)
        with self._lock:
            self._served[key] = self._served.get(key, 0) + 1

    def shadow(self, model: str, shadow: str, outcome: str) -> None:
        key = (model, shadow, outcome)
        with self._lock:
            self._shadows[key] = self._shadows.get(key, 0) + 1

    def counts(self) -> dict[tuple[str, str], int]:
        """Requests served per (name, variant)."""
        with self._lock:
            return dict(self._served)

    def shadow_counts(self) -> dict[tuple[str, str, str], int]:
        """Copies per (name, shadow, outcome)."""
        with self._lock:
            return dict(self._shadows)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            served = list(self._served.items())
            shadows = list(self._shadows.items())
        metric = Metric("inferd_traffic_requests", "Requests of a split name by the variant that served them",
                        "counter")
        for (model, variant), count in served:
            metric.add_sample("inferd_traffic_requests_total", {"model": model, "variant": variant}, float(count))
        if served:  # a family is declared only with its samples
            yield metric
        copies = Metric("inferd_shadow_requests", "Copies of requests sent to shadows, by outcome "
                        "(success, failure, dropped)", "counter")
        for (model, shadow, outcome), count in shadows:
            copies.add_sample("inferd_shadow_requests_total", {"model": model, "shadow": shadow,
                                                               "outcome": outcome}, float(count))
        if shadows:
            yield copies


_SHADOW_CONTEXT = RequestContext(SHADOW_PROTOCOL)


class TrafficStage:
    name = "traffic"
    before = "resolve"

    def __init__(self, manager: ModelManager, infer: Any, metrics: TrafficMetrics | None = None) -> None:
        self._manager = manager
        self._infer = infer  # the Server: infer_request / infer_request_sync for shadows' copies
        self.metrics = metrics if metrics is not None else TrafficMetrics()
        self._entries = manager._models  # the rules of models' configs are on their entries (read at load)
        self._defined: dict[str, TrafficRule] = {}
        self._in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None

    def define(self, name: str, variants: Sequence[Variant], shadows: Sequence[tuple[str, str]] = (),
               sticky_header: str = DEFAULT_STICKY_HEADER) -> None:
        """A split of requests for `name` between other models (Seldon predictors), as a model's config would."""
        self._defined[name] = TrafficRule(tuple(variants), sticky_header.lower(), tuple(shadows), False)

    def undefine(self, name: str) -> None:
        self._defined.pop(name, None)

    def __call__(self, call: Call) -> None:
        request = call.request
        name = request.model_name
        rule = self._defined.get(name)
        if rule is None:
            entry = self._entries.get(name)
            if entry is None:
                return
            rule = entry.traffic
            if rule is None:
                return
        if call.context.protocol == SHADOW_PROTOCOL:
            return
        if rule.variants and not (rule.versioned and request.model_version):
            variant = rule.pick(call.context.header(rule.sticky_header))
            if rule.versioned:
                request.model_version = self._version_for(name, variant, rule)
            else:
                request.model_name = variant.model
                if variant.version is not None:
                    request.model_version = variant.version
            call.on_finish(_Served(self.metrics, name, variant.name))
        for model, version in rule.shadows:
            self._shadow(call, name, model, version)

    def _version_for(self, name: str, variant: Variant, rule: TrafficRule) -> str:
        """A canary variant's version; the primary's is the newest ready version that is not the canary's (the
        canary's own when it is the only one ready, and the reverse)."""
        entry = self._manager.entry(name)
        ready = entry.ready if entry is not None else []
        canary = next((v.version or "" for v in rule.variants if v.name == "canary"), "")
        if variant.version:
            if any(m.version_str == variant.version for m in ready):
                return variant.version
            others = [m.version_str for m in ready if m.version_str != variant.version]
            return others[0] if others else variant.version
        for served in ready:
            if served.version_str != canary:
                return served.version_str
        return canary

    # ---- shadows ----

    def _shadow(self, call: Call, name: str, model: str, version: str) -> None:
        request = call.request
        if request.shared_inputs or request.message is not None:
            return  # client shared memory is released when the request ends; messages are not copied
        key = f"{name}->{model}"
        if self._in_flight.get(key, 0) >= MAX_SHADOWS_IN_FLIGHT:
            self.metrics.shadow(name, model, "dropped")
            return
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        copy = InferenceRequest(model, dict(request.inputs), dict(request.datatypes), version, request.id)
        if call.sync:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inferd-shadow")
            self._executor.submit(self._run_sync, copy, name, key)
            return
        task = asyncio.get_running_loop().create_task(self._run(copy, name, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, copy: InferenceRequest, name: str, key: str) -> None:
        try:
            await self._infer.infer_request(copy, _SHADOW_CONTEXT)
        except Exception as exc:
            self._settled(copy, name, key, exc)
        else:
            self._settled(copy, name, key, None)

    def _run_sync(self, copy: InferenceRequest, name: str, key: str) -> None:
        try:
            self._infer.infer_request_sync(copy, _SHADOW_CONTEXT)
        except Exception as exc:
            self._settled(copy, name, key, exc)
        else:
            self._settled(copy, name, key, None)

    def _settled(self, copy: InferenceRequest, name: str, key: str, error: Exception | None) -> None:
        """A copy ended: counted by outcome, its in-flight place given back."""
        self._in_flight[key] -= 1
        if error is None:
            self.metrics.shadow(name, copy.model_name, "success")
            return
        self.metrics.shadow(name, copy.model_name, "failure")
        text = error.message if isinstance(error, InferError) else str(error)
        log.debug("shadow '%s' of '%s' failed: %s", copy.model_name, name, text)


class _Served:
    """Counts the variant that served a request and names it in the answer."""

    __slots__ = ("metrics", "name", "variant")

    def __init__(self, metrics: TrafficMetrics, name: str, variant: str) -> None:
        self.metrics = metrics
        self.name = name
        self.variant = variant

    def __call__(self, call: Call) -> None:
        self.metrics.served(self.name, self.variant)
        call.context.variant = self.variant
        response = call.response
        if response is not None:
            response.variant = self.variant
