"""Trace and log settings ⇄ Triton's protobuf messages (TraceSettingRequest/Response, LogSettingsRequest/Response)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...protos import service_pb2 as pb


def trace_setting_values(request: Any) -> dict[str, list[str]]:
    """Each setting as its list of strings (the core reads an empty list as "clear this setting")."""
    return {name: list(value.value) for name, value in request.settings.items()}


def trace_setting_response(settings: Mapping[str, str | list[str]]) -> Any:
    response = pb.TraceSettingResponse()
    for name, value in settings.items():
        response.settings[name].value.extend(value if isinstance(value, list) else [value])
    return response


def log_setting_values(request: Any) -> dict[str, Any]:
    """Each setting as the Python value of the oneof member it sets (None when it sets none)."""
    values: dict[str, Any] = {}
    for name, value in request.settings.items():
        member = value.WhichOneof("parameter_choice")
        values[name] = getattr(value, member) if member else None
    return values


def log_settings_response(settings: Mapping[str, Any]) -> Any:
    response = pb.LogSettingsResponse()
    for name, value in settings.items():
        entry = response.settings[name]
        if isinstance(value, bool):
            entry.bool_param = value
        elif isinstance(value, int):
            entry.uint32_param = value
        else:
            entry.string_param = str(value)
    return response
