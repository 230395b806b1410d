"""`inferd repo validate`: every problem of a model repository, each with its file and line, without serving.

Per model folder: its `config.pbtxt` parses (protobuf's own line:column), the effective config (auto-complete from
the model file, as `inferd serve` does) passes the server's checks (config.config_problems), the selected version
folders hold the model file, label files exist, the canary / shadow / limit parameters are well formed and name
versions and models that exist. Ensembles are checked statically against their composing models' configs (the
models exist in the repository, `input_map` / `output_map` name their tensors, every tensor has a producer); the
rest of Triton's plan check (shapes, datatypes, cycles) runs when those pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from google.protobuf import text_format

from ..backends import BACKENDS, load_plugins
from ..config import CONFIG_FILENAME, ConfigError, ModelConfig, config_problems, v2_datatype
from ..graph.ensemble import ENSEMBLE_PLATFORM, is_ensemble, plan_ensemble
from ..graph.traffic import CANARY, SHADOW, rule_of
from ..manager import ModelManager
from ..model import TensorSpec
from ..model_limits import MEMORY_LIMIT, REQUEST_TIMEOUT, memory_limit_bytes, request_timeout_ms
from ..paths import UnsafePathError, safe_join
from ..repository import ModelRepository, select_versions, version_dirs
from ..types import InferError, describe_error
from .locate import field_lines, line_of

__all__ = ["Problem", "validate_repository"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem: the file (or folder) it is in, its line and column when it has one, what is wrong."""

    path: Path
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


@dataclass(slots=True)
class _Model:
    """What validating one model found: its config as written (None: absent or unparsable), where its fields are
    written, its effective config (None: it cannot be completed)."""

    folder: Path
    written: ModelConfig | None = None
    lines: dict[str, int] | None = None
    effective: ModelConfig | None = None
    parsed: bool = True


