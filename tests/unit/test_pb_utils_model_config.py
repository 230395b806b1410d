"""`pb_utils.ModelConfig` (the argument of `auto_complete_config`) and how its result merges into the server's config.

The checks and messages follow Triton's python backend: a duplicate name with conflicting properties, a smaller
max_batch_size than the config's, dynamic batching over another scheduler, a changed decoupled policy.
"""

from __future__ import annotations

import json

import pytest

import triton_python_backend_utils as pb_utils
from inferd.compat.triton_autocomplete import merge
from inferd.config import ConfigError, config_to_json, parse_config

PBTXT = """
name: "m"
backend: "python"
input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "B" dims: [ 2 ] } ]
instance_group [ { count: 2 } ]
"""


def _given(text: str = PBTXT) -> pb_utils.ModelConfig:
    return pb_utils.ModelConfig(json.dumps(config_to_json(parse_config(text))))


def test_add_input_completes_adds_and_refuses_conflicts() -> None:
    config = _given()
    config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [4]})  # the same: nothing changes
    config.add_input({"name": "B", "data_type": "TYPE_INT64", "dims": [2], "optional": False})  # fills data_type
    config.add_input({"name": "C", "data_type": "TYPE_STRING", "dims": [1], "optional": True})
    inputs = config.as_dict()["input"]
    assert [(i["name"], i["data_type"], i["dims"]) for i in inputs] == [
        ("A", "TYPE_FP32", [4]), ("B", "TYPE_INT64", [2]), ("C", "TYPE_STRING", [1])]
    with pytest.raises(pb_utils.TritonModelException, match="configuration expects datatype TYPE_FP32 for input "
                       "'A', model provides TYPE_FP16"):
        config.add_input({"name": "A", "data_type": "TYPE_FP16", "dims": [4]})
    with pytest.raises(ValueError, match=r"tensor 'A': the model expects dims \[8\] but the model configuration "
                       r"specifies dims \[4\]"):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [8]})
    with pytest.raises(ValueError, match="the model expects optional True but the model configuration specifies "
                       "optional False"):
        config.add_input({"name": "A", "data_type": "TYPE_FP32", "dims": [4], "optional": True})


def test_add_output_checks_properties() -> None:
    config = _given()
    config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [4]})
    assert config.as_dict()["output"] == [{"name": "Y", "data_type": "TYPE_FP32", "dims": [4]}]
    with pytest.raises(ValueError, match="contains property other than 'name', 'data_type' and 'dims'"):
        config.add_output({"name": "Z", "data_type": "TYPE_FP32", "dims": [4], "optional": True})
    with pytest.raises(ValueError, match="output 'Z' in auto-complete-config function for model 'm' is missing "
                       "'dims' property"):
        config.add_output({"name": "Z", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="configuration expects datatype TYPE_FP32 for output 'Y'"):
        config.add_output({"name": "Y", "data_type": "TYPE_INT8", "dims": [4]})


def test_batch_size_scheduler_and_transaction_policy() -> None:
    config = _given('name: "m" max_batch_size: 8')
    with pytest.raises(ValueError, match="configuration specified max_batch_size 8, but in auto-complete-config "
                       "function for model 'm' specified max_batch_size 4"):
        config.set_max_batch_size(4)
    config.set_max_batch_size(16)
    config.set_dynamic_batching()
    assert config.as_dict()["max_batch_size"] == 16 and config.as_dict()["dynamic_batching"] == {}
    with pytest.raises(ValueError, match="tries to set scheduling_choice as 'dynamic_batching'"):
        _given('name: "m" sequence_batching {}').set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    with pytest.raises(ValueError, match="trying to change decoupled property"):
        config.set_model_transaction_policy({"decoupled": False})
    with pytest.raises(ValueError, match="contains property other than 'decoupled'"):
        config.set_model_transaction_policy({"streaming": True})


def test_merge_keeps_the_configs_entries_and_takes_only_what_may_be_completed() -> None:
    server = parse_config(PBTXT)
    given = _given()
    given.add_input({"name": "B", "data_type": "TYPE_INT64", "dims": [2]})
    given.add_input({"name": "C", "data_type": "TYPE_FP32", "dims": [1]})
    given.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [4]})
    given.set_max_batch_size(2)
    given.set_dynamic_batching()
    given.as_dict()["input"].pop(0)  # a model that drops A from the dict: config.pbtxt's A stays
    given.as_dict()["instance_group"] = []  # not something auto-complete sets: ignored
    merge(server, given.as_dict())
    assert [(t.name, t.data_type, list(t.dims)) for t in server.input] == [("A", 11, [4]), ("B", 9, [2]),
                                                                          ("C", 11, [1])]
    assert [t.name for t in server.output] == ["Y"]
    assert server.max_batch_size == 2 and server.HasField("dynamic_batching")
    assert [g.count for g in server.instance_group] == [2]
    with pytest.raises(ConfigError, match="auto_complete_config returned a config that is not valid"):
        merge(server, {"input": [{"name": "X", "data_type": "TYPE_NOPE", "dims": [1]}]})
