"""
A session's record and its log line, built in one place.

When a session ends, L{SessionRecord.of} reads what the session kept for its
line (client, user, command, destination, the address connected to and the
proxy's own end, the replies, the bytes and datagrams each way, the relay)
into one immutable record, escaping every value that came from the network
(L{socks5twist.logsafe}); L{SessionRecord.line} formats the line that the
README's "Logs" section shows, and L{SessionRecord.fields} gives the same
facts as the fields of a Twisted log event, for observers that want them
(JSON logs), and L{log_record} sends it through Twisted's log at the least
cost that log allows.  The factory counts the session in its statistics
and writes the line where the configuration says.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.logger import Logger, LogLevel

from .codec import Command
from .gsswire import LEVEL_NAMES
from .logsafe import field, printable
from .policy import show

if TYPE_CHECKING:
    from .session import SOCKS5ServerProtocol

__all__ = [
    "HEX_BYTE",
    "SESSION_FORMAT",
    "WORKER_SESSION_FORMAT",
    "SessionRecord",
    "flattened",
    "log_record",
    "log_worker_record",
]

# How the line and the metrics show a reply code: 0x00 ... 0xff.
HEX_BYTE = tuple(f"{i:#04x}" for i in range(256))


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """
    The facts of one ended session, each already printable ASCII as the line
    shows it (C{-} for a missing value).

    @ivar datagrams: for UDP ASSOCIATE, datagrams relayed C{(up, down)};
        C{None} for the other commands.
    @ivar dropped: for UDP ASSOCIATE, the dropped datagrams by reason
        (C{reason:count,...}, or C{0}); C{None} otherwise.
    @ivar source: for UDP ASSOCIATE, how the client's UDP address was fixed
        and to what (C{lock=nat source=203.0.113.7:41234}); C{None} otherwise.
    """

    client: str
    user: str
    command: str
    destination: str
    connected: str
    bound: str
    reply: str
    up: int
    down: int
    datagrams: tuple[int, int] | None
    dropped: str | None
    source: str | None
    duration: float
    relay: str
    outcome: str
    # How the tunnel left, when a rule's route chose (the chain of upstream
    # proxies without credentials, "egress", or "none" when every one
    # failed); None: directly, and the line has no route= at all.
    route: str | None = None
    limit: int | None = None  # the [[limit]] the session was under (its number)
    # The GSSAPI protection level, when the client authenticated with
    # GSSAPI (clear, integrity, confidentiality); None: it did not.
    gssapi: str | None = None

    @classmethod
    def of(cls, session: SOCKS5ServerProtocol, now: float | None = None) -> SessionRecord:
        """
        The record of C{session}, ended at C{now} (by default: the current
        time).  The user passes L{field} (it stands between fields) and the
        outcome L{printable} (our own text that quotes escaped values); the
        destination is canonical already.
        """
        relay, udp = session.relay, session.udp
        if udp is not None:
            up, down = udp.up_bytes, udp.down_bytes
            datagrams: tuple[int, int] | None = (udp.up_datagrams, udp.down_datagrams)
            dropped: str | None = udp.describe_drops()
            source: str | None = udp.describe_source()
        else:
            up, down = (relay.up, relay.down) if relay is not None else (0, 0)
            datagrams = dropped = source = None
        command = session.command
        return cls(
            client=session.client_text,
            user=field(session.user),
            command=command.name if isinstance(command, Command) else "-",
            destination=show(session.destination),
            connected=session.connected_to or "-",
            bound=session.bound or "-",
            reply="/".join([HEX_BYTE[r] for r in session.replies]) or "-",
            up=up,
            down=down,
            datagrams=datagrams,
            dropped=dropped,
            source=source,
            duration=(time.time() if now is None else now) - session.started,
            relay=relay.kind if relay is not None else "-",
            outcome=printable(session.outcome),
            route=session.route,
            limit=session.limit.index if session.limit is not None else None,
            gssapi=LEVEL_NAMES[session.protection] if session.protection is not None else None,
        )

    @property
    def extra(self) -> str:
        """What only a UDP association's line has (with its leading space), or C{""}."""
        if self.datagrams is None:
            return ""
        up, down = self.datagrams
        return f" {self.source} datagrams={up}/{down} dropped={self.dropped}"

    def line(self) -> str:
        """
        The session's log line.  Formatted with an f-string: Twisted's
        format-string engine cost more than the rest of a short session.
        """
        return (
            f"session {self.client} user={self.user} {self.command} {self.destination} "
            f"-> {self.connected} bound={self.bound} reply={self.reply} "
            f"up={self.up} down={self.down}{self.extra} "
            f"duration={self.duration:.3f}s relay={self.relay}"
            f"{'' if self.route is None else ' route=' + self.route}"
            f"{'' if self.limit is None else f' limit=#{self.limit}'}"
            f"{'' if self.gssapi is None else ' gssapi=' + self.gssapi} ({self.outcome})"
        )

    def fields(self, line: str | None = None) -> dict[str, object]:
        """
        The record as the fields of a log event (the names every release
        has used: C{connected}, C{reply}, C{extra} for the UDP part), with
        the line itself under C{session_line} (C{line}, if the caller made
        it already).
        """
        return {
            "session_line": self.line() if line is None else line,
            "client": self.client,
            "user": self.user,
            "command": self.command,
            "destination": self.destination,
            "connected": self.connected,
            "bound": self.bound,
            "reply": self.reply,
            "up": self.up,
            "down": self.down,
            "extra": self.extra,
            "datagrams": self.datagrams,
            "dropped": self.dropped,
            "udp_source": self.source,
            "relay": self.relay,
            "duration": self.duration,
            "outcome": self.outcome,
            "route": self.route,
            "limit": self.limit,
            "gssapi": self.gssapi,
        }