class _Validator:
    def __init__(self, repository: Path) -> None:
        self.root = repository
        self.repository = ModelRepository([repository])
        self.manager = ModelManager(self.repository)
        self.models: dict[str, _Model] = {}
        self.problems: list[Problem] = []

    def add(self, model: _Model, message: str, field: str | None = None, path: Path | None = None) -> None:
        """A problem of `model`: in its config.pbtxt at `field`'s line when it has one written, else in `path`
        (default: the config file when there is one, else the model folder)."""
        config_file = model.folder / CONFIG_FILENAME
        line = line_of(model.lines, field) if model.lines is not None and field is not None else None
        if path is None:
            path = config_file if config_file.is_file() else model.folder
        self.problems.append(Problem(path, message, line if path == config_file else None))

    def run(self) -> list[Problem]:
        folders, duplicates = self.repository.scan()
        for name, reason in duplicates.items():
            self.problems.append(Problem(self.root / name, reason))
        for name, folder in folders.items():
            self.models[name] = self._read(name, folder)
        for name, model in self.models.items():
            if model.written is not None and is_ensemble(model.written):
                continue
            if model.parsed:
                self._check_model(name, model)
        for name, model in self.models.items():
            if model.written is not None and is_ensemble(model.written):
                self._check_ensemble(name, model)
        return self.problems

    def _read(self, name: str, folder: Path) -> _Model:
        model = _Model(folder)
        path = folder / CONFIG_FILENAME
        if not path.is_file():
            return model
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.problems.append(Problem(path, f"cannot read: {exc}"))
            model.parsed = False
            return model
        config = ModelConfig()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            message = str(exc).split(" : ", 1)[-1] if exc.GetLine() is not None else str(exc)
            self.problems.append(Problem(path, " ".join(message.split()), exc.GetLine(), exc.GetColumn()))
            model.parsed = False
            return model
        model.written, model.lines = config, field_lines(text)
        return model

    # ---- a model of a backend ----

    def _check_model(self, name: str, model: _Model) -> None:
        written = model.written
        if written is not None and not (self._backend_known(model, written) and self._named_file(model, written)):
            return
        try:
            config, backend, versions, _ = self.manager.complete_config(
                name, model.folder, _copy(written), check=False)
        except (ConfigError, InferError) as exc:
            self.add(model, exc.message if isinstance(exc, InferError) else str(exc))
            return
        except Exception as exc:  # an auto-complete that cannot read the model file
            self.add(model, f"auto-complete failed: {describe_error(exc)}", path=_newest_version(model.folder))
            return
        model.effective = config
        for problem in config_problems(config, name):
            self.add(model, problem.message, problem.field)
        self._check_versions(model, config, backend, versions)
        self._check_labels(model, config)
        self._check_parameters(model, config)

    def _backend_known(self, model: _Model, config: ModelConfig) -> bool:
        load_plugins()
        if config.backend and config.backend not in BACKENDS:
            self.add(model, f"unknown backend '{config.backend}' (known: {', '.join(sorted(BACKENDS))})", "backend")
            return False
        if not config.backend and config.platform and not any(
                config.platform in spec.platforms for spec in BACKENDS.values()):
            self.add(model, f"unknown platform '{config.platform}'", "platform")
            return False
        return True

    def _named_file(self, model: _Model, config: ModelConfig) -> bool:
        """A `default_model_filename` that a selected version folder lacks (auto-complete could not open it)."""
        if not config.default_model_filename:
            return True
        available = version_dirs(model.folder)
        missing = [v for v in select_versions(config, list(available))
                   if not _present(available[v], config.default_model_filename)]
        for version in missing:
            self.add(model, f"default_model_filename '{config.default_model_filename}' is not in version folder "
                     f"{version} (it holds: {', '.join(sorted(p.name for p in available[version].iterdir()))})",
                     "default_model_filename")
        return not missing

    def _check_versions(self, model: _Model, config: ModelConfig, backend: str, versions: dict[int, Path]) -> None:
        available = version_dirs(model.folder)
        policy = config.version_policy
        if policy.WhichOneof("policy_choice") == "specific":
            for version in policy.specific.versions:
                if version not in available:
                    self.add(model, f"version_policy names version {version}, which has no folder "
                             f"(found: {', '.join(map(str, sorted(available))) or 'none'})", "version_policy")
        elif available and not versions:
            self.add(model, "the version policy selects no version folder", "version_policy")
        spec = BACKENDS[backend]
        names = [config.default_model_filename] if config.default_model_filename else list(spec.filenames)
        if not names:
            return
        for version, folder in sorted(versions.items()):
            if not any(_present(folder, filename) for filename in names):
                field = "default_model_filename" if config.default_model_filename else None
                self.add(model, f"version {version} has no model file: expected {' or '.join(names)} in {folder}",
                         field, path=None if field else folder)

    def _check_labels(self, model: _Model, config: ModelConfig) -> None:
        for i, output in enumerate(config.output):
            if not output.label_filename:
                continue
            try:
                found = safe_join(model.folder, output.label_filename).is_file()
            except UnsafePathError:
                found = False
            if not found:
                self.add(model, f"output '{output.name}': label_filename '{output.label_filename}' is not a file "
                         "of the model folder", f"output[{i}].label_filename")

    def _check_parameters(self, model: _Model, config: ModelConfig) -> None:
        for key, check in ((REQUEST_TIMEOUT, request_timeout_ms), (MEMORY_LIMIT, memory_limit_bytes)):
            try:
                check(config)
            except ConfigError as exc:
                self.add(model, str(exc), f"parameters[{key}]")
        try:
            rule = rule_of(config)
        except ConfigError as exc:
            self.add(model, str(exc), f"parameters[{CANARY if CANARY in str(exc) else SHADOW}]")
            return
        if rule is None:
            return
        available = version_dirs(model.folder)
        for variant in rule.variants:
            if variant.version and int(variant.version) not in available:
                self.add(model, f"parameter '{CANARY}' sends traffic to version {variant.version}, which has no "
                         "folder", f"parameters[{CANARY}]")
        for shadow, _ in rule.shadows:
            if shadow not in self.models:
                self.add(model, f"parameter '{SHADOW}' names model '{shadow}', which the repository does not hold",
                         f"parameters[{SHADOW}]")

    # ---- an ensemble ----

    def _check_ensemble(self, name: str, model: _Model) -> None:
        config = cast(ModelConfig, model.written)
        if not config.name:
            config.name = name
        if not config.platform:
            config.platform = ENSEMBLE_PLATFORM
        count = len(self.problems)
        for problem in config_problems(config, name):
            self.add(model, problem.message, problem.field)
        produced = {t.name for t in config.input}
        for index, step in enumerate(config.ensemble_scheduling.step):
            produced.update(self._check_step(name, model, index, step))
        for index, step in enumerate(config.ensemble_scheduling.step):
            for key, tensor in step.input_map.items():
                if tensor not in produced:
                    self.add(model, f"step {index} (model '{step.model_name}') input '{key}': ensemble tensor "
                             f"'{tensor}' is produced by no step and is not an ensemble input",
                             f"ensemble_scheduling.step[{index}].input_map[{key}]")
        for i, output in enumerate(config.output):
            if output.name not in produced:
                self.add(model, f"ensemble output '{output.name}' is produced by no step", f"output[{i}]")
        if not config.ensemble_scheduling.step:
            self.add(model, f"ensemble '{name}' has no ensemble_scheduling steps", "ensemble_scheduling")
        if len(self.problems) == count:  # the rest of the plan check: datatypes, shapes, batching, cycles
            try:
                plan_ensemble(name, config, self._composing)
            except ConfigError as exc:
                self.add(model, str(exc), "ensemble_scheduling")

    def _check_step(self, name: str, model: _Model, index: int, step: Any) -> set[str]:
        """Problems of one step against its model's effective config; the ensemble tensors it produces."""
        field = f"ensemble_scheduling.step[{index}]"
        where = f"step {index} (model '{step.model_name}')"
        composing = self.models.get(step.model_name)
        if step.model_name == name:
            self.add(model, f"{where}: an ensemble cannot contain itself", f"{field}.model_name")
            return set()
        if composing is None:
            self.add(model, f"{where}: the repository holds no model '{step.model_name}'", f"{field}.model_name")
            return set(step.output_map.values())
        inner = composing.effective or composing.written
        if inner is None or not composing.parsed:
            return set(step.output_map.values())  # its own problems are listed where it is
        inputs = {t.name: t for t in inner.input}
        outputs = {t.name for t in inner.output}
        for key in step.input_map:
            if key not in inputs:
                self.add(model, f"{where}: input_map names input '{key}', which the model does not have (its "
                         f"inputs: {', '.join(inputs)})", f"{field}.input_map[{key}]")
        for key in step.output_map:
            if key not in outputs:
                self.add(model, f"{where}: output_map names output '{key}', which the model does not have (its "
                         f"outputs: {', '.join(sorted(outputs))})", f"{field}.output_map[{key}]")
        for input_name, tensor in inputs.items():
            if input_name not in step.input_map and not tensor.optional:
                self.add(model, f"{where}: the model's input '{input_name}' is not mapped (input_map)", field)
        return {tensor for key, tensor in step.output_map.items() if key in outputs}

    def _composing(self, name: str, version: str) -> Any:
        """A composing model as `plan_ensemble` reads one (its batch size and tensors), from its config."""
        found = self.models.get(name)
        config = found.effective or found.written if found is not None else None
        if config is None:
            raise InferError.not_found(f"model '{name}' has no usable config")
        return _Shape(config)


