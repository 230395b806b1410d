"""A Python model's source: read without running it (in the server), its class chosen once imported (in the child).

The server process never runs a model's code: auto-complete parses `model.py` with `ast` (a syntax error makes the
model UNAVAILABLE with the line and message) and reads the I/O a class declares as plain literals. The instance
process imports the file (`inferd.model_import`) and serves the class `served_class` picks.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import json_format

from ..config import ConfigError, ModelConfig, string_parameter
from ..model_import import syntax_error_reason
from ..types import V2_TO_CONFIG

MODEL_FILENAME = "model.py"
TRITON_CLASS = "TritonPythonModel"
CLASS_PARAMETER = "class"  # parameters { key: "class" value { string_value: "MyModel" } }


def model_file(config: ModelConfig, files: Path) -> Path:
    path = files / (config.default_model_filename or MODEL_FILENAME)
    if not path.is_file():
        raise ConfigError(f"model file {path} not found")
    return path


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ---- in the server: the source, parsed ----


def parse(path: Path) -> ast.Module:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"failed to read {path}: {_one_line(exc)}") from None
    try:
        return ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(syntax_error_reason(path, exc)) from None


def defines(node: ast.ClassDef, name: str) -> bool:
    return any(isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == name for item in node.body)


def declared_class(tree: ast.Module, config: ModelConfig) -> ast.ClassDef | None:
    """The class the instance process will serve, as far as the source alone tells (None: not decidable here)."""
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    wanted = string_parameter(config, CLASS_PARAMETER).strip()
    if wanted:
        return next((c for c in classes if c.name == wanted), None)
    triton = next((c for c in classes if c.name == TRITON_CLASS), None)
    if triton is not None:
        return triton
    predicting = [c for c in classes if defines(c, "predict")]
    return predicting[0] if len(predicting) == 1 else None


def _class_literal(node: ast.ClassDef, name: str) -> Any:
    for item in node.body:
        targets: list[ast.expr] = []
        if isinstance(item, ast.Assign):
            targets, value = item.targets, item.value
        elif isinstance(item, ast.AnnAssign) and item.value is not None:
            targets, value = [item.target], item.value
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                return ast.literal_eval(value)
            except ValueError:
                raise ConfigError(f"class {node.name}: '{name}' must be a plain literal (it is read without "
                                  "running model.py)") from None
    return None


def _tensor_entry(owner: str, kind: str, spec: Any) -> dict[str, Any]:
    """One declared tensor in the config's JSON form; V2 names (`datatype`, `shape`) are accepted too."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"class {owner}: each of '{kind}' must be a dict with 'name', 'data_type' and 'dims'")
    entry = dict(spec)
    if "datatype" in entry:
        datatype = str(entry.pop("datatype"))
        if datatype not in V2_TO_CONFIG:
            raise ConfigError(f"class {owner}: {kind} '{entry['name']}' has unknown datatype '{datatype}'")
        entry["data_type"] = V2_TO_CONFIG[datatype]
    if "shape" in entry:
        entry["dims"] = entry.pop("shape")
    return entry


def complete_from_class(config: ModelConfig, node: ast.ClassDef) -> bool:
    """Fill the config's I/O (and `max_batch_size`) from the class's `inputs` / `outputs`; False if it has none."""
    inputs, outputs = _class_literal(node, "inputs"), _class_literal(node, "outputs")
    if inputs is None or outputs is None:
        return False
    for kind, specs, field in (("inputs", inputs, config.input), ("outputs", outputs, config.output)):
        if not isinstance(specs, list | tuple):
            raise ConfigError(f"class {node.name}: '{kind}' must be a list of dicts")
        for spec in specs:
            try:
                json_format.ParseDict(_tensor_entry(node.name, kind, spec), field.add())
            except json_format.ParseError as exc:
                raise ConfigError(f"class {node.name}: bad entry in '{kind}': {_one_line(exc)}") from None
    max_batch_size = _class_literal(node, "max_batch_size")
    if max_batch_size is not None and config.max_batch_size == 0:
        if not isinstance(max_batch_size, int) or max_batch_size < 0:
            raise ConfigError(f"class {node.name}: 'max_batch_size' must be an integer >= 0")
        config.max_batch_size = max_batch_size
        if max_batch_size > 0 and not config.HasField("dynamic_batching") and not config.HasField(
                "sequence_batching"):
            config.dynamic_batching.SetInParent()
    return True


# ---- in the instance process: the class to serve ----


def served_class(module: ModuleType, config: ModelConfig, path: Path) -> type:
    """The class to serve: the config parameter `class`, else `TritonPythonModel`, else the one class with `predict`."""
    wanted = string_parameter(config, CLASS_PARAMETER).strip()
    if wanted:
        found = getattr(module, wanted, None)
        if not isinstance(found, type):
            raise ConfigError(f"{path.name} has no class '{wanted}' (named by the config parameter "
                              f"'{CLASS_PARAMETER}')")
        return found
    triton = getattr(module, TRITON_CLASS, None)
    if isinstance(triton, type):
        return triton
    own = [value for value in vars(module).values() if isinstance(value, type)
           and value.__module__ == module.__name__ and callable(getattr(value, "predict", None))]
    if not own:
        raise ConfigError(f"{path.name} defines neither {TRITON_CLASS} nor a class with a 'predict' method")
    if len(own) > 1:
        names = ", ".join(sorted(c.__name__ for c in own))
        raise ConfigError(f"{path.name} defines several classes with 'predict' ({names}): name one with "
                          f"parameters {{ key: \"{CLASS_PARAMETER}\" value {{ string_value: \"...\" }} }}")
    return own[0]
