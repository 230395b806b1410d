"""Running a TorchServe handler in an inferd instance process, with TorchServe's contract.

* `install_ts_package()` makes inferd's `ts` shim (`inferd.compat.torchserve`) importable as `ts` in this process only.
* `load_entry_point()` finds the handler as TorchServe's model loader does: `handler` in the manifest is a file
  of the archive (`handler.py`, optionally `handler.py:function`) or the name of a built-in handler
  (`image_classifier`, `vision_handler`, `base_handler`). A module with a `handle(data, context)` function (or the
  named function) is called with `data=None` once to initialize; otherwise the module must define exactly one
  class, which is instantiated and has `initialize(context)` and `handle(data, context)`.
* `decode_request()` turns one request's body and headers into the dict TorchServe gives a handler:
  `{"body": bytes}` for a raw body, the parsed JSON for `application/json`, text for `text/*`, and one entry per
  field (files as bytes) for `multipart/form-data`.
* `encode_response()` turns one element of the handler's answer into bytes as TorchServe does: str as UTF-8,
  bytes as they are, anything else as JSON (indented by 2, TorchServe's layout).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import ConfigError
from ..multipart import form_parts
from ..types import ErrorKind, InferError

log = logging.getLogger("inferd.torchserve")

__all__ = ["BUILTIN_HANDLERS", "HandlerService", "decode_request", "encode_response", "install_ts_package"]

BUILTIN_HANDLERS = ("image_classifier", "vision_handler", "base_handler")
# TorchServe's built-in handlers inferd does not provide (they need torchtext, torchvision's detection models...).
MISSING_BUILTINS = ("text_classifier", "object_detector", "image_segmenter", "text_handler", "dali_image_classifier")
PREDICTION_FAILED = "Prediction failed"

_SHIM = Path(__file__).with_name("torchserve")  # the `ts` package

EntryPoint = Callable[[Any, Any], Any]


def install_ts_package() -> None:
    """Load inferd's shim as the top-level package `ts` in this process (an instance process runs one model).

    `ts.__path__` is the shim's folder, so `import ts.torch_handler.base_handler` and the shim's relative imports
    resolve there. A real TorchServe install is not touched on disk; in this process the shim shadows it.
    """
    current = sys.modules.get("ts")
    if current is not None and getattr(current, "__file__", None) == str(_SHIM / "__init__.py"):
        return
    for name in [n for n in sys.modules if n == "ts" or n.startswith("ts.")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location("ts", _SHIM / "__init__.py", submodule_search_locations=[str(_SHIM)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ts"] = module
    spec.loader.exec_module(module)


def _handler_module(handler: str, model_dir: Path) -> tuple[ModuleType, str | None]:
    name, _, function = handler.partition(":")
    name = Path(name).name
    module_name = name[:-3] if name.endswith(".py") else name
    if (model_dir / f"{module_name}.py").is_file():
        if str(model_dir) not in sys.path:
            sys.path.insert(0, str(model_dir))  # TorchServe's rule: the archive's files import each other
        return importlib.import_module(module_name), function or None
    if module_name in BUILTIN_HANDLERS:
        return importlib.import_module(f"ts.torch_handler.{module_name}"), function or None
    if module_name in MISSING_BUILTINS:
        raise ConfigError(f"TorchServe's built-in handler '{module_name}' is not provided by inferd (provided: "
                          f"{', '.join(BUILTIN_HANDLERS)}); put its code in the archive as a custom handler file")
    raise ConfigError(f"the archive's handler '{handler}' is neither a file of the archive nor a built-in handler "
                      f"({', '.join(BUILTIN_HANDLERS)})")


def load_entry_point(handler: str, model_dir: Path) -> tuple[EntryPoint, Callable[[Any], Any]]:
    """The handler's `handle` and its initialize step (see the module docstring)."""
    install_ts_package()
    from ts.utils.util import list_classes_from_module

    module, function = _handler_module(handler, model_dir)
    function = function or "handle"
    if hasattr(module, function):
        entry: EntryPoint = getattr(module, function)
        return entry, lambda context: entry(None, context)
    classes = list_classes_from_module(module)
    if len(classes) != 1:
        raise ConfigError(f"the handler module '{module.__name__}' must define one class or a function "
                          f"'{function}' (TorchServe's rule), found classes {[c.__name__ for c in classes]}")
    service = classes[0]()
    if not hasattr(service, "handle"):
        raise ConfigError(f"the handler class {classes[0].__name__} has no handle(data, context) method")
    initialize = getattr(service, "initialize", None) or (lambda context: None)
    return service.handle, initialize


