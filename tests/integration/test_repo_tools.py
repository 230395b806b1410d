"""`inferd repo init | validate | show`, run as the command a user types.

`validate` gets a repository with planted mistakes and must name each with its file and line (and exit 1); a good
repository passes (exit 0). `init` turns a bare .onnx file into a model folder that validates and serves, and `show
--format json` prints the same config the live server answers on /v2/models/NAME/config.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from models import SIMPLE_CONFIG, simple_model, write_model
from serving import INFERD, start_server

SYNTAX = """name: "syntax"
platform: "onnxruntime_onnx"
max_batch_sze: 8
"""

MANY = """name: "many_other"
max_batch_size: 0
dynamic_batching { }
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 0 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] label_filename: "labels.txt" },
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }
]
version_policy { latest { num_versions: 0 } }
instance_group [ { count: -1 } ]
parameters { key: "canary" value { string_value: "two:ten" } }
parameters { key: "request_timeout_ms" value { string_value: "soon" } }
"""

NO_FILE = """name: "nofile"
backend: "onnxruntime"
default_model_filename: "net.onnx"
"""

UNKNOWN_BACKEND = """name: "unknownbackend"
backend: "tensorrt"
"""

SHADOWED = """name: "shadowed"
parameters [
  { key: "shadow" value { string_value: "ghost" } },
  { key: "canary" value { string_value: "7:10" } }
]
"""

SPECIFIC = """name: "specific"
version_policy { specific { versions: [ 3 ] } }
"""

ENSEMBLE = """name: "ens"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 16 ] } ]
ensemble_scheduling { step [
  { model_name: "missing_model" input_map { key: "INPUT0" value: "IN" } output_map { key: "OUTPUT0" value: "A" } },
  { model_name: "simple"
    input_map { key: "INPUT0" value: "B" }
    input_map { key: "INPUTX" value: "IN" }
    output_map { key: "OUTPUT0" value: "OUT" }
  }
] }
"""

GOOD_ENSEMBLE = """name: "chain"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "B" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "SUM" data_type: TYPE_INT32 dims: [ 16 ] } ]
ensemble_scheduling { step [
  { model_name: "simple" input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
    output_map { key: "OUTPUT0" value: "SUM" } }
] }
"""

# (file in the repository, line, words of the problem): each planted mistake, where a user would fix it.
PLANTED = [
    ("syntax/config.pbtxt", 3, "max_batch_sze"),
    ("many/config.pbtxt", 1, "config name 'many_other' does not match the model folder 'many'"),
    ("many/config.pbtxt", 3, "dynamic batching is enabled but max_batch_size is 0"),
    ("many/config.pbtxt", 6, "input 'INPUT1' has invalid dimension 0"),
    ("many/config.pbtxt", 9, "label_filename 'labels.txt' is not a file"),
    ("many/config.pbtxt", 10, "output 'OUTPUT0' is declared more than once"),
    ("many/config.pbtxt", 12, "version_policy latest.num_versions must be >= 1"),
    ("many/config.pbtxt", 13, "instance_group count must be >= 0, got -1"),
    ("many/config.pbtxt", 14, "parameter 'canary' must be 'VERSION:PERCENT'"),
    ("many/config.pbtxt", 15, "parameter 'request_timeout_ms' must be a positive integer"),
    ("nofile/config.pbtxt", 3, "default_model_filename 'net.onnx' is not in version folder 1"),
    ("unknownbackend/config.pbtxt", 2, "unknown backend 'tensorrt'"),
    ("shadowed/config.pbtxt", 3, "names model 'ghost', which the repository does not hold"),
    ("shadowed/config.pbtxt", 4, "sends traffic to version 7, which has no folder"),
    ("specific/config.pbtxt", 2, "version_policy names version 3, which has no folder"),
    ("ens/config.pbtxt", 7, "the repository holds no model 'missing_model'"),
    ("ens/config.pbtxt", 8, "the model's input 'INPUT1' is not mapped"),
    ("ens/config.pbtxt", 9, "ensemble tensor 'B' is produced by no step"),
    ("ens/config.pbtxt", 10, "input_map names input 'INPUTX', which the model does not have"),
]


def inferd(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(INFERD), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("broken") / "models"
    model = simple_model()
    write_model(repo, "simple", model, SIMPLE_CONFIG)
    for name, config in (("syntax", SYNTAX), ("many", MANY), ("nofile", NO_FILE), ("unknownbackend", UNKNOWN_BACKEND),
                         ("shadowed", SHADOWED), ("specific", SPECIFIC)):
        write_model(repo, name, model, config)
    write_model(repo, "ens", None, ENSEMBLE, versions={1: None})
    (repo / "loose").mkdir()
    (repo / "loose" / "model.onnx").write_bytes(model)  # no version folder
    return repo


def test_validate_finds_every_planted_mistake_with_file_and_line(broken: Path) -> None:
    result = inferd("repo", "validate", broken)
    assert result.returncode == 1, result.stdout + result.stderr
    found = result.stdout.splitlines()
    missing = []
    for file, line, words in PLANTED:
        prefix = re.compile(rf"^{re.escape(str(broken / file))}:{line}(:\d+)?: ")
        if not any(prefix.match(row) and words in row for row in found):
            missing.append(f"{file}:{line}: {words}")
    assert not missing, "not reported:\n" + "\n".join(missing) + "\n--- output:\n" + result.stdout
    # The model file beside config.pbtxt has no line to point at: the folder is named, with the layout that works.
    assert any(row.startswith(f"{broken / 'loose'}: no version folder found") and "loose/1/model.onnx" in row
               for row in found), result.stdout
    # Nothing is said about the good model, and the count is on stderr.
    assert not [row for row in found if "/simple/" in row], result.stdout
    assert f"{len(found)} problems found" in result.stderr


def test_validate_passes_a_good_repository(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "simple", simple_model(), SIMPLE_CONFIG)
    write_model(repo, "auto", simple_model(), None)  # no config: auto-complete makes one
    write_model(repo, "chain", None, GOOD_ENSEMBLE, versions={1: None})
    result = inferd("repo", "validate", repo)
    assert (result.returncode, result.stdout.strip()) == (0, f"{repo}: no problems found"), result.stderr


def test_validate_runs_the_ensemble_plan_check(tmp_path: Path) -> None:
    """Once its steps name real tensors, an ensemble gets Triton's plan check: here a datatype that does not fit."""
    repo = tmp_path / "models"
    write_model(repo, "simple", simple_model(), SIMPLE_CONFIG)
    write_model(repo, "chain", None, GOOD_ENSEMBLE.replace('"SUM" data_type: TYPE_INT32', '"SUM" data_type: TYPE_FP32'),
                versions={1: None})
    result = inferd("repo", "validate", repo)
    assert result.returncode == 1
    assert f"{repo / 'chain' / 'config.pbtxt'}:6: " in result.stdout
    assert "ensemble tensor 'SUM' is FP32 there but INT32" in result.stdout


