"""The fuzz targets (fuzz/targets.py, run by hand under atheris) on their seeds and on mutations of them: each
decoder answers every input with a value or its protocol's own error, never anything else."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))
import targets


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_target_takes_its_seeds_and_their_mutations(name: str) -> None:
    target = targets.TARGETS[name]
    rng = random.Random(name)
    assert targets.SEEDS[name], "every target has seeds"
    for seed in targets.SEEDS[name]:
        target(seed)
        for _ in range(200):  # a few cheap mutations, as the fuzzer starts with: flip, insert, delete bytes
            data = bytearray(seed)
            for _ in range(rng.randint(1, 6)):
                position = rng.randrange(len(data) + 1)
                kind = rng.random()
                if kind < 0.4 and position < len(data):
                    data[position] = rng.randrange(256)
                elif kind < 0.7:
                    data.insert(position, rng.randrange(256))
                elif position < len(data):
                    del data[position]
            target(bytes(data))


def test_every_target_is_runnable_by_name() -> None:
    runner = (Path(targets.__file__).parent / "run.py").read_text()
    assert "atheris.Setup" in runner and "TARGETS" in runner
    assert set(targets.TARGETS) == set(targets.SEEDS)
