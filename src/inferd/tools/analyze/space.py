"""The points `inferd analyze` measures: a server config (instances, max batch size, preferred batch sizes, queue
delay) and the client concurrency it is measured at, on a grid built from the model's own config."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import product
from typing import Any

CONCURRENCIES = (1, 4, 16, 64)
QUEUE_DELAYS_US = (0, 200, 1000)
DIMENSIONS = ("concurrency", "max_batch_size", "instances", "delay_us", "preferred")


@dataclass(frozen=True, order=True)
class ServerConfig:
    """The part of a model config the sweep changes."""

    instances: int = 1
    max_batch_size: int = 0
    preferred: bool = False  # preferred_batch_size: [max_batch_size], else none
    delay_us: int = 0  # dynamic_batching.max_queue_delay_microseconds

    def label(self) -> str:
        if self.max_batch_size <= 1:
            return f"{self.instances} inst, max batch {self.max_batch_size}"
        preferred = f", preferred {self.max_batch_size}" if self.preferred else ""
        return f"{self.instances} inst, max batch {self.max_batch_size}{preferred}, delay {self.delay_us} µs"

    def apply(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The model config (JSON form, as GET /v2/models/NAME/config gives it) with this point's settings."""
        config = copy.deepcopy(dict(base))
        config["max_batch_size"] = self.max_batch_size
        kind = next((g.get("kind") for g in base.get("instance_group", []) if g.get("kind")), "KIND_CPU")
        config["instance_group"] = [{"count": self.instances, "kind": kind}]
        config.pop("dynamic_batching", None)
        if self.max_batch_size > 1:
            batching: dict[str, Any] = {"max_queue_delay_microseconds": self.delay_us}
            if self.preferred:
                batching["preferred_batch_size"] = [self.max_batch_size]
            config["dynamic_batching"] = batching
        return config


@dataclass(frozen=True, order=True)
class Point:
    config: ServerConfig
    concurrency: int

    def label(self) -> str:
        return f"{self.config.label()}, concurrency {self.concurrency}"


@dataclass(frozen=True)
class Grid:
    """Every value of each dimension; `points()` is the brute-force sweep."""

    instances: tuple[int, ...]
    max_batch_sizes: tuple[int, ...]
    delays_us: tuple[int, ...] = QUEUE_DELAYS_US
    concurrencies: tuple[int, ...] = CONCURRENCIES

    def values(self, dimension: str) -> Sequence[Any]:
        return {"concurrency": self.concurrencies, "max_batch_size": self.max_batch_sizes,
                "instances": self.instances, "delay_us": self.delays_us, "preferred": (False, True)}[dimension]

    def canonical(self, point: Point) -> Point:
        """One point per distinct server behaviour: without batching, queue delay and preferred sizes mean nothing."""
        if point.config.max_batch_size <= 1:
            return replace(point, config=replace(point.config, preferred=False, delay_us=0))
        return point

    def move(self, point: Point, dimension: str, value: Any) -> Point:
        if dimension == "concurrency":
            return self.canonical(replace(point, concurrency=value))
        return self.canonical(replace(point, config=replace(point.config, **{dimension: value})))

    def configs(self) -> Iterator[ServerConfig]:
        seen = set()
        for inst, mbs, delay, preferred in product(self.instances, self.max_batch_sizes, self.delays_us,
                                                   (False, True)):
            config = self.canonical(Point(ServerConfig(inst, mbs, preferred, delay), 1)).config
            if config not in seen:
                seen.add(config)
                yield config

    def points(self) -> list[Point]:
        return [Point(c, n) for c in self.configs() for n in self.concurrencies]

    def start(self, base: Mapping[str, Any]) -> Point:
        """The model's own config, snapped to the grid: where the search starts (and the default it must beat)."""
        groups = base.get("instance_group") or [{}]
        instances = sum(int(g.get("count", 1) or 1) for g in groups)
        batching = base.get("dynamic_batching") or {}
        config = ServerConfig(
            instances=_nearest(self.instances, instances),
            max_batch_size=_nearest(self.max_batch_sizes, int(base.get("max_batch_size", 0))),
            preferred=bool(batching.get("preferred_batch_size")),
            delay_us=_nearest(self.delays_us, int(batching.get("max_queue_delay_microseconds", 0) or 0)))
        return self.canonical(Point(config, self.concurrencies[len(self.concurrencies) // 2]))


def _nearest(values: Sequence[int], wanted: int) -> int:
    return min(values, key=lambda v: (abs(v - wanted), v))


def build_grid(base: Mapping[str, Any], max_instances: int) -> Grid:
    """Instances 1..max_instances (doubling past 2), max batch sizes 1, 4, 16, 64, ... up to the model's own
    (which is kept: the files may not take more), or 0 alone for a model that cannot batch."""
    model_max = int(base.get("max_batch_size", 0))
    instances = sorted({1, *(n for n in (2, 3, 4, 6, 8, 12, 16) if n <= max_instances), max_instances})
    if model_max <= 0:
        return Grid(tuple(instances), (0,), (0,))
    sizes = {1, model_max}
    size = 4
    while size < model_max:
        sizes.add(size)
        size *= 4
    return Grid(tuple(instances), tuple(sorted(sizes)))
