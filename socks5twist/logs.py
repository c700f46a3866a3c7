"""
How socks5twist's log reaches its readers: the JSON-lines observer that
twistd's C{--logger} option loads, the channel that carries a worker's events
to the first process, and the wording shared by several lines.

- L{json_observer}: C{twistd -n --logger socks5twist.logs.json_observer
  socks5 ...} writes one JSON object per line to standard output: C{time},
  C{level}, C{namespace}, C{text}, and for a session's record its facts as
  fields of their own.  C{json.dumps} escapes every control and non-ASCII
  character, so a record is always one line and no value can end it or
  forge another; the values that came from the network were escaped by
  L{socks5twist.logsafe} before they became part of an event, exactly as in
  the text log.
- L{worker_observer}: what a C{--workers} process logs with.  It writes each
  event as Twisted's own JSON (with no timestamp of its own rendering), and
  the first process reads it back with L{relay_worker_line} and hands it to
  its own log: a worker's line is then formatted once, by the first
  process's observer (one timestamp, the worker's event time), and a JSON
  log carries a worker's session records with all their fields.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any, cast

from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    eventFromJSON,
    formatEvent,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .logsafe import escape
from .record import SESSION_FORMAT, log_worker_record

__all__ = ["JSONLinesObserver", "count", "json_observer", "relay_worker_line", "worker_observer"]

# The facts of a session record (socks5twist.record.SessionRecord.fields),
# copied into a JSON line as they are.
SESSION_FIELDS = (
    "client",
    "user",
    "command",
    "destination",
    "connected",
    "bound",
    "reply",
    "up",
    "down",
    "relay",
    "duration",
    "outcome",
)


def count(n: int, noun: str) -> str:
    """C{n} and C{noun}, in the plural unless there is exactly one: C{1 session}, C{2 sessions}."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def seconds(t: float) -> str:
    """A duration as an option gives it: C{1 second}, C{0.5 seconds}, C{10 seconds}."""
    return f"{t:g} second" if t == 1 else f"{t:g} seconds"


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one line of JSON to C{out} (flushed at once, as
    twistd's text log does, so that no line waits in a buffer).
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self.out.write(json.dumps(as_record(event), ensure_ascii=True, default=str) + "\n")
        self.out.flush()


def as_record(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of one event: plain names, the text formatted, a session's facts."""
    level = event.get("log_level")
    when = event.get("log_time")
    record: dict[str, Any] = {
        "time": (
            datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
            if isinstance(when, int | float)
            else None
        ),
        "level": level.name if isinstance(level, type(LogLevel.info)) else str(level),
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    if "worker_pid" in event:
        record["worker"] = event["worker_pid"]
    if "session_line" in event:
        record["session"] = session = {name: event.get(name) for name in SESSION_FIELDS}
        datagrams = event.get("datagrams")
        if isinstance(datagrams, list | tuple) and len(datagrams) == 2:
            session["datagrams"] = {"up": datagrams[0], "down": datagrams[1]}
            session["dropped"] = _drops(str(event.get("dropped")))
            # "lock=nat source=203.0.113.7:41234": our own words and an address.
            for part in str(event.get("udp_source")).split():
                name, _, value = part.partition("=")
                if name in ("lock", "source"):
                    session[name] = value
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["traceback"] = failure.getTraceback()
    return record


def _drops(text: str) -> dict[str, int]:
    """C{reason:count,...} (our own reasons, or C{0}) as a dict."""
    drops = {}
    for part in text.split(","):
        reason, _, number = part.rpartition(":")
        if reason and number.isdigit():
            drops[reason] = int(number)
    return drops


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """
    For C{twistd --logger socks5twist.logs.json_observer}: JSON lines on
    standard output (twistd ignores C{--logfile} when C{--logger} is given).
    The stream is taken now, before twistd redirects C{sys.stdout} into the
    log.
    """
    return JSONLinesObserver(sys.stdout if out is None else out)


def worker_observer(out: IO[str] | None = None) -> ILogObserver:
    """
    For a C{--workers} process (the first process passes C{--logger} with
    this): Twisted's JSON events, one per line, on standard output, which
    the first process reads.
    """
    stream = sys.stdout if out is None else out
    write = jsonFileLogObserver(stream, recordSeparator="")

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format") is SESSION_FORMAT and "log_failure" not in event:
            # A session's record, the line a busy worker writes most: its
            # fields (plain values) as one compact JSON object, which costs a
            # tenth of Twisted's JSON of the whole event (and of reading it back).
            record = {key: event.get(key) for key in _WORKER_RECORD_FIELDS}
            stream.write(_SESSION_MARK + json.dumps(record, separators=(",", ":")) + "\n")
            stream.flush()
            return
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            # Twisted's JSON keeps a failure's frames but not its exception's
            # value: send the whole traceback as text, part of the message.
            event = dict(event, worker_traceback=failure.getTraceback().rstrip("\n"))
            del event["log_failure"]
            event["log_format"] = str(event.get("log_format") or "") + "\n{worker_traceback}"
        write(event)

    return cast(ILogObserver, observe)


def relay_worker_line(logger: Logger, pid: int, line: bytes) -> dict[str, Any] | None:
    """
    Hand one line of a worker's output to C{logger}'s observer (the first
    process's log), as the worker's own event with C{worker[PID]} before its
    text; a line that is no event (something the worker printed before its
    log began) is logged as escaped text.  Returns the event, or C{None}.
    """
    if line.startswith(_SESSION_MARK_BYTES):
        record = _worker_record(line[len(_SESSION_MARK_BYTES) :])
        if record is not None:
            when, namespace = record.pop("log_time"), record.pop("log_namespace")
            return log_worker_record(logger, record, when, namespace, pid)  # type: ignore[arg-type]
    try:
        event = eventFromJSON(line.decode("utf-8"))
    except ValueError:  # also UnicodeDecodeError
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("log_time"), int | float):
        logger.info("worker[{pid}] {line}", pid=pid, line=escape(line.rstrip(b"\r")))
        return None
    # What could not cross the pipe comes back as {"unpersistable": true}.
    event.pop("log_logger", None)
    event["log_source"] = None
    event["worker_pid"] = pid
    event["log_format"] = "worker[{worker_pid}] " + str(event.get("log_format") or "")
    flattened = event.get("log_flattened")
    if isinstance(flattened, dict):
        flattened["worker_pid!s:"] = str(pid)
        flattened["worker_pid!:"] = pid
    if not isinstance(event.get("log_level"), type(LogLevel.info)):
        event["log_level"] = LogLevel.info
    logger.observer(event)
    return event


# A worker's session record on the pipe: this mark, then a JSON object of
# these fields (SessionRecord.fields, the line, the event's time and
# namespace).  Twisted's JSON events start with "{", never with the mark.
_SESSION_MARK = "S"
_SESSION_MARK_BYTES = _SESSION_MARK.encode()
_WORKER_RECORD_FIELDS = (
    "session_line",
    *SESSION_FIELDS,
    "extra",
    "datagrams",
    "dropped",
    "udp_source",
    "log_time",
    "log_namespace",
)


def _worker_record(data: bytes) -> dict[str, Any] | None:
    """
    A worker's session record read back, or C{None} if it is not one (the
    pipe is the worker's standard output: anything it printed arrives too).
    """
    try:
        record = json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        return None
    if (
        not isinstance(record, dict)
        or set(record) != set(_WORKER_RECORD_FIELDS)
        or not isinstance(record["session_line"], str)
        # Written as it is by socks5twist.textlog: one line of printable
        # ASCII, as a worker's record makes it (escaped), or not a record.
        or not (record["session_line"].isascii() and record["session_line"].isprintable())
        or not isinstance(record["log_time"], int | float)
        or not isinstance(record["log_namespace"], str)
    ):
        return None
    return record
