"""Triton's `TritonPythonModel.auto_complete_config`, run in a short-lived process so the server never runs model code.

The server starts `python -m inferd.compat.triton_autocomplete` (the model's own environment's interpreter when it
has a requirements.txt, else the server's), sends the model file, the class to use and the current config in
Triton's JSON form on standard input, and reads one JSON line back. The child imports model.py, calls the static
method with a `pb_utils.ModelConfig` of that config and answers with the config it returns. Everything the model
writes (standard output included) goes to the child's standard error, which the server logs; the answer travels on
a duplicate of the original standard output, so a model's prints cannot corrupt it.

What the server takes back (`merge`), as Triton's python backend allows: `max_batch_size`, inputs and outputs
(those config.pbtxt gives stay, completed where their data type or dims were missing; the model's are added),
`dynamic_batching` and `model_transaction_policy`. A timeout, a crash of the child, or an exception raised by
`auto_complete_config` is a `ConfigError` with the reason: the model is UNAVAILABLE.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from ..config import ConfigError, ModelConfig, config_from_json, config_to_json

log = logging.getLogger("inferd.python")

METHOD = "auto_complete_config"
TIMEOUT_S = 60.0
TIMEOUT_VARIABLE = "INFERD_AUTO_COMPLETE_TIMEOUT"  # seconds; the server's environment
_STDERR_LINES = 5


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        return float(value) if value else TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_VARIABLE} must be a number of seconds, got '{value}'") from None


# ---- in the server ----


def auto_complete(config: ModelConfig, path: Path, class_name: str, interpreter: str | None = None) -> None:
    """Run the class's `auto_complete_config` in a child process and merge what it returns into `config`."""
    payload = json.dumps({"model_file": str(path), "class": class_name, "config": config_to_json(config)})
    timeout = timeout_s()
    command = [interpreter or sys.executable, "-m", __name__]
    try:
        done = subprocess.run(command, input=payload.encode(), capture_output=True, timeout=timeout, check=False,
                              cwd=path.parent)
    except subprocess.TimeoutExpired as exc:
        _log_stderr(config.name, exc.stderr)
        raise ConfigError(f"{METHOD} did not return within {timeout:g} s (set {TIMEOUT_VARIABLE} for more)") from None
    except OSError as exc:
        raise ConfigError(f"cannot start a process for {METHOD}: {_one_line(exc)}") from None
    stderr = _log_stderr(config.name, done.stderr)
    answer: dict[str, Any] | None = None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if lines:
        try:
            answer = json.loads(lines[-1])
        except json.JSONDecodeError:
            answer = None
    if not isinstance(answer, dict):
        last = f": {stderr[-1]}" if stderr else ""
        raise ConfigError(f"the {METHOD} process exited with code {done.returncode} before it answered{last}")
    if "error" in answer:
        raise ConfigError(str(answer["error"]))
    merge(config, answer.get("config"))


def _log_stderr(model: str, raw: bytes | None) -> list[str]:
    lines = [line for line in (raw or b"").decode(errors="replace").splitlines() if line.strip()]
    if lines:
        log.info("model '%s' %s:\n%s", model, METHOD, "\n".join(lines))
    return lines[-_STDERR_LINES:]


def _merge_tensors(old: Any, new: Any) -> list[Any]:
    """The config's tensors first (as completed), then those the model added; none of the config's is dropped."""
    returned = {tensor.name: tensor for tensor in new}
    merged = [returned.pop(tensor.name, tensor) for tensor in old]
    return merged + [tensor for tensor in new if tensor.name in returned]


def merge(config: ModelConfig, completed: Any) -> None:
    """Take what auto-complete may set from the returned config (Triton's JSON form) into `config`."""
    if not isinstance(completed, dict):
        raise ConfigError(f"{METHOD} returned no config")
    try:
        new = config_from_json(completed)
    except ConfigError as exc:
        raise ConfigError(f"{METHOD} returned a config that is not valid: {exc}") from None
    config.max_batch_size = new.max_batch_size
    for old_field, new_field in ((config.input, new.input), (config.output, new.output)):
        tensors = _merge_tensors(old_field, new_field)
        copies = [type(t)() for t in tensors]
        for copy, tensor in zip(copies, tensors, strict=True):
            copy.CopyFrom(tensor)
        del old_field[:]
        old_field.extend(copies)
    if new.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
        config.dynamic_batching.CopyFrom(new.dynamic_batching)
    if new.HasField("model_transaction_policy"):
        config.model_transaction_policy.CopyFrom(new.model_transaction_policy)


# ---- in the child ----


def _complete(payload: dict[str, Any]) -> dict[str, Any]:
    import triton_python_backend_utils as pb_utils

    from ..model_import import import_model

    path = Path(payload["model_file"])
    module = import_model(path)
    cls = getattr(module, payload["class"], None)
    method = getattr(cls, METHOD, None)
    if not callable(method):
        raise ConfigError(f"{path.name}: class {payload['class']} has no callable {METHOD}")
    given = pb_utils.ModelConfig(json.dumps(payload["config"]))
    try:
        returned = method(given)
    except Exception as exc:
        log.error("%s raised:\n%s", METHOD, "".join(traceback.format_exception(exc)).rstrip())
        if isinstance(exc, pb_utils.AutoCompleteError):  # a conflict with config.pbtxt, in Triton's words
            raise ConfigError(f"{METHOD}: {_one_line(exc)}") from None
        raise ConfigError(f"{METHOD} raised {type(exc).__name__}: {_one_line(exc)}") from None
    if isinstance(returned, pb_utils.ModelConfig):
        return returned.as_dict()
    if isinstance(returned, dict):
        return returned
    raise ConfigError(f"{METHOD} must return the pb_utils.ModelConfig it was given, got {type(returned).__name__}")


def main() -> None:
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # what the model prints goes to standard error; the answer has its own descriptor
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        answer: dict[str, Any] = {"config": _complete(json.loads(sys.stdin.buffer.read()))}
    except ConfigError as exc:
        answer = {"error": str(exc)}
    except Exception as exc:
        answer = {"error": f"{METHOD} failed: {type(exc).__name__}: {_one_line(exc)}"}
    try:
        text = json.dumps(answer)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"error": f"{METHOD} returned a config that is not JSON: {_one_line(exc)}"})
    with os.fdopen(answer_fd, "w") as out:
        out.write(text + "\n")


if __name__ == "__main__":
    main()
