"""Model configuration: Triton's `ModelConfig` protobuf, read from `config.pbtxt`, validated and completed.

The protobuf message is the one schema: no parallel dataclass. Anything wrong with a configuration raises
`ConfigError` with a one-line reason, which the model manager turns into state UNAVAILABLE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor

from .protos import model_config_pb2
from .types import CONFIG_TO_V2, V2_TO_NUMPY

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig, ModelInstanceGroup
else:  # Triton's messages, from tritonclient's generated module without the rest of its client (see protos.py)
    DataType, ModelConfig, ModelInstanceGroup = (model_config_pb2.DataType, model_config_pb2.ModelConfig,
                                                 model_config_pb2.ModelInstanceGroup)

CONFIG_FILENAME = "config.pbtxt"

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_SIGNATURE",
    "ConfigError",
    "ConfigProblem",
    "DataType",
    "ModelConfig",
    "ModelInstanceGroup",
    "config_from_json",
    "config_problems",
    "config_to_json",
    "int_parameter",
    "parse_config",
    "read_config",
    "signature_name",
    "string_parameter",
    "v2_datatype",
    "validate_config",
]


class ConfigError(Exception):
    """A model configuration that cannot be used; the message is one line."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_config(text: str) -> ModelConfig:
    """Parse protobuf text format; unknown fields and bad enum names are errors."""
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"failed to parse {CONFIG_FILENAME}: {_one_line(str(exc))}") from None
    return config


def read_config(model_dir: Path) -> ModelConfig | None:
    """The model's `config.pbtxt`, or None when the folder has none (auto-complete then builds one)."""
    path = model_dir / CONFIG_FILENAME
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"failed to read {path}: {_one_line(str(exc))}") from None
    return parse_config(text)


def config_from_json(data: str | bytes | dict[str, Any]) -> ModelConfig:
    """A config given as JSON (the repository load API's `config` parameter)."""
    config = ModelConfig()
    try:
        if isinstance(data, dict):
            json_format.ParseDict(data, config)
        else:
            json_format.Parse(data, config)
    except json_format.ParseError as exc:
        raise ConfigError(f"failed to parse model config JSON: {_one_line(str(exc))}") from None
    return config


_INT64_TYPES = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)


def _int64_as_numbers(value: Any, descriptor: Any) -> Any:
    """Proto3 JSON writes 64-bit integers as strings; Triton's HTTP API writes numbers (dims: [16])."""
    if not isinstance(value, dict):
        return value
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for k in item:
                        item[k] = _int64_as_numbers(item[k], value_field.message_type)
            elif isinstance(item, list):
                value[key] = [_int64_as_numbers(v, field.message_type) for v in item]
            else:
                value[key] = _int64_as_numbers(item, field.message_type)
        elif field.type in _INT64_TYPES:
            value[key] = [int(v) for v in item] if isinstance(item, list) else int(item)
    return value