def _decode_value(value: bytes, content_type: str) -> Any:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        try:
            return json.loads(value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return value  # not JSON after all: the handler gets the bytes
    if kind.startswith("text/"):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _form_fields(body: bytes, content_type: str) -> dict[str, Any] | None:
    """The fields of a multipart/form-data body (files as bytes, plain fields as text); None if it is not one."""
    parts = form_parts(body, content_type)
    if parts is None:
        return None
    return {part.name: _decode_value(part.content, part.content_type) for part in parts}


def decode_request(body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """One request as the dict a TorchServe handler receives in its `data` list."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if content_type.lower().startswith("multipart/form-data"):
        fields = _form_fields(body, content_type)
        if fields is not None:
            return fields
    return {"body": _decode_value(body, content_type)}


def encode_response(value: Any) -> tuple[bytes, str]:
    """One request's answer as bytes, with the content type it has unless the handler set one."""
    if isinstance(value, str):
        return value.encode("utf-8"), "text/plain"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), "application/octet-stream"
    try:
        return json.dumps(value, indent=2).encode("utf-8"), "application/json"
    except (TypeError, ValueError):
        return json.dumps(str(value), indent=2).encode("utf-8"), "application/json"


def _kind_of(code: int) -> ErrorKind:
    """The error kind for a status code a handler chose (PredictionException): its HTTP status where one matches."""
    for kind in ErrorKind:
        if kind.http_status == code and kind is not ErrorKind.UNSUPPORTED:
            return kind
    return ErrorKind.INVALID_ARGUMENT if 400 <= code < 500 else ErrorKind.INTERNAL


class HandlerService:
    """One initialized handler and its Context; `predict` runs one batch."""

    def __init__(self, manifest: dict[str, Any], model_dir: Path, model_name: str, batch_size: int,
                 gpu_id: int | None, model_yaml_config: dict[str, Any] | None = None) -> None:
        install_ts_package()
        from ts.context import Context

        handler = str(manifest.get("model", {}).get("handler", ""))
        if not handler:
            raise ConfigError("the archive's MANIFEST.json names no handler (model.handler)")
        self.entry_point, initialize = load_entry_point(handler, model_dir)
        self.context = Context(model_name, str(model_dir), manifest, batch_size, gpu_id, "inferd",
                               model_yaml_config=model_yaml_config)
        initialize(self.context)

    def predict(self, bodies: list[bytes], headers: list[dict[str, str]]) -> list[tuple[bytes, dict[str, Any]]]:
        """Each request's answer and its status / content type / headers; raises InferError for the batch."""
        from ts.context import RequestProcessor
        from ts.utils.util import PredictionException

        context = self.context
        context.request_processor = [RequestProcessor(h) for h in headers]
        context.request_ids = {i: uuid.uuid4().hex for i in range(len(bodies))}
        batch = [decode_request(b, h) for b, h in zip(bodies, headers, strict=True)]
        try:
            answers = self.entry_point(batch, context)
        except PredictionException as exc:
            raise InferError(_kind_of(exc.error_code), exc.message) from None
        except MemoryError:
            raise InferError(ErrorKind.RESOURCE_EXHAUSTED, "Out of resources") from None
        except Exception as exc:  # TorchServe's answer to any handler failure; the traceback goes to the log
            log.exception("model '%s': the handler raised", context.model_name)
            detail = " ".join(str(exc).split())
            raise InferError.unavailable(f"{PREDICTION_FAILED}: {type(exc).__name__}: {detail}") from None
        if not isinstance(answers, list):
            log.warning("model '%s': the handler returned %s, not a list", context.model_name, type(answers).__name__)
            raise InferError.unavailable("Invalid model predict output")
        if len(answers) != len(batch):
            log.warning("model '%s': the handler answered %d of %d requests", context.model_name, len(answers),
                        len(batch))
            raise InferError.unavailable("number of batch response mismatched")
        results = []
        for idx, answer in enumerate(answers):
            payload, default_type = encode_response(answer)
            code, phrase = context.get_response_status(idx)
            response_headers = dict(context.get_response_headers(idx))
            content_type = response_headers.pop("content-type", None) or default_type
            results.append((payload, {"status": code, "phrase": phrase or "", "content_type": content_type,
                                      "headers": response_headers}))
        return results
