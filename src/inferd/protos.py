"""Triton's generated protobuf modules (`model_config_pb2`, `service_pb2`, `service_pb2_grpc`), without the client.

They ship in tritonclient's `tritonclient/grpc/` package, whose `__init__` imports the whole gRPC client with them:
grpc, `tritonclient.utils` and through it ml_dtypes (for BF16), rapidjson, packaging: a quarter of a second and a
few MB at every start, of which the server needs none for its configuration (protobuf alone) and grpc only with its
gRPC port on. So the generated modules are loaded here from that folder without running the package's `__init__`,
under their own names (`tritonclient.grpc.model_config_pb2`, ...): they are the very modules tritonclient's client
uses if something imports it later (one class per message, one descriptor pool).

`model_config_pb2` is loaded with this module; `service_pb2` (and `service_pb2_grpc`, which imports grpc) on first
use, by the gRPC front door.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

__all__ = ["model_config_pb2", "service_pb2", "service_pb2_grpc"]

_PACKAGE = "tritonclient.grpc"
_LAZY = ("service_pb2", "service_pb2_grpc")
_lock = threading.Lock()


def _load(name: str) -> types.ModuleType:
    """`tritonclient.grpc.<name>`: the module already imported, or loaded from the package's folder."""
    full = f"{_PACKAGE}.{name}"
    with _lock:
        module = sys.modules.get(full)
        if module is not None:
            return module
        if _PACKAGE in sys.modules:  # the client is imported already: its package imports the three modules
            return importlib.import_module(full)
        package = importlib.util.find_spec(_PACKAGE)  # imports `tritonclient` (an empty __init__), not the client
        if package is None or not package.submodule_search_locations:
            raise ImportError(f"{_PACKAGE} not found: inferd needs tritonclient's generated protobuf modules")
        folder = list(package.submodule_search_locations)
        spec = importlib.util.spec_from_file_location(full, f"{folder[0]}/{name}.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {full}")
        module = importlib.util.module_from_spec(spec)
        # The generated modules import one another as `from tritonclient.grpc import model_config_pb2`: while one
        # runs, a bare stand-in for the package answers that with the modules loaded here, and goes after.
        stand_in = types.ModuleType(_PACKAGE)
        stand_in.__path__ = folder
        for loaded in ("model_config_pb2", *_LAZY):
            if f"{_PACKAGE}.{loaded}" in sys.modules:
                setattr(stand_in, loaded, sys.modules[f"{_PACKAGE}.{loaded}"])
        sys.modules[full] = module
        sys.modules[_PACKAGE] = stand_in
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[full]
            raise
        finally:
            if sys.modules.get(_PACKAGE) is stand_in:
                del sys.modules[_PACKAGE]
        return module


if not TYPE_CHECKING:  # for the type checker, the names are tritonclient's modules (imported above)
    model_config_pb2 = _load("model_config_pb2")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        for needed in _LAZY[:_LAZY.index(name) + 1]:  # service_pb2_grpc imports service_pb2
            globals()[needed] = _load(needed)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
