"""Execution statistics are noted on the hot path and added up when read: a reader sees every execution so far,
exactly (Triton's counters in nanoseconds), whichever threads recorded them and however many folds it took."""

from __future__ import annotations

import random
import threading

from inferd.observability.statistics import _FOLD_AT, ModelStatistics


def test_a_reader_sees_every_execution_at_once() -> None:
    stats = ModelStatistics("m", "1")
    stats.record_execution(4, 2, 10, 100, 1_000, 7)
    stats.record_execution(1, 1, 20, 200, 2_000, 3)
    assert stats.execution_count == 2 and stats.inference_count == 5
    assert (stats.queue.count, stats.queue.ns) == (3, 10)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (3, 2 * 100 + 200)  # per request, as Triton
    assert {size: (b.compute_infer.count, b.compute_infer.ns) for size, b in stats.batches.items()} == {
        4: (1, 100), 1: (1, 200)}
    stats.record_cache_hit(50)  # a cache hit counts in the queue count, with no time, and in no execution
    assert (stats.queue.count, stats.queue.ns, stats.execution_count) == (4, 10, 2)


def test_executions_from_many_threads_add_up_exactly() -> None:
    stats = ModelStatistics("m", "1")
    per_thread = _FOLD_AT * 2 + 17  # several folds while the threads still record
    notes: list[list[tuple[int, int, int, int, int, int]]] = []
    for seed in range(4):
        rng = random.Random(seed)
        notes.append([(rng.choice((1, 2, 8)), rng.randint(1, 3), rng.randint(0, 10**6), rng.randint(0, 10**9),
                       rng.randint(0, 10**6), rng.randint(0, 10**7)) for _ in range(per_thread)])

    def record(mine: list[tuple[int, int, int, int, int, int]]) -> None:
        for note in mine:
            stats.record_execution(*note)
            if note[3] % 97 == 0:
                stats.to_json()  # a reader folds meanwhile

    threads = [threading.Thread(target=record, args=(mine,)) for mine in notes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [note for mine in notes for note in mine]
    doc = stats.to_json()
    assert doc["execution_count"] == len(every)
    assert doc["inference_count"] == sum(n[0] for n in every)
    served = sum(n[1] for n in every)
    inference = doc["inference_stats"]
    assert inference["queue"] == {"count": served, "ns": sum(n[5] for n in every)}
    for key, column in (("compute_input", 2), ("compute_infer", 3), ("compute_output", 4)):
        assert inference[key] == {"count": served, "ns": sum(n[column] * n[1] for n in every)}
    by_size = {b["batch_size"]: b for b in doc["batch_stats"]}
    assert sorted(by_size) == [1, 2, 8]
    for size, batch in by_size.items():
        mine = [n for n in every if n[0] == size]
        assert batch["compute_infer"] == {"count": len(mine), "ns": sum(n[3] for n in mine)}
        assert batch["compute_output"] == {"count": len(mine), "ns": sum(n[4] for n in mine)}
