"""What a sync tells: progress lines in the log while it downloads, and the report of what it changed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

__all__ = ["ProgressLog", "SyncReport", "human_size"]

log = logging.getLogger("inferd.repository")

_BIG = 16 << 20  # files this large get a line when they start, and a progress bar while they last


@dataclass
class SyncReport:
    """What the last `sync()` did."""

    downloaded: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.downloaded or self.removed)


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


class ProgressLog:
    """`downloading simple/1/model.onnx [#####.....] 50% 6.1 MB / 12.3 MB`, at most every `interval` seconds."""

    def __init__(self, label: str, total: int | None, interval: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.interval = interval
        self.started = time.monotonic()
        self._last = self.started
        if total is None or total >= _BIG:  # small files get one line, when done
            log.info("downloading %s (%s)", label, human_size(total) if total is not None else "size unknown")

    def set_total(self, total: int | None) -> None:
        if total:
            self.total = int(total)

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info("downloading %s %s", self.label, self._bar())

    def _bar(self) -> str:
        if not self.total:
            return human_size(self.done)
        fraction = min(1.0, self.done / self.total)
        filled = int(fraction * 20)
        return (f"[{'#' * filled}{'.' * (20 - filled)}] {fraction:4.0%} {human_size(self.done)} / "
                f"{human_size(self.total)}")

    def finish(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        log.info("downloaded %s %s in %.1f s (%s/s)", self.label, human_size(self.done), elapsed,
                 human_size(self.done / elapsed))