def test_init_show_and_serve(tmp_path: Path) -> None:
    source = tmp_path / "downloads" / "adder.onnx"
    source.parent.mkdir()
    source.write_bytes(simple_model())
    repo = tmp_path / "models"
    result = inferd("repo", "init", source, "--name", "adder", "--repository", repo)
    assert result.returncode == 0, result.stderr
    assert (repo / "adder" / "1" / "model.onnx").read_bytes() == source.read_bytes()
    written = (repo / "adder" / "config.pbtxt").read_text()
    assert 'name: "INPUT0"' in written and "TYPE_INT32" in written and 'backend: "onnxruntime"' in written
    assert inferd("repo", "validate", repo).returncode == 0
    again = inferd("repo", "init", source, "--name", "adder", "--repository", repo)
    assert again.returncode == 2 and "exists already" in again.stderr

    shown = inferd("repo", "show", repo, "adder", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    server = start_server(repo, tmp_path / "inferd.log")
    try:
        live = httpx.get(f"{server.base_url}/v2/models/adder/config", timeout=10).json()
    finally:
        server.stop()
    assert json.loads(shown.stdout) == live
    pbtxt = inferd("repo", "show", repo, "adder")
    assert pbtxt.returncode == 0 and pbtxt.stdout.strip() == written.strip()


def test_show_of_a_config_less_model_and_of_a_broken_one(broken: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "auto", simple_model(), None)
    shown = inferd("repo", "show", repo, "auto", "--format", "json")
    config = json.loads(shown.stdout)
    assert [t["name"] for t in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["max_batch_size"] == 4  # the batchable model gets the default-max-batch-size, as when served
    failed = inferd("repo", "show", broken, "many")
    assert failed.returncode == 1
    assert "config name 'many_other' does not match" in failed.stderr
    assert inferd("repo", "show", broken, "nobody").returncode == 1
