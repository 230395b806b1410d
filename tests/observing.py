"""Reading what a running server reports about itself: the statistics extension and the Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving import HOST

T = TypeVar("T")


def model_stats(base_url: str, model: str) -> dict[str, Any]:
    """`GET /v2/models/<model>/stats`: the one version's statistics (Triton's HTTP JSON form)."""
    response = httpx.get(f"{base_url}/v2/models/{model}/stats", timeout=10.0)
    assert response.status_code == 200, response.text
    entries = response.json()["model_stats"]
    assert len(entries) == 1, entries
    return entries[0]


def batch_counts(stats: dict[str, Any]) -> dict[int, int]:
    """Executions per batch size, from `batch_stats` (each execution counts once under its batch size)."""
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def counts_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two statistics snapshots of one model."""
    before_batches, after_batches = batch_counts(before), batch_counts(after)
    batches = {size: n - before_batches.get(size, 0) for size, n in after_batches.items()}
    return {
        "success": after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"],
        "fail": after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"],
        "inference_count": after["inference_count"] - before["inference_count"],
        "execution_count": after["execution_count"] - before["execution_count"],
        "batches": {size: n for size, n in batches.items() if n},
    }


def scrape(metrics_port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """`GET /metrics`, parsed with prometheus_client's parser: value per (sample name, labels)."""
    response = httpx.get(f"http://{HOST}:{metrics_port}/metrics", timeout=10.0)
    assert response.status_code == 200, response.text
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """One sample's value; a counter may be exposed with or without its `_total` suffix."""
    key = frozenset(labels.items())
    for candidate in (name, f"{name}_total"):
        if (candidate, key) in samples:
            return samples[(candidate, key)]
    known = sorted({n for n, _ in samples if n.startswith(name)})
    raise AssertionError(f"no sample {name}{dict(labels)}; samples named like it: {known}")


async def in_completion_order(calls: Iterable[tuple[str, Awaitable[T]]]) -> tuple[list[str], dict[str, T]]:
    """Run the awaitables concurrently; return their tags in the order they finished, and their results."""
    order: list[str] = []
    results: dict[str, T] = {}

    async def run(tag: str, call: Awaitable[T]) -> None:
        results[tag] = await call
        order.append(tag)

    await asyncio.gather(*(run(tag, call) for tag, call in calls))
    return order, results
