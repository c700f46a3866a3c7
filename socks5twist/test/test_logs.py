"""
L{socks5twist.logs}: the JSON-lines log, a worker's events carried to the
first process, and the wording of counts.
"""

from __future__ import annotations

import io
import json
from typing import Any, cast

from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import textlog
from socks5twist.codec import Address, AddressType, Command
from socks5twist.logs import JSONLinesObserver, count, relay_worker_line, worker_observer
from socks5twist.record import SessionRecord, log_record
from socks5twist.session import SOCKS5ServerProtocol

from .test_record import _UDP, ended_connect


def json_lines(emit: Any) -> list[dict[str, Any]]:
    """The records a L{JSONLinesObserver} writes while C{emit(logger)} logs."""
    out = io.StringIO()
    emit(Logger(namespace="test.ns", observer=JSONLinesObserver(out)))
    text = out.getvalue()
    assert text.endswith("\n") and text.isascii(), text
    return [json.loads(line) for line in text.splitlines()]


class JSONLinesTests(SynchronousTestCase):
    def test_session_record_is_one_line_with_every_fact(self) -> None:
        record = SessionRecord.of(ended_connect(), now=1000.25)
        [line] = json_lines(lambda logger: log_record(logger, record))
        self.assertEqual(line["level"], "info")
        self.assertEqual(line["namespace"], "test.ns")
        self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        self.assertEqual(line["text"], record.line())
        self.assertEqual(
            line["session"],
            {
                "client": "127.0.0.1:45066",
                "user": "alice",
                "command": "CONNECT",
                "destination": "example.org:443",
                "connected": "93.184.215.14:443",
                "bound": "10.0.0.5:51872",
                "reply": "0x00",
                "up": 517,
                "down": 6144,
                "relay": "splice",
                "duration": 0.25,
                "outcome": "closed",
            },
        )

    def test_hostile_user_cannot_end_the_line_or_forge_a_record(self) -> None:
        session = ended_connect()
        session.user = 'x"}\n{"level": "error", "text": "forged\u2028'
        record = SessionRecord.of(session, now=1000.0)
        out = io.StringIO()
        log_record(Logger(observer=JSONLinesObserver(out)), record)
        text = out.getvalue()
        self.assertEqual(text.count("\n"), 1)
        self.assertTrue(text.isascii() and text[:-1].isprintable())
        [line] = [json.loads(text)]
        # The logsafe escape (as in the text log), then JSON's own quoting.
        self.assertEqual(
            line["session"]["user"], 'x"}\\x0a{"level":\\x20"error",\\x20"text":\\x20"forged\\u2028'
        )

    def test_other_events_are_one_line_whatever_they_carry(self) -> None:
        def emit(logger: Logger) -> None:
            logger.warn("odd {value}", value="a\nb\x1b[2J\u00e9")
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                logger.failure("it broke")

        warning, error = json_lines(emit)
        self.assertEqual(warning["level"], "warn")
        self.assertEqual(warning["text"], "odd a\nb\x1b[2J\u00e9")
        self.assertNotIn("session", warning)
        self.assertEqual(error["level"], "critical")
        self.assertIn("ZeroDivisionError", error["traceback"])

    def test_udp_session_has_datagrams_and_drops(self) -> None:
        session = SOCKS5ServerProtocol()
        session.started = 10.0
        session.client_text = "127.0.0.1:52688"
        session.command = Command.UDP_ASSOCIATE
        session.destination = Address(AddressType.IPV4, "0.0.0.0", 0)
        session.replies = [0]
        session.udp = cast(Any, _UDP())
        session.outcome = "closed"
        record = SessionRecord.of(session, now=14.0)
        [line] = json_lines(lambda logger: log_record(logger, record))
        self.assertEqual(line["session"]["datagrams"], {"up": 2, "down": 3})
        self.assertEqual(line["session"]["dropped"], {"malformed": 1, "wrong source port": 3})
        self.assertEqual(line["session"]["lock"], "unspecified")
        self.assertEqual(line["session"]["source"], "127.0.0.1:5000")