def log_record(logger: Logger, record: SessionRecord) -> None:
    """
    Send C{record} to Twisted's log as one event: the event that
    C{logger.info("{session_line}", **record.fields())} would emit (same
    namespace, source, level, format and fields), built here and handed
    straight to the logger's observer.

    Why not C{logger.info}: under load a session's line through Twisted's
    log cost several times what the rest of its logging did.  The event
    skips C{Logger.emit}'s checks (it lists every log level on each call), and
    carries C{log_flattened}, the pre-rendered form that Twisted's own JSON
    logs carry: an observer that formats it (twistd's log file, syslog) then
    copies the line instead of running the format-string engine over it,
    and one that flattens it (JSON) finds the work done.  The rest (the
    timestamp, the write and flush per line) is the observer's, and stays.
    """
    line = record.line()
    _emit(logger, record.fields(line), line, logger.namespace, logger.source, time.time())


def log_worker_record(
    logger: Logger, fields: dict[str, object], when: float, namespace: str, pid: int
) -> dict[str, object]:
    """
    Send a C{--workers} process's session record (its L{SessionRecord.fields},
    as the worker sent them, and the worker's event time and namespace) to
    the first process's log: the event L{log_record} makes, with
    C{worker[PID]} before the line (L{WORKER_SESSION_FORMAT}); returns the
    event.
    """
    line = str(fields["session_line"])
    return _emit(logger, dict(fields), line, namespace, None, when, pid)


def _emit(
    logger: Logger,
    event: dict[str, object],
    line: str,
    namespace: str | None,
    source: object,
    when: float,
    worker: int | None = None,
) -> dict[str, object]:
    """
    Complete C{event} (a record's fields) as the session line's log event,
    pre-flattened (a worker's with C{worker[PID]} before the line), and
    hand it to C{logger}'s observer; returns it.
    """
    flat = flattened(line)
    if worker is not None:
        flat.update({"worker_pid!s:": str(worker), "worker_pid!:": worker})
        event["worker_pid"] = worker
    event.update(
        log_logger=logger,
        log_level=LogLevel.info,
        log_namespace=namespace,
        log_source=source,
        log_format=SESSION_FORMAT if worker is None else WORKER_SESSION_FORMAT,
        log_flattened=flat,
        log_time=when,
    )
    logger.observer(event)
    return event


# The event's format, and the keys under which Twisted's flattening
# (twisted.logger.flattenEvent) keeps its one field rendered and as it is.
SESSION_FORMAT = "{session_line}"
# A worker's session line as the first process logs it.
WORKER_SESSION_FORMAT = "worker[{worker_pid}] {session_line}"
_FLAT_KEY = "session_line!s:"
_STRUCTURED_KEY = "session_line!:"


def flattened(line: str) -> dict[str, object]:
    """
    The C{log_flattened} of a session line event: what Twisted's
    C{flattenEvent} would make of C{SESSION_FORMAT} over C{line}.
    """
    return {_FLAT_KEY: line, _STRUCTURED_KEY: line}
