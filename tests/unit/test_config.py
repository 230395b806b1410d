"""Model configuration: parsing config.pbtxt, validation with one-line reasons, JSON form, version policy."""

from __future__ import annotations

import pytest

from inferd.config import (
    ConfigError,
    ModelConfig,
    config_from_json,
    config_to_json,
    parse_config,
    read_config,
    validate_config,
)
from inferd.repository import select_versions

GOOD = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]
"""


def _config(text: str = GOOD) -> ModelConfig:
    return parse_config(text)


def _assert_one_line_error(exc: pytest.ExceptionInfo[ConfigError], *words: str) -> None:
    message = str(exc.value)
    assert message, "the reason must not be empty"
    assert "\n" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_parse_good_config() -> None:
    config = _config()
    assert config.name == "m"
    assert config.max_batch_size == 8
    assert [t.name for t in config.input] == ["INPUT0"]
    assert list(config.input[0].dims) == [16]
    validate_config(config, "m")


def test_unknown_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(GOOD + "\nnot_a_field: 1\n")
    _assert_one_line_error(exc, "not_a_field")


def test_unknown_enum_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(GOOD.replace("TYPE_INT32", "TYPE_NOPE", 1))
    _assert_one_line_error(exc, "TYPE_NOPE")


def test_syntax_error_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config('name: "m"\ninput [ { name: "INPUT0"\n\n')
    _assert_one_line_error(exc)


@pytest.mark.parametrize("dims", ["0", "-2", "16, 0"])
def test_bad_dims_are_rejected(dims: str) -> None:
    config = _config(GOOD.replace("dims: [ 16 ] } ]\noutput", f"dims: [ {dims} ] }} ]\noutput"))
    with pytest.raises(ConfigError) as exc:
        validate_config(config, "m")
    _assert_one_line_error(exc, "INPUT0")


def test_missing_dims_are_rejected() -> None:
    config = _config(GOOD.replace('{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }',
                                  '{ name: "OUTPUT0" data_type: TYPE_INT32 }'))
    with pytest.raises(ConfigError) as exc:
        validate_config(config, "m")
    _assert_one_line_error(exc, "OUTPUT0", "dims")


def test_type_invalid_is_rejected() -> None:
    config = _config(GOOD.replace("data_type: TYPE_INT32 dims: [ 16 ] } ]\noutput",
                                  "dims: [ 16 ] } ]\noutput"))
    assert config.input[0].data_type == 0  # TYPE_INVALID
    with pytest.raises(ConfigError) as exc:
        validate_config(config, "m")
    _assert_one_line_error(exc, "INPUT0", "data_type")


def test_explicit_type_invalid_is_rejected() -> None:
    config = _config(GOOD.replace("TYPE_INT32", "TYPE_INVALID", 1))
    with pytest.raises(ConfigError) as exc:
        validate_config(config, "m")
    _assert_one_line_error(exc, "INPUT0")


def test_name_must_match_the_model_folder() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_config(_config(), "other")
    _assert_one_line_error(exc, "other")


def test_negative_max_batch_size_is_rejected() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_config(_config(GOOD.replace("max_batch_size: 8", "max_batch_size: -1")), "m")
    _assert_one_line_error(exc, "max_batch_size")


def test_a_config_needs_inputs_and_outputs() -> None:
    no_inputs = _config('name: "m"\noutput [ { name: "O" data_type: TYPE_FP32 dims: [ 1 ] } ]')
    with pytest.raises(ConfigError) as exc:
        validate_config(no_inputs, "m")
    _assert_one_line_error(exc, "input")
    no_outputs = _config('name: "m"\ninput [ { name: "I" data_type: TYPE_FP32 dims: [ 1 ] } ]')
    with pytest.raises(ConfigError) as exc:
        validate_config(no_outputs, "m")
    _assert_one_line_error(exc, "output")


def test_duplicate_input_names_are_rejected() -> None:
    config = _config(GOOD.replace('input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]',
                                  'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },'
                                  ' { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] } ]'))
    with pytest.raises(ConfigError) as exc:
        validate_config(config, "m")
    _assert_one_line_error(exc, "INPUT0")


def test_dynamic_batching_needs_a_batch_dimension() -> None:
    config = _config(GOOD.replace("max_batch_size: 8", "max_batch_size: 0") + "dynamic_batching { }\n")
    with pytest.raises(ConfigError) as exc:
        validate_config(config, "m")
    _assert_one_line_error(exc, "max_batch_size")


def test_reshape_must_keep_the_element_count() -> None:
    config = _config(GOOD.replace("dims: [ 16 ] } ]\noutput", "dims: [ 16 ] reshape { shape: [ 4, 5 ] } } ]\noutput"))
    with pytest.raises(ConfigError) as exc:
        validate_config(config, "m")
    _assert_one_line_error(exc, "reshape")
    ok = _config(GOOD.replace("dims: [ 16 ] } ]\noutput", "dims: [ 16 ] reshape { shape: [ 4, 4 ] } } ]\noutput"))
    validate_config(ok, "m")


def test_read_config_of_a_folder_without_one_is_none(tmp_path) -> None:
    assert read_config(tmp_path) is None
    (tmp_path / "config.pbtxt").write_text(GOOD)
    config = read_config(tmp_path)
    assert config is not None and config.name == "m"


def test_config_json_round_trip_writes_dims_as_numbers() -> None:
    data = config_to_json(_config())
    assert data["name"] == "m"
    assert data["max_batch_size"] == 8
    assert data["input"][0]["dims"] == [16]
    assert data["input"][0]["data_type"] == "TYPE_INT32"
    again = config_from_json(data)
    assert again == _config()


def test_config_from_bad_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_json('{"name": "m", "not_a_field": 1}')
    _assert_one_line_error(exc, "not_a_field")
    with pytest.raises(ConfigError):
        config_from_json("{not json")


# ---- version policy ----

def _policy(text: str) -> ModelConfig:
    return _config(GOOD + text)


def test_default_policy_serves_the_latest_version() -> None:
    assert select_versions(_config(), [1, 3, 2]) == [3]


def test_latest_n() -> None:
    assert select_versions(_policy("version_policy { latest { num_versions: 2 } }"), [1, 3, 2, 10]) == [3, 10]
    assert select_versions(_policy("version_policy { latest { num_versions: 5 } }"), [2, 1]) == [1, 2]


def test_all_versions() -> None:
    assert select_versions(_policy("version_policy { all { } }"), [3, 1, 2]) == [1, 2, 3]


def test_specific_versions_keeps_only_those_that_exist() -> None:
    policy = _policy("version_policy { specific { versions: [ 1, 3, 7 ] } }")
    assert select_versions(policy, [1, 2, 3]) == [1, 3]


def test_no_versions_on_disk() -> None:
    assert select_versions(_config(), []) == []
    assert select_versions(_policy("version_policy { all { } }"), []) == []


def test_latest_zero_is_rejected() -> None:
    with pytest.raises(ConfigError) as exc:
        validate_config(_policy("version_policy { latest { num_versions: 0 } }"), "m")
    _assert_one_line_error(exc, "num_versions")
