"""The scaling settings as users write them: `--model-memory-limit` and the models' scaling parameters."""

from __future__ import annotations

import pytest

from inferd.config import parse_config
from inferd.scaling import parse_memory_limit
from inferd.scaling.memory import machine_memory
from inferd.scaling.params import AutoscalePolicy, autoscale_policy, idle_unload_seconds, pinned


def _config(text: str) -> object:
    return parse_config(f'name: "m"\nbackend: "onnxruntime"\n{text}')


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'


@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0), ("2000000000", 2_000_000_000), ("8G", 8_000_000_000), ("512Mi", 512 * 1024**2),
    ("1.5GiB", int(1.5 * 1024**3)), ("100k", 100_000),
])
def test_memory_limit_in_bytes(text: str, expected: int) -> None:
    assert parse_memory_limit(text) == expected


def test_memory_limit_as_a_share_of_the_machine() -> None:
    assert parse_memory_limit("50%") == int(machine_memory() * 0.5)
    assert 0 < machine_memory()


@pytest.mark.parametrize("text", ["", "lots", "-1", "0%", "150%", "12X"])
def test_a_bad_memory_limit_says_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match="--model-memory-limit: expected BYTES"):
        parse_memory_limit(text)


def test_idle_window_the_model_sets_wins_over_the_server_flag() -> None:
    assert idle_unload_seconds(_config(""), 300.0) == 300.0
    assert idle_unload_seconds(_config(_param("idle_unload_seconds", "0")), 300.0) == 0.0
    assert idle_unload_seconds(_config(_param("idle_unload_seconds", "2.5")), 0.0) == 2.5
    assert idle_unload_seconds(_config(_param("idle_unload_seconds", "soon")), 7.0) == 7.0  # warned, ignored


def test_pinned() -> None:
    assert pinned(_config(_param("pinned", "true")))
    assert not pinned(_config(_param("pinned", "false")))
    assert not pinned(_config(""))


def test_autoscale_policy_from_the_parameters() -> None:
    assert autoscale_policy(_config("instance_group [ { count: 2 } ]")) is None  # a fixed count
    config = _config("instance_group [ { count: 2 } ]\n" + _param("autoscale_max_instances", "6"))
    assert autoscale_policy(config) == AutoscalePolicy(1, 6, 2.0, 10.0)  # the defaults: target 2, window 10 s
    config = _config(_param("autoscale_min_instances", "3") + _param("autoscale_max_instances", "2")
                     + _param("autoscale_target_pending", "4") + _param("autoscale_window_seconds", "0.5"))
    assert autoscale_policy(config) == AutoscalePolicy(3, 3, 4.0, 0.5)  # the max is never below the min
