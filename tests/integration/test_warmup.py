"""Triton's `model_warmup` on a real server: the samples run before a version is READY.

What a user checks: right after the server is ready, and before any request, a model's statistics show its warm-up
executions (count runs per sample and instance; a sample of batch_size N is one execution of N inferences), with
zero, random and file inputs (numbers and BYTES in Triton's serialised form, from the model's `warmup/` folder); a
sample of batch_size 0 is skipped; a model without batching runs N executions of one; the model then answers
correctly. A warm-up that fails leaves the model UNAVAILABLE and the repository index says which sample and why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from batching_models import picky_config, picky_model
from clients import make_input, simple_data, simple_inputs, unavailable_reason
from models import (
    NOBATCH,
    NOBATCH_CONFIG,
    SIMPLE_CONFIG,
    SIMPLE_STRING_CONFIG,
    double_model,
    simple_model,
    simple_string_model,
    write_model,
)
from observing import model_stats
from serving import ServerProcess, start_server


def _sample(name: str, inputs: dict[str, str], batch_size: int = 1, count: int = 0) -> str:
    body = " ".join(f'inputs {{ key: "{key}" value {{ {value} }} }}' for key, value in inputs.items())
    return f'model_warmup {{ name: "{name}" batch_size: {batch_size} count: {count} {body} }}\n'


def _named(config: str, old: str, new: str) -> str:
    return config.replace(f'name: "{old}"', f'name: "{new}"')


INT16 = "data_type: TYPE_INT32 dims: [ 16 ]"
ZERO, RANDOM = f"{INT16} zero_data: true", f"{INT16} random_data: true"
WORDS = [f"word {i}".encode() for i in range(16)]


def _serialised(values: list[bytes]) -> bytes:
    """Triton's serialised BYTES tensor: each element's 4-byte little-endian length, then its bytes."""
    return b"".join(len(v).to_bytes(4, "little") + v for v in values)


def _repository(root: Path) -> Path:
    repo = root / "models"
    repo.mkdir(parents=True)
    simple = _named(SIMPLE_CONFIG, "simple", "warm")
    write_model(repo, "warm", simple_model(), simple + _sample("zeros_and_random", {"INPUT0": ZERO, "INPUT1": RANDOM},
                                                               batch_size=2, count=3))
    write_model(repo, "two_instances", simple_model(), _named(SIMPLE_CONFIG, "simple", "two_instances")
                + "instance_group [ { kind: KIND_CPU count: 2 } ]\n"
                + _sample("a", {"INPUT0": ZERO, "INPUT1": ZERO}, count=2)
                + _sample("b", {"INPUT0": RANDOM, "INPUT1": RANDOM}, batch_size=4)
                + _sample("skipped", {"INPUT0": ZERO, "INPUT1": ZERO}, batch_size=0, count=5))
    folder = write_model(repo, "from_files", simple_model(), _named(SIMPLE_CONFIG, "simple", "from_files")
                         + _sample("files", {"INPUT0": f'{INT16} input_data_file: "a.bin"',
                                             "INPUT1": f'{INT16} input_data_file: "sub/b.bin"'}, batch_size=3))
    (folder / "warmup" / "sub").mkdir(parents=True)
    (folder / "warmup" / "a.bin").write_bytes(np.arange(16, dtype=np.int32).tobytes())
    (folder / "warmup" / "sub" / "b.bin").write_bytes(np.arange(16, 32, dtype=np.int32).tobytes() + b"extra")
    strings = _named(SIMPLE_STRING_CONFIG, "simple_string", "strings")
    folder = write_model(repo, "strings", simple_string_model(), strings
                         + _sample("words", {"INPUT0": 'data_type: TYPE_STRING dims: [ 16 ] input_data_file: "w"'})
                         + _sample("random", {"INPUT0": "data_type: TYPE_STRING dims: [ 16 ] random_data: true"}))
    (folder / "warmup").mkdir()
    (folder / "warmup" / "w").write_bytes(_serialised(WORDS))
    write_model(repo, "nobatch", double_model(), _named(NOBATCH_CONFIG, NOBATCH, "nobatch")
                + _sample("rows", {"INPUT0": "data_type: TYPE_FP32 dims: [ 2, 3 ] random_data: true"}, batch_size=2))
    _python(repo, "python_model", "return {'y': inputs['x'] * np.float32(2)}", count=2)
    _failing(repo)
    return repo


def _python(repo: Path, name: str, body: str, count: int = 0) -> None:
    """A Python model (its instance runs in a process of its own): y = f(x), FP32 [4], no batching."""
    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.py").write_text(
        f"import numpy as np\n\n\nclass Model:\n    def predict(self, inputs):\n        {body}\n")
    (repo / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        + _sample("floats", {"x": "data_type: TYPE_FP32 dims: [ 4 ] random_data: true"}, count=count))


def _failing(repo: Path) -> None:
    """Models whose warm-up fails, each in another way."""
    picky = 'data_type: TYPE_INT32 dims: [ {n} ] zero_data: true'
    write_model(repo, "fails_to_run", picky_model(), picky_config("fails_to_run")
                + _sample("fine", {"INPUT0": picky.format(n=8)}) + _sample("six", {"INPUT0": picky.format(n=6)}))
    write_model(repo, "missing_file", simple_model(), _named(SIMPLE_CONFIG, "simple", "missing_file")
                + _sample("nofile", {"INPUT0": f'{INT16} input_data_file: "absent.bin"', "INPUT1": ZERO}))
    folder = write_model(repo, "short_file", simple_model(), _named(SIMPLE_CONFIG, "simple", "short_file")
                         + _sample("short", {"INPUT0": f'{INT16} input_data_file: "short.bin"', "INPUT1": ZERO}))
    (folder / "warmup").mkdir()
    (folder / "warmup" / "short.bin").write_bytes(b"\0" * 10)
    write_model(repo, "escapes", simple_model(), _named(SIMPLE_CONFIG, "simple", "escapes")
                + _sample("up", {"INPUT0": f'{INT16} input_data_file: "../config.pbtxt"', "INPUT1": ZERO}))
    write_model(repo, "variable_dims", picky_model(), picky_config("variable_dims")
                + _sample("open", {"INPUT0": "data_type: TYPE_INT32 dims: [ -1 ] zero_data: true"}))
    write_model(repo, "wrong_input", simple_model(), _named(SIMPLE_CONFIG, "simple", "wrong_input")
                + _sample("typo", {"INPUT0": ZERO, "INPUTX": ZERO}))
    _python(repo, "python_fails", "raise ValueError('not warm enough')")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("warmup")
    process = start_server(_repository(root), root / "inferd-warmup.log", "--strict-readiness=false")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def first_stats(server: ServerProcess) -> dict[str, dict[str, Any]]:
    """Every warmed model's statistics as the server first shows them, before any request was sent."""
    return {name: model_stats(server.base_url, name)
            for name in ("warm", "two_instances", "from_files", "strings", "nobatch", "python_model")}