class WorkerRelayTests(SynchronousTestCase):
    """A worker's events, written by L{worker_observer}, reach the first process's log."""

    def setUp(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.parent = Logger(
            namespace="socks5twist.workers", observer=cast(ILogObserver, self.received.append)
        )

    def worker_output(self, emit: Any) -> list[bytes]:
        out = io.StringIO()
        emit(Logger(namespace="socks5twist.service", observer=worker_observer(out)))
        return out.getvalue().encode().splitlines()

    def test_event_keeps_time_namespace_and_fields_with_the_pid(self) -> None:
        [line] = self.worker_output(lambda log: log.info("listening on {ports}", ports="tcp:1080"))
        event = relay_worker_line(self.parent, 4242, line)
        self.assertEqual(self.received, [event])
        assert event is not None
        self.assertEqual(event["log_namespace"], "socks5twist.service")
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["ports"], "tcp:1080")
        text = formatEventAsClassicLogText(event)
        self.assertIsNotNone(text)
        assert text is not None
        # One timestamp: the worker's event time, formatted here.
        self.assertRegex(
            text,
            r"^\S+ \[socks5twist\.service#info\] worker\[4242\] listening on tcp:1080\n$",
        )

    def test_stderr_between_the_halves_of_a_stdout_line_leaves_both_whole(self) -> None:
        from socks5twist import workers

        record = SessionRecord.of(ended_connect(), now=1000.25)
        [line] = self.worker_output(lambda log: log_record(log, record))
        self.patch(workers, "log", self.parent)
        worker = workers._Worker(cast(Any, None), 0)
        worker.childDataReceived(1, line[:40])
        worker.childDataReceived(2, b"a warning on stderr\n")
        worker.childDataReceived(1, line[40:] + b"\n")
        texts = [formatEvent(event) for event in self.received]
        self.assertEqual(texts, ["worker[0] a warning on stderr", "worker[0] " + record.line()])

    def test_session_record_crosses_with_its_fields(self) -> None:
        record = SessionRecord.of(ended_connect(), now=1000.25)
        [line] = self.worker_output(lambda log: log_record(log, record))
        relay_worker_line(self.parent, 7, line)
        [event] = self.received
        out = io.StringIO()
        JSONLinesObserver(out)(event)
        relayed = json.loads(out.getvalue())
        self.assertEqual(relayed["worker"], 7)
        self.assertEqual(relayed["text"], "worker[7] " + record.line())
        self.assertEqual(relayed["session"]["user"], "alice")
        self.assertEqual(relayed["session"]["up"], 517)

    def test_a_session_record_is_a_compact_line_the_text_log_writes_fast(self) -> None:
        record = SessionRecord.of(ended_connect(), now=1000.25)
        [line] = self.worker_output(lambda log: log_record(log, record))
        self.assertTrue(line.startswith(b"S{"), line)  # not Twisted's JSON of the event
        returned = relay_worker_line(self.parent, 7, line)
        [event] = self.received
        self.assertIs(returned, event)  # what the worker pool looks at
        self.assertEqual(event["log_namespace"], "socks5twist.service")
        # Twisted's own text observer and socks5twist.textlog write the same.
        expected = formatEventAsClassicLogText(event)
        self.assertEqual(
            textlog.SessionLineObserver(print, print, print, None).format(event), expected
        )
        assert expected is not None
        self.assertIn("] worker[7] " + record.line(), expected)

    def test_a_forged_session_record_is_text(self) -> None:
        # Anything a worker prints reaches the pipe: only a record with
        # exactly the record's fields is taken for one.
        record = SessionRecord.of(ended_connect(), now=1000.25)
        [real] = self.worker_output(lambda log: log_record(log, record))
        forged = real.replace(b'"session_line":"session ', b'"session_line":"x\\nsession ', 1)
        self.assertNotEqual(forged, real)
        for line in [b"S{", b'S{"session_line": "x"}', b"S[1]", b'S{"log_time": "now"}', forged]:
            self.received.clear()
            self.assertIsNone(relay_worker_line(self.parent, 5, line), line)
            [event] = self.received
            self.assertNotIn("session_line", event)

    def test_a_failure_keeps_its_traceback(self) -> None:
        def emit(log: Logger) -> None:
            try:
                raise ValueError("bad thing")
            except ValueError:
                log.failure("worker failed")

        [line] = self.worker_output(emit)
        relay_worker_line(self.parent, 9, line)
        text = formatEventAsClassicLogText(self.received[0])
        assert text is not None
        self.assertIn("worker[9] worker failed", text)
        self.assertIn("ValueError: bad thing", text)

    def test_a_line_that_is_no_event_is_logged_escaped(self) -> None:
        self.assertIsNone(relay_worker_line(self.parent, 5, b"twistd: error \x1b[2J\xff\r"))
        [event] = self.received
        text = formatEventAsClassicLogText(event)
        assert text is not None
        self.assertTrue(text.endswith("worker[5] twistd: error \\x1b[2J\\xff\n"), text)


class CountTests(SynchronousTestCase):
    def test_singular_only_for_one(self) -> None:
        self.assertEqual(count(1, "session"), "1 session")
        self.assertEqual(count(0, "session"), "0 sessions")
        self.assertEqual(count(2, "rule"), "2 rules")