def config_to_json(config: ModelConfig) -> dict[str, Any]:
    """The config as Triton's HTTP `/config` endpoint returns it (field names as in the proto)."""
    data = json_format.MessageToDict(config, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    return _int64_as_numbers(data, config.DESCRIPTOR)


def v2_datatype(data_type: int) -> str:
    """V2 datatype name of a `DataType` enum value."""
    return CONFIG_TO_V2.get(DataType.Name(data_type), "INVALID")


def string_parameter(config: ModelConfig, key: str, default: str = "") -> str:
    """A `parameters { key: ... value { string_value: ... } }` entry of the config."""
    if key in config.parameters:
        return str(config.parameters[key].string_value)
    return default


DEFAULT_SIGNATURE = "serving_default"


def signature_name(config: ModelConfig) -> str:
    """The signature a model serves (TensorFlow, and V1's metadata): `TF_SIGNATURE_DEF` (Triton's TF backend),
    else `signature_name` (the name TF-Serving's clients know), else `serving_default`."""
    return (string_parameter(config, "TF_SIGNATURE_DEF") or string_parameter(config, "signature_name")
            or DEFAULT_SIGNATURE)


def int_parameter(config: ModelConfig, key: str) -> int | None:
    """An integer `parameters` entry of the config (None when absent); a non-integer is a config error."""
    value = string_parameter(config, key)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"parameter '{key}' must be an integer, got '{value}'") from None


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config: `field` is where, as a path into the message (`input[1].dims`,
    `parameters[canary]`; "" for the config as a whole), so a tool can point at its line in config.pbtxt."""

    field: str
    message: str


def _dims_problems(field: str, where: str, dims: Any, *, allow_empty: bool) -> list[ConfigProblem]:
    if not dims and not allow_empty:
        return [ConfigProblem(field, f"{where} must specify 'dims'")]
    return [ConfigProblem(field, f"{where} has invalid dimension {d}: dims must be positive or -1")
            for d in dims if d == 0 or d < -1][:1]


def _tensor_problems(field: str, where: str, tensor: Any) -> list[ConfigProblem]:
    if not tensor.name:
        return [ConfigProblem(field, f"{where} has no name")]
    dtype = v2_datatype(tensor.data_type)
    if tensor.data_type == DataType.TYPE_INVALID:
        return [ConfigProblem(f"{field}.data_type", f"{where} '{tensor.name}' must specify a valid 'data_type'")]
    if dtype not in V2_TO_NUMPY:
        return [ConfigProblem(f"{field}.data_type", f"{where} '{tensor.name}' has data_type "
                              f"{DataType.Name(tensor.data_type)}, which this server does not support")]
    problems = _dims_problems(f"{field}.dims", f"{where} '{tensor.name}'", tensor.dims,
                              allow_empty=tensor.HasField("reshape"))
    if tensor.HasField("reshape"):
        problems += _dims_problems(f"{field}.reshape", f"{where} '{tensor.name}' reshape", tensor.reshape.shape,
                                   allow_empty=True)
        if not problems and -1 not in tensor.dims and -1 not in tensor.reshape.shape:
            a, b = 1, 1
            for d in tensor.dims:
                a *= d
            for d in tensor.reshape.shape:
                b *= d
            if a != b:
                problems.append(ConfigProblem(f"{field}.reshape", f"{where} '{tensor.name}' reshape "
                                              f"{list(tensor.reshape.shape)} does not hold the same number of "
                                              f"elements as dims {list(tensor.dims)}"))
    return problems


def config_problems(config: ModelConfig, model_name: str) -> list[ConfigProblem]:
    """Everything `validate_config` rejects, each problem with the field it is about, in the order checked."""
    problems: list[ConfigProblem] = []
    if config.name and config.name != model_name:
        problems.append(ConfigProblem("name", f"config name '{config.name}' does not match the model folder "
                                      f"'{model_name}'"))
    if config.max_batch_size < 0:
        problems.append(ConfigProblem("max_batch_size", f"max_batch_size must be >= 0, got {config.max_batch_size}"))
    if not config.input:
        problems.append(ConfigProblem("", "model configuration must specify at least one input"))
    if not config.output:
        problems.append(ConfigProblem("", "model configuration must specify at least one output"))
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for i, tensor in enumerate(tensors):
            problems += _tensor_problems(f"{kind}[{i}]", kind, tensor)
            if tensor.name and tensor.name in seen:
                problems.append(ConfigProblem(f"{kind}[{i}].name", f"{kind} '{tensor.name}' is declared more "
                                              "than once"))
            seen.add(tensor.name)
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 1:
        problems.append(ConfigProblem("version_policy.latest.num_versions",
                                      "version_policy latest.num_versions must be >= 1"))
    for i, group in enumerate(config.instance_group):
        if group.count < 0:
            problems.append(ConfigProblem(f"instance_group[{i}].count",
                                          f"instance_group count must be >= 0, got {group.count}"))
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        problems.append(ConfigProblem("dynamic_batching", "dynamic batching is enabled but max_batch_size is 0: "
                                      "the model does not support batching"))
    return problems


def validate_config(config: ModelConfig, model_name: str) -> None:
    """Reject what cannot be served, with one line that says why (the first of `config_problems`)."""
    problems = config_problems(config, model_name)
    if problems:
        raise ConfigError(problems[0].message)
