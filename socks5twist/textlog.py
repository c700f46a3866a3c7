"""
Session lines through twistd's text log at the cost of a plain write.

Under C{twistd}, a session's line goes through Twisted's global log to the
text file observer that twistd installed (stdout with C{-n}, C{twistd.log} or
the C{--logfile}).  That observer formats each event from scratch: the
timestamp alone (a local time zone worked out, a C{datetime} built and passed
through C{strftime}) cost about half of the 35 us a line took, and each line
is flushed on its own.  A short session costs the rest of the server about
100-200 us, so the default configuration paid some 20 % of its sessions per
second for its log, where C{--access-log} (batched) paid almost nothing.

L{SessionLineObserver} takes the text observer's place and writes exactly
the text it would have written: for a session line (L{record.log_record}'s
events) it reuses the timestamp of the second (the string changes once a
second) and the C{[namespace#level]} prefix, and writes the lines of one
reactor turn to the same file in one write and one flush (a file observer
writes and flushes each line; twistd's C{LogFile} takes a lock and makes a
system call for each); every other event goes to the original observer
unchanged, after the lines kept so far, so the order stays.  L{install} replaces only an
observer that formats a probe session event exactly as the replacement does,
so a custom C{--logger}, a JSON log or syslog is left alone, and the log
reads byte for byte as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.logger import ILogObserver, LogEvent, LogLevel, formatTime
from zope.interface import implementer

from .record import SESSION_FORMAT, WORKER_SESSION_FORMAT, flattened
from .twistedinternals import file_log_parts, log_observers, replace_log_observer

__all__ = ["MAX_PENDING", "SessionLineObserver", "install", "uninstall"]

# Characters of session lines kept for the end of the reactor's turn at
# most; beyond, they are written at once.
MAX_PENDING = 64 * 1024


@implementer(ILogObserver)
class SessionLineObserver:
    """
    A text file log observer's stand-in: the same text, session lines made
    cheaply (see the module's docstring).

    @ivar original: the observer replaced; every other event goes to it, and
        L{uninstall} puts it back.
    """

    def __init__(
        self,
        original: Callable[[LogEvent], None],
        write: Callable[[str], object],
        flush: Callable[[], object],
        reactor: Any,
    ) -> None:
        self.original = original
        self._write = write
        self._flush = flush
        self._reactor = reactor
        self._second = -1
        self._stamp = ""
        self._systems: dict[tuple[str, LogLevel], str] = {}
        self._pending: list[str] = []
        self._pending_size = 0

    def __call__(self, event: LogEvent) -> None:
        text = self.format(event)
        if text is None:
            self.flush()  # what came before is written before it
            self.original(event)
            return
        if not self._pending:
            self._reactor.callLater(0, self.flush)
        self._pending.append(text)
        self._pending_size += len(text)
        if self._pending_size >= MAX_PENDING:
            self.flush()

    def format(self, event: LogEvent) -> str | None:
        """
        The text of a session line event, as Twisted's classic text format
        gives it (C{"{time} [{namespace}#{level}] {line}\\n"}), or C{None}
        for any other event (which the original observer formats).  Only
        the events L{record.log_record} builds qualify: their line is
        escaped already (one line, printable ASCII), they carry no failure
        and no C{log_system}.
        """
        kind = event.get("log_format")
        if (
            (kind is not SESSION_FORMAT and kind is not WORKER_SESSION_FORMAT)
            or "log_failure" in event
            or "log_system" in event
        ):
            return None
        when = event["log_time"]
        second = int(when)
        if second != self._second:
            self._stamp = formatTime(float(second))
            self._second = second
        key = (event["log_namespace"], event["log_level"])
        system = self._systems.get(key)
        if system is None:
            system = self._systems[key] = f"[{key[0]}#{key[1].name}]"
        if kind is WORKER_SESSION_FORMAT:
            return f"{self._stamp} {system} worker[{event['worker_pid']}] {event['session_line']}\n"
        return f"{self._stamp} {system} {event['session_line']}\n"

    def flush(self) -> None:
        """Write the lines kept since the last flush, in one write, and flush."""
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._write(text)
            self._flush()


def install(publisher: Any, reactor: Any, namespace: str) -> list[SessionLineObserver]:
    """
    Put a L{SessionLineObserver} in the place of each text file observer of
    C{publisher} (Twisted's global log publisher) that writes a probe
    session event (namespace C{namespace}, at this second and at a
    fractional one) exactly as the stand-in would; return the stand-ins.
    """
    installed = []
    for observer in log_observers(publisher):
        parts = file_log_parts(observer)
        if parts is None:
            continue
        write, flush, format_event = parts
        candidate = SessionLineObserver(observer, write, flush, reactor)
        now = time.time()
        probes = [
            _probe(namespace, float(int(now))),
            _probe(namespace, now + 0.75),
            _probe(namespace, now, worker=4242),
        ]
        if all(format_event(p) == candidate.format(p) for p in probes):
            replace_log_observer(publisher, observer, candidate)
            installed.append(candidate)
    return installed


def uninstall(publisher: Any, installed: list[SessionLineObserver]) -> None:
    """Flush each stand-in and put its original observer back."""
    for observer in installed:
        observer.flush()
        replace_log_observer(publisher, observer, observer.original)


def _probe(namespace: str, when: float, worker: int | None = None) -> LogEvent:
    """
    A session line event as L{record.log_record} builds them (or, with
    C{worker}, as L{record.log_worker_record} does).
    """
    line = "session 127.0.0.1:1 user=- CONNECT 127.0.0.1:2 (probe)"
    event: LogEvent = {
        "session_line": line,
        "log_format": SESSION_FORMAT,
        "log_flattened": flattened(line),
        "log_namespace": namespace,
        "log_level": LogLevel.info,
        "log_time": when,
    }
    if worker is not None:
        event["log_format"] = WORKER_SESSION_FORMAT
        event["worker_pid"] = worker
        event["log_flattened"].update({"worker_pid!s:": str(worker), "worker_pid!:": worker})
    return event