@pytest.mark.parametrize("name, executions, inferences", [
    ("warm", 3, 6),  # count 3 of a batch of 2
    ("two_instances", 2 * (2 + 1), 2 * (2 + 4)),  # per instance: "a" twice (1 row), "b" once (4 rows)
    ("from_files", 1, 3),
    ("strings", 2, 2),
    ("nobatch", 2, 2),  # no batching: batch_size 2 is two executions of one
    ("python_model", 2, 2),  # its instance is a process of its own
])
def test_warmup_runs_before_the_model_is_ready(first_stats: dict[str, dict[str, Any]], name: str,
                                              executions: int, inferences: int) -> None:
    stats = first_stats[name]
    assert stats["execution_count"] == executions, stats
    assert stats["inference_count"] == inferences, stats
    assert stats["inference_stats"]["success"]["count"] == inferences, stats  # one request per row, as Triton
    assert stats["inference_stats"]["fail"]["count"] == 0


def test_warmed_models_then_answer(server: ServerProcess, first_stats: dict[str, dict[str, Any]]) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        a, b = simple_data(2, seed=9)
        for name in ("warm", "two_instances", "from_files"):
            np.testing.assert_array_equal(client.infer(name, simple_inputs(httpclient, a, b)).as_numpy("OUTPUT0"),
                                          a + b)
        words = np.array([WORDS], dtype=np.object_)
        result = client.infer("strings", [make_input(httpclient, "INPUT0", words, "BYTES")])
        assert result.as_numpy("OUTPUT0").tolist() == words.tolist()
        after = model_stats(server.base_url, "warm")
        assert after["execution_count"] == first_stats["warm"]["execution_count"] + 1
    finally:
        client.close()
    assert "warmed up" in server.log()


@pytest.mark.parametrize("name, words", [
    ("fails_to_run", ["failed to run warmup sample 'six'"]),
    ("missing_file", ["warmup sample 'nofile'", "cannot read warmup/absent.bin"]),
    ("short_file", ["warmup sample 'short'", "needs 64 bytes", "only has 10 bytes"]),
    ("escapes", ["warmup sample 'up'", "outside the model's warmup/ folder"]),
    ("variable_dims", ["warmup sample 'open'", "all variable-size dimensions are specified for input 'INPUT0'"]),
    ("wrong_input", ["warmup sample 'typo'", "INPUTX"]),
    ("python_fails", ["failed to run warmup sample 'floats'", "not warm enough"]),
])
def test_a_failing_warmup_makes_the_model_unavailable_with_why(server: ServerProcess, name: str,
                                                               words: list[str]) -> None:
    reason = unavailable_reason(server.base_url, name)
    for word in words:
        assert word in reason, reason
    assert "\n" not in reason
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert not client.is_model_ready(name)
    finally:
        client.close()