class _Shape:
    """The part of a served model an ensemble's plan check reads."""

    def __init__(self, config: ModelConfig) -> None:
        self.max_batch_size = int(config.max_batch_size)
        self.inputs = {t.name: _spec(t) for t in config.input}
        self.outputs = {t.name: _spec(t) for t in config.output}


def _spec(tensor: Any) -> TensorSpec:
    return TensorSpec(tensor.name, v2_datatype(tensor.data_type), tuple(tensor.dims),
                      tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None,
                      bool(getattr(tensor, "optional", False)))


def _copy(config: ModelConfig | None) -> ModelConfig | None:
    if config is None:
        return None
    copied = ModelConfig()
    copied.CopyFrom(config)
    return copied


def _present(folder: Path, filename: str) -> bool:
    if "*" in filename:
        return any(p.is_file() for p in folder.glob(filename))
    return (folder / filename).exists()


def _newest_version(folder: Path) -> Path:
    versions = version_dirs(folder)
    return versions[max(versions)] if versions else folder


def validate_repository(repository: Path) -> list[Problem]:
    """Every problem of the repository, by file and line."""
    if not repository.is_dir():
        return [Problem(repository, "the model repository is not a folder")]
    problems = _Validator(repository).run()
    return sorted(problems, key=lambda p: (str(p.path), p.line or 0, p.column or 0))

