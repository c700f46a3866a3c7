"""
The session lines in a file of their own, as a web server's access log.

By default each session's line goes through Twisted's log like every other
message, at the cost of Twisted's whole log machinery (an event, observers,
a format string, a timestamp, a write) per session: measured under load, about
a sixth of a short session's CPU time.  An L{AccessLog} writes the same lines itself: stamped
with a timestamp formatted once per second, collected, and appended to the
file in one write at most L{FLUSH_INTERVAL} seconds after the first line of
a batch.  The file is opened with C{O_APPEND}, so the worker processes of
C{--workers} share one file without overwriting each other's lines, and
L{reopen} (on SIGHUP) follows a log rotation.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

log = Logger()

FLUSH_INTERVAL = 0.1  # seconds a line may wait before it is written
MAX_PENDING = 1 << 20  # bytes after which a batch is written at once


def open_for_append(path: str) -> int:
    """A descriptor that appends to C{path} (created if need be, 0640)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


class AccessLog:
    """
    Appends lines to the file at C{path}, in batches.

    Raises C{OSError} at once if the file cannot be opened.  A write that
    fails later is reported once in Twisted's log (and once more when writes
    work again); the lines of a failed batch are dropped rather than held
    without bound.
    """

    def __init__(self, path: str, reactor: Any, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.path = path
        self._reactor = reactor
        self._flush_interval = flush_interval
        self._fd: int | None = open_for_append(path)
        self._pending: list[str] = []
        self._size = 0
        self._timer: IDelayedCall | None = None
        self._failing = False
        self._second = -1
        self._stamp = ""

    def write(self, line: str) -> None:
        """Add one line (without its newline); it reaches the file soon."""
        if self._fd is None:
            return  # closed
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z ", time.localtime(second))
        text = f"{self._stamp}{line}\n"
        self._pending.append(text)
        self._size += len(text)
        if self._size >= MAX_PENDING:
            self.flush()
        elif self._timer is None:
            self._timer = self._reactor.callLater(self._flush_interval, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write what is pending now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self._fd is None:
            return
        data = "".join(self._pending).encode("utf-8", "backslashreplace")
        self._pending.clear()
        self._size = 0
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as e:
            if not self._failing:
                self._failing = True
                log.error(
                    "access log {path}: cannot write ({error}); session lines are lost",
                    path=self.path,
                    error=e.strerror,
                )
            return
        if self._failing:
            self._failing = False
            log.info("access log {path}: writing again", path=self.path)

    def reopen(self) -> None:
        """Flush, then open the path again (after a log rotation moved the file)."""
        self.flush()
        try:
            fd = open_for_append(self.path)
        except OSError as e:
            log.error(
                "access log {path}: cannot reopen ({error}); still writing to the old file",
                path=self.path,
                error=e.strerror,
            )
            return
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        """Flush and close; later lines are dropped."""
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
