"""Triton's logging extension over Python's logging: which messages the server writes, in which format, where.

Triton's switches are independent (INFO off but WARNING on, or the reverse), which one logger level cannot say,
so the switches live in a filter on the handler this module installs; the `inferd` logger's level follows the
lowest enabled kind so that disabled debug calls stay cheap. `log_verbose_level` > 0 turns on the `inferd`
debug messages (per-request lines among them).

Besides Triton's two formats, `json` writes every line as one JSON object (time, level, logger, message, and the
fields a record carries in its `fields` extra); a server started with it also writes an access line per request
(the `access_log` stage). It is chosen where the server starts: the logging API changes only Triton's formats.
"""

from __future__ import annotations

import datetime
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import orjson

from ..types import ErrorKind, InferError

LOGGER = "inferd"
FORMATS = ("default", "ISO8601", "json")
_MESSAGE = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_UINT32_MAX = 2**32 - 1


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (ISO 8601, UTC, milliseconds), `level`, `logger`, `message`, the record's
    `fields` (a dict given as `extra={"fields": {...}}`), and `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        line: dict[str, Any] = {"time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
                                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def _formatter(name: str) -> logging.Formatter:
    if name == "json":
        return JsonFormatter()
    if name == "ISO8601":
        formatter = logging.Formatter(_MESSAGE, datefmt="%Y-%m-%dT%H:%M:%SZ")
        formatter.converter = time.gmtime
        return formatter
    return logging.Formatter(_MESSAGE)


class LogControl:
    """The log settings of one process (logging is process-wide): Triton's six, read and changed together."""

    def __init__(self) -> None:
        self.verbose = 0
        self.info = True
        self.warning = True
        self.error = True
        self.file = ""
        self.format = "default"
        self._handler: logging.Handler | None = None
        self._lock = threading.Lock()

    def install(self, *, verbose: int = 0, info: bool = True, warning: bool = True, error: bool = True,
                file: str = "", format: str = "default") -> None:
        """Send the process's log records to stderr (or `file`), filtered by these settings. Raises OSError
        when the file cannot be opened, ValueError for an unknown format."""
        if format not in FORMATS:
            raise ValueError(f"unknown log format '{format}': expect default, ISO8601 or json")
        handler: logging.Handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
        handler.addFilter(self._wanted)
        handler.setFormatter(_formatter(format))
        with self._lock:
            self.verbose, self.info, self.warning, self.error = verbose, info, warning, error
            self.file, self.format = file, format
            root = logging.getLogger()
            if self._handler is not None:
                root.removeHandler(self._handler)
                self._handler.close()
            self._handler = handler
            root.addHandler(handler)
            # Other libraries' records: at most INFO (their debug output is not the server's verbose log).
            root.setLevel(max(self._lowest(), logging.INFO))
            self._apply_level()

    def _wanted(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level >= logging.ERROR:
            return self.error
        if level >= logging.WARNING:
            return self.warning
        if level >= logging.INFO:
            return self.info
        return self.verbose > 0

    def _lowest(self) -> int:
        if self.verbose > 0:
            return logging.DEBUG
        for enabled, level in ((self.info, logging.INFO), (self.warning, logging.WARNING),
                               (self.error, logging.ERROR)):
            if enabled:
                return level
        return logging.CRITICAL + 1

    def _apply_level(self) -> None:
        logging.getLogger(LOGGER).setLevel(self._lowest())

    def settings(self) -> dict[str, Any]:
        return {"log_file": self.file, "log_info": self.info, "log_warning": self.warning, "log_error": self.error,
                "log_verbose_level": self.verbose, "log_format": self.format}

    def update(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Change the given settings (Triton's names and types); the others stay. All are checked before any
        changes. The log file is chosen where the server starts (`--log-file`), as in Triton since 24.05."""
        changes: dict[str, Any] = {}
        for name, value in values.items():
            if name == "log_file":
                raise InferError(ErrorKind.UNSUPPORTED, "log file location can not be updated through network protocol")
            if name in ("log_info", "log_warning", "log_error"):
                if not isinstance(value, bool):
                    raise InferError.invalid(f"expect boolean for '{name}'")
                changes[name[4:]] = value
            elif name == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
                    raise InferError.invalid(f"expect an unsigned integer for '{name}'")
                changes["verbose"] = value
            elif name == "log_format":
                if value not in FORMATS:
                    raise InferError.invalid(f"invalid argument for log_format, got: {value}")
                if value != self.format and "json" in (value, self.format):
                    raise InferError.invalid("log_format json is chosen where the server starts (--log-format "
                                             "json), as are its access lines: the API switches default / ISO8601")
                changes["format"] = value
            else:
                raise InferError.invalid(f"unknown log setting '{name}'")
        if changes:
            with self._lock:
                for attr, value in changes.items():
                    setattr(self, attr, value)
                if "format" in changes and self._handler is not None:
                    self._handler.setFormatter(_formatter(self.format))
                self._apply_level()
        return self.settings()

    @property
    def debug(self) -> bool:
        return self.verbose > 0


# Logging is process-wide, so is its control: the CLI installs it, every Server in the process reports it.
LOG_CONTROL = LogControl()
