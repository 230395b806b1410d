"""How `inferd analyze` chooses what to measure: brute force (every grid point), or a coordinate descent that
measures a fraction of it.

Coordinate descent starts at the model's own config and sweeps one dimension at a time (concurrency, max batch
size, instances, queue delay, preferred batch size), moving to the best point of each sweep, until a whole round
moves nowhere. Each probe is short, so its throughput is noisy: the best few points, and the starting config, are
then measured again for longer, and the best of those confirmed figures wins (a probe that still beats it is
confirmed too, up to CONFIRM_MAX points). Model Analyzer's quick mode climbs a
hill too, but from one corner and without the confirmation.

"Best" is the highest throughput among points that met the constraints (no failed request, p99 within the latency
budget, server memory within its limit); points that missed are ranked below, the closer to the budget the better,
so a descent that starts outside the budget walks towards it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .space import DIMENSIONS, Grid, Point

CONFIRM_TOP = 2  # points measured again besides the starting config
CONFIRM_FACTOR = 2.0  # a confirmation probe is this many times as long
CONFIRM_MAX = 5  # most points confirmed besides the starting config
MAX_ROUNDS = 3


@dataclass(frozen=True)
class Measurement:
    point: Point
    throughput: float  # inferences per second
    p99_ms: float
    errors: int
    seconds: float  # how long the probe ran
    rss_mb: float | None = None  # the server's resident memory after the probe, when it can be read


@dataclass(frozen=True)
class Limits:
    latency_budget_ms: float | None = None
    max_memory_mb: float | None = None

    def met(self, m: Measurement) -> bool:
        if m.errors or math.isnan(m.p99_ms) or m.throughput <= 0:
            return False
        if self.latency_budget_ms is not None and m.p99_ms > self.latency_budget_ms:
            return False
        return self.max_memory_mb is None or m.rss_mb is None or m.rss_mb <= self.max_memory_mb

    def score(self, m: Measurement) -> tuple[int, float]:
        if self.met(m):
            return (2, m.throughput)
        if m.errors or math.isnan(m.p99_ms):
            return (0, m.throughput)
        return (1, -m.p99_ms)


# Measures points (those sharing a server config one after another) for `seconds` each.
Measure = Callable[[Sequence[Point], float], list[Measurement]]


@dataclass
class SearchResult:
    probes: list[Measurement] = field(default_factory=list)  # the short measurements, in order
    confirmed: list[Measurement] = field(default_factory=list)  # the longer ones of the finalists
    best: Measurement | None = None
    start: Measurement | None = None  # the model's own config (quick search: confirmed like the finalists)
    seconds: float = 0.0


def brute_force(grid: Grid, measure: Measure, probe_s: float, limits: Limits) -> SearchResult:
    started = time.perf_counter()
    result = SearchResult(probes=measure(grid.points(), probe_s))
    met = [m for m in result.probes if limits.met(m)]
    result.best = max(met, key=lambda m: m.throughput) if met else None
    result.seconds = time.perf_counter() - started
    return result


def coordinate_descent(grid: Grid, start: Point, measure: Measure, probe_s: float, limits: Limits) -> SearchResult:
    started = time.perf_counter()
    seen: dict[Point, Measurement] = {}

    def measured(points: Sequence[Point]) -> list[Measurement]:
        new = [p for p in dict.fromkeys(points) if p not in seen]
        for m in measure(sorted(new, key=lambda p: (p.config, p.concurrency)), probe_s) if new else []:
            seen[m.point] = m
        return [seen[p] for p in points]

    current = measured([start])[0]
    for _ in range(MAX_ROUNDS):
        moved = False
        for dimension in DIMENSIONS:
            candidates = measured([grid.move(current.point, dimension, v) for v in grid.values(dimension)])
            best = max(candidates, key=limits.score)
            if limits.score(best) > limits.score(current):
                current, moved = best, True
        if not moved:
            break
    result = SearchResult(probes=list(seen.values()))
    _confirm(result, start, measure, probe_s * CONFIRM_FACTOR, limits)
    result.seconds = time.perf_counter() - started
    return result


def _confirm(result: SearchResult, start: Point, measure: Measure, seconds: float, limits: Limits) -> None:
    """Measure the starting config and the best probes again, longer; while an unconfirmed probe still beats the
    best confirmed figure, confirm it too (up to CONFIRM_MAX points), so the best is a long measurement."""
    done: dict[Point, Measurement] = {}
    ranked = sorted((m for m in result.probes if limits.met(m)), key=lambda m: -m.throughput)
    wanted = [start, *(m.point for m in ranked[:CONFIRM_TOP])]
    while wanted:
        for m in measure(list(dict.fromkeys(p for p in wanted if p not in done)), seconds):
            done[m.point] = m
        met = [m for m in done.values() if limits.met(m)]
        best = max(met, key=lambda m: m.throughput) if met else None
        beaten = [m.point for m in ranked if m.point not in done and (best is None or m.throughput > best.throughput)]
        wanted = beaten[:1] if len(done) < CONFIRM_MAX + 1 else []
    result.confirmed = list(done.values())
    result.start = done[start]
    met = [m for m in result.confirmed if limits.met(m)]
    result.best = max(met, key=lambda m: m.throughput) if met else None
