"""Which file of a version folder is a TorchServe model, and the I/O the classic ML backends auto-complete."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from inferd.backends import resolve_backend
from inferd.backends._tabular import autocomplete_io
from inferd.backends.torchserve import mar_path
from inferd.config import ConfigError, DataType, ModelConfig


def _folder(path: Path, *names: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        (path / name).write_bytes(b"")
    return path


def test_model_mar_first_then_the_one_archive(tmp_path: Path) -> None:
    assert mar_path(ModelConfig(), _folder(tmp_path / "a", "model.mar", "other.mar")).name == "model.mar"
    assert mar_path(ModelConfig(), _folder(tmp_path / "b", "resnet-18.mar", ".hidden.mar")).name == "resnet-18.mar"


def test_two_archives_name_both_and_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"2 \.mar files \(a\.mar, b\.mar\).*default_model_filename"):
        mar_path(ModelConfig(), _folder(tmp_path, "a.mar", "b.mar"))
    assert mar_path(ModelConfig(default_model_filename="b.mar"), tmp_path).name == "b.mar"
    with pytest.raises(ConfigError, match="not found"):
        mar_path(ModelConfig(default_model_filename="c.mar"), tmp_path)


def test_a_version_folder_with_any_archive_is_torchserve(tmp_path: Path) -> None:
    version = _folder(tmp_path / "m" / "1", "m.mar")
    assert resolve_backend(ModelConfig(), tmp_path / "m", [version]) == "torchserve"
    hidden = _folder(tmp_path / "h" / "1", ".m.mar")  # a hidden file is nobody's model
    with pytest.raises(ConfigError):
        resolve_backend(ModelConfig(), tmp_path / "h", [hidden])


def _io(config: ModelConfig) -> list[tuple[str, str, list[int], list[int] | None]]:
    return [(t.name, DataType.Name(t.data_type), list(t.dims), list(t.reshape.shape) if t.HasField("reshape") else None)
            for t in (*config.input, *config.output)]


def test_config_less_model_gets_the_given_input_type_and_a_1d_output() -> None:
    config = autocomplete_io(ModelConfig(), 4, "TYPE_INT64", [1], input_type="TYPE_FP64")
    assert config.max_batch_size == 8192 and config.HasField("dynamic_batching")
    assert _io(config) == [("input__0", "TYPE_FP64", [4], None), ("output__0", "TYPE_INT64", [1], [])]


def test_fil_style_config_keeps_its_types() -> None:
    config = text_format.Parse('max_batch_size: 64 input [{ name: "input__0" data_type: TYPE_FP32 dims: [4] }] '
                               'output [{ name: "output__0" data_type: TYPE_FP32 dims: [1] }]', ModelConfig())
    assert _io(autocomplete_io(config, 4, "TYPE_INT64", [1], input_type="TYPE_FP64")) == [
        ("input__0", "TYPE_FP32", [4], None), ("output__0", "TYPE_FP32", [1], [])]


def test_wide_and_unbatched_outputs_keep_their_shape() -> None:
    proba = autocomplete_io(ModelConfig(), 4, "TYPE_FP64", [3])
    assert _io(proba)[1] == ("output__0", "TYPE_FP64", [3], None)
    unbatched = text_format.Parse('input [{ name: "input__0" data_type: TYPE_FP32 dims: [4] }] '
                                  'output [{ name: "output__0" data_type: TYPE_INT64 dims: [1] }]', ModelConfig())
    assert _io(autocomplete_io(unbatched, 4, "TYPE_INT64", [1]))[1] == ("output__0", "TYPE_INT64", [1], None)
