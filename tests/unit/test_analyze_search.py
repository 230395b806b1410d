"""`inferd analyze`'s grid, search and Pareto set on a made-up throughput surface (pure logic: no server)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from inferd.tools.analyze import Grid, Limits, Measurement, Point, ServerConfig, build_grid
from inferd.tools.analyze.report import pareto
from inferd.tools.analyze.search import brute_force, coordinate_descent

BASE = {"name": "mlp", "platform": "onnxruntime_onnx", "max_batch_size": 256,
        "instance_group": [{"name": "mlp", "count": 1, "kind": "KIND_CPU"}]}


def surface(point: Point) -> tuple[float, float]:
    """Throughput grows with batching and concurrency and saturates; two instances help a little; a queue delay
    helps only at high concurrency. p99 grows with concurrency over throughput (Little's law, times 2)."""
    c = point.config
    batch = min(max(c.max_batch_size, 1), point.concurrency)
    throughput = 1000 * (1 - math.exp(-batch / 8)) * (1.15 if c.instances == 2 else 1.0)
    throughput *= 1.1 if c.delay_us == 200 and point.concurrency >= 16 else 1.0
    throughput *= 1.05 if c.preferred else 1.0
    return throughput, 2000 * point.concurrency / throughput


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Point] = []

    def __call__(self, points: Sequence[Point], seconds: float) -> list[Measurement]:
        self.calls += points
        return [Measurement(p, *surface(p), errors=0, seconds=seconds) for p in points]


def test_the_grid_is_built_from_the_models_config() -> None:
    grid = build_grid(BASE, max_instances=2)
    assert grid.instances == (1, 2)
    assert grid.max_batch_sizes == (1, 4, 16, 64, 256)
    # without batching (max batch 1) delay and preferred sizes mean nothing: one config per instance count
    unbatched = [c for c in grid.configs() if c.max_batch_size == 1]
    assert unbatched == [ServerConfig(1, 1), ServerConfig(2, 1)]
    assert len(grid.points()) == (2 + 2 * 4 * 3 * 2) * 4
    assert build_grid({"max_batch_size": 0}, 1).points() == [Point(ServerConfig(1, 0), n) for n in (1, 4, 16, 64)]


def test_a_point_becomes_a_config_the_server_loads() -> None:
    config = ServerConfig(instances=2, max_batch_size=16, preferred=True, delay_us=200).apply(BASE)
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 200, "preferred_batch_size": [16]}
    assert "dynamic_batching" not in ServerConfig(1, 1).apply({**BASE, "dynamic_batching": {}})
    assert BASE["max_batch_size"] == 256  # the base is left as it was


def test_coordinate_descent_finds_the_brute_force_best_measuring_a_fraction() -> None:
    grid = build_grid(BASE, max_instances=2)
    limits = Limits(latency_budget_ms=400)
    brute, quick = Recorder(), Recorder()
    everything = brute_force(grid, brute, 1.0, limits)
    found = coordinate_descent(grid, grid.start(BASE), quick, 1.0, limits)
    assert len(brute.calls) == len(grid.points())
    assert everything.best is not None and found.best is not None
    assert found.best.throughput >= 0.9 * everything.best.throughput
    assert found.best.p99_ms <= 400
    assert len(found.probes) <= 0.2 * len(grid.points())
    # the starting config and the finalists are measured again, for twice as long
    assert found.start is not None and found.start.point == grid.start(BASE)
    assert {m.seconds for m in found.confirmed} == {2.0}
    assert found.best.throughput >= found.start.throughput


def test_a_budget_nobody_meets_leaves_no_best() -> None:
    grid = Grid((1,), (1, 4), (0,), (1, 4))
    found = coordinate_descent(grid, Point(ServerConfig(1, 4), 4), Recorder(), 0.1, Limits(latency_budget_ms=0.001))
    assert found.best is None and found.probes


def test_the_pareto_set_keeps_only_undominated_points_within_the_limits() -> None:
    def m(throughput: float, p99: float, errors: int = 0) -> Measurement:
        return Measurement(Point(ServerConfig(), int(throughput)), throughput, p99, errors, 1.0)

    points = [m(100, 10), m(90, 5), m(95, 12), m(200, 50), m(300, 5, errors=1), m(150, 80)]
    front = pareto(points, Limits(latency_budget_ms=60))
    assert [(p.throughput, p.p99_ms) for p in front] == [(200, 50), (100, 10), (90, 5)]
