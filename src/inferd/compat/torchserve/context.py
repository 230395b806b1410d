"""TorchServe's `ts.context`: what a handler receives as `context` (model facts, per-request headers and status)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["Context", "Metrics", "RequestProcessor"]

log = logging.getLogger("inferd.torchserve")


class RequestProcessor:
    """One request of a batch: its headers (read by the handler) and the status and headers it answers with."""

    def __init__(self, request_header: dict[str, str]) -> None:
        self._status_code = 200
        self._reason_phrase: str | None = None
        self._response_header: dict[str, str] = {}
        # HTTP header names are case-insensitive: kept lower-cased, looked up lower-cased.
        self._request_header = {k.lower(): v for k, v in request_header.items()}

    def get_request_property(self, key: str) -> str | None:
        return self._request_header.get(key.lower())

    def get_request_properties(self) -> dict[str, str]:
        return dict(self._request_header)

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self._status_code = int(code)
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> str | None:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        return self._response_header

    def get_response_header(self, key: str) -> str | None:
        return self._response_header.get(key)


class Metrics:
    """`context.metrics`: handlers call add_time / add_counter / add_size / add_percent / add_metric.

    The values are kept here (the last value per name) and logged at debug level; they are not exported as
    Prometheus metrics (inferd's own per-model metrics count the requests and their times).
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def _record(self, name: str, value: Any, unit: str = "") -> None:
        self.values[name] = value
        log.debug("handler metric %s = %s %s", name, value, unit)

    def add_time(self, name: str, value: float, idx: Any = None, unit: str = "ms", *args: Any, **kwargs: Any) -> None:
        self._record(name, value, unit)

    def add_counter(self, name: str, value: float, idx: Any = None, *args: Any, **kwargs: Any) -> None:
        self._record(name, self.values.get(name, 0) + value)

    def add_size(self, name: str, value: float, idx: Any = None, unit: str = "MB", *args: Any, **kwargs: Any) -> None:
        self._record(name, value, unit)

    def add_percent(self, name: str, value: float, idx: Any = None, *args: Any, **kwargs: Any) -> None:
        self._record(name, value, "percent")

    def add_metric(self, name: str, value: Any, unit: str = "", *args: Any, **kwargs: Any) -> None:
        self._record(name, value, unit)

    def __getattr__(self, name: str) -> Callable[..., None]:
        """Other calls of TorchServe's metrics API (add_metric_to_cache, get_metric...) do nothing."""
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


class Context:
    """What TorchServe passes to `initialize(context)` and `handle(data, context)`.

    `system_properties` holds model_dir (the extracted archive), gpu_id (None on the CPU), batch_size,
    server_name and server_version; `manifest` is MANIFEST.json; per request, the headers it came with and the
    status / headers it answers with (`request_processor`, one per request of the batch).
    """

    def __init__(self, model_name: str, model_dir: str, manifest: dict[str, Any], batch_size: int, gpu: int | None,
                 mms_version: str, limit_max_image_pixels: bool = True, metrics: Any = None,
                 model_yaml_config: dict[str, Any] | None = None) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": "MMS",  # what TorchServe itself reports
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids: dict[int, str] | None = None
        self._request_processor: list[RequestProcessor] = []
        self._metrics = metrics if metrics is not None else Metrics()
        self.model_yaml_config: dict[str, Any] = model_yaml_config or {}
        self.stopping_criteria: Any = None
        self.cl_socket: Any = None

    @property
    def system_properties(self) -> dict[str, Any]:
        return self._system_properties

    @property
    def request_processor(self) -> list[RequestProcessor]:
        return self._request_processor

    @request_processor.setter
    def request_processor(self, value: list[RequestProcessor]) -> None:
        self._request_processor = value

    @property
    def metrics(self) -> Any:
        return self._metrics

    @metrics.setter
    def metrics(self, value: Any) -> None:
        self._metrics = value

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx) if self.request_ids else None

    def _processor(self, idx: int) -> RequestProcessor | None:
        processors = self._request_processor
        return processors[idx] if 0 <= idx < len(processors) else None

    def get_request_header(self, idx: int, key: str) -> str | None:
        processor = self._processor(idx)
        return processor.get_request_property(key) if processor is not None else None

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        processor = self._processor(idx)
        return processor.get_request_properties() if processor is not None else {}

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> str | None:
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> tuple[int, str | None]:
        processor = self._processor(idx)
        if processor is None:
            return 200, None
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        processor = self._processor(idx)
        if processor is not None:
            processor.report_status(code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self._request_processor:
            processor.report_status(code, phrase)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        processor = self._processor(idx)
        return processor.get_response_headers() if processor is not None else {}

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        processor = self._processor(idx)
        if processor is not None:
            processor.add_response_property(key, value)
