"""L{socks5twist.record}: a session's record and its log line."""

from __future__ import annotations

import collections
from typing import Any, cast

from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    capturedLogs,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    formatEventAsClassicLogText,
    jsonFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase

from socks5twist.codec import Address, AddressType, Command
from socks5twist.factory import SOCKS5ServerFactory
from socks5twist.record import SessionRecord, log_record
from socks5twist.session import SOCKS5ServerProtocol


class _Relay:
    kind = "splice"
    up = 517
    down = 6144


class _UDP:
    up_bytes = 60009
    down_bytes = 60008
    up_datagrams = 2
    down_datagrams = 3
    dropped = collections.Counter({"wrong source port": 3, "malformed": 1})

    def describe_drops(self) -> str:
        return "malformed:1,wrong source port:3"

    def describe_source(self) -> str:
        return "lock=unspecified source=127.0.0.1:5000"


def ended_connect() -> SOCKS5ServerProtocol:
    """A CONNECT session as it is when it ends, with every fact of its line set."""
    session = SOCKS5ServerProtocol()
    session.started = 1000.0
    session.client_text = "127.0.0.1:45066"
    session.user = "alice"
    session.command = Command.CONNECT
    session.destination = Address(AddressType.DOMAIN, "example.org", 443)
    session.connected_to = "93.184.215.14:443"
    session.bound = "10.0.0.5:51872"
    session.replies = [0]
    session.relay = cast(Any, _Relay())
    session.outcome = "closed"
    return session


class SessionRecordTests(SynchronousTestCase):
    def test_connect_line_is_the_documented_format(self) -> None:
        record = SessionRecord.of(ended_connect(), now=1000.2414)
        self.assertEqual(
            record.line(),
            "session 127.0.0.1:45066 user=alice CONNECT example.org:443 -> 93.184.215.14:443 "
            "bound=10.0.0.5:51872 reply=0x00 up=517 down=6144 duration=0.241s relay=splice "
            "(closed)",
        )

    def test_routed_line_names_the_route_after_the_relay(self) -> None:
        session = ended_connect()
        session.route = "socks5://127.0.0.1:1080>http://[::1]:3128"
        record = SessionRecord.of(session, now=1000.2414)
        self.assertTrue(
            record.line().endswith(
                "relay=splice route=socks5://127.0.0.1:1080>http://[::1]:3128 (closed)"
            ),
            record.line(),
        )
        self.assertEqual(record.fields()["route"], session.route)

    def test_udp_line_has_datagrams_and_drops(self) -> None:
        session = SOCKS5ServerProtocol()
        session.started = 10.0
        session.client_text = "127.0.0.1:52688"
        session.command = Command.UDP_ASSOCIATE
        session.destination = Address(AddressType.IPV4, "0.0.0.0", 0)
        session.bound = "127.0.0.1:41093"
        session.replies = [0]
        session.udp = cast(Any, _UDP())
        session.outcome = "closed"
        record = SessionRecord.of(session, now=14.005)
        self.assertEqual(
            record.line(),
            "session 127.0.0.1:52688 user=- UDP_ASSOCIATE 0.0.0.0:0 -> - bound=127.0.0.1:41093 "
            "reply=0x00 up=60009 down=60008 lock=unspecified source=127.0.0.1:5000 datagrams=2/3 "
            "dropped=malformed:1,wrong source port:3 "
            "duration=4.005s relay=- (closed)",
        )
        self.assertEqual(
            record.extra,
            " lock=unspecified source=127.0.0.1:5000 datagrams=2/3 "
            "dropped=malformed:1,wrong source port:3",
        )

    def test_session_ended_in_negotiation_shows_dashes(self) -> None:
        session = SOCKS5ServerProtocol()
        session.client_text = "[::1]:4000"
        session.outcome = "handshake timeout"
        line = SessionRecord.of(session, now=0.5).line()
        self.assertEqual(
            line,
            "session [::1]:4000 user=- - - -> - bound=- reply=- up=0 down=0 duration=0.500s "
            "relay=- (handshake timeout)",
        )

    def test_ipv6_destination_and_two_replies(self) -> None:
        session = ended_connect()
        session.command = Command.BIND
        session.destination = Address(AddressType.IPV6, "2001:db8::1", 80)
        session.replies = [0, 0]
        record = SessionRecord.of(session, now=1000.0)
        self.assertEqual(record.destination, "[2001:db8::1]:80")
        self.assertEqual(record.reply, "0x00/0x00")

    def test_user_cannot_add_a_field_and_outcome_stays_printable(self) -> None:
        session = ended_connect()
        session.user = "x user=admin\n"
        session.outcome = "connect failed: caf\u00e9\x1b[2J \\x41"
        record = SessionRecord.of(session, now=1000.0)
        self.assertEqual(record.user, "x\\x20user=admin\\x0a")
        # Escapes already in our own text stay single; the rest is escaped.
        self.assertEqual(record.outcome, "connect failed: caf\\u00e9\\x1b[2J \\x41")
        self.assertTrue(record.line().isascii() and record.line().isprintable())

    def test_fields_hold_the_line_and_every_fact(self) -> None:
        record = SessionRecord.of(ended_connect(), now=1000.25)
        fields = record.fields()
        self.assertEqual(fields["session_line"], record.line())
        self.assertEqual(
            {k: v for k, v in fields.items() if k != "session_line"},
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
                "extra": "",
                "datagrams": None,
                "dropped": None,
                "udp_source": None,
                "relay": "splice",
                "duration": 0.25,
                "outcome": "closed",
                "route": None,
                "limit": None,
                "gssapi": None,
            },
        )


class LogRecordTests(SynchronousTestCase):
    """L{log_record}: the session's event through Twisted's log, built cheaply."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.source = object()
        observer = cast(ILogObserver, self.events.append)
        self.logger = Logger("socks5twist.factory", self.source, observer)
        self.record = SessionRecord.of(ended_connect(), now=1000.25)

    def both_events(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The event of L{log_record}, and the one C{Logger.info} would emit."""
        log_record(self.logger, self.record)
        self.logger.info("{session_line}", **self.record.fields())
        ours, theirs = self.events
        return ours, theirs

    def test_event_is_the_one_logger_info_would_emit(self) -> None:
        ours, theirs = self.both_events()
        self.assertEqual(set(ours) - {"log_flattened"}, set(theirs))
        for key, value in theirs.items():
            if key != "log_time":
                self.assertEqual(ours[key], value, key)
        self.assertIs(ours["log_level"], LogLevel.info)
        self.assertIs(ours["log_source"], self.source)
        self.assertEqual(ours["session_line"], self.record.line())

    def test_log_file_line_is_identical_to_logger_info(self) -> None:
        ours, theirs = self.both_events()
        ours["log_time"] = theirs["log_time"]
        text = formatEventAsClassicLogText(ours)
        self.assertEqual(text, formatEventAsClassicLogText(theirs))
        self.assertEqual(formatEvent(ours), self.record.line())

    def test_json_log_keeps_the_line_and_every_field(self) -> None:
        ours, theirs = self.both_events()
        again = eventFromJSON(eventAsJSON(ours))
        self.assertEqual(formatEvent(again), self.record.line())
        self.assertEqual(
            again["log_flattened"], eventFromJSON(eventAsJSON(theirs))["log_flattened"]
        )
        for key, value in self.record.fields().items():
            self.assertEqual(again[key], value, key)

    def test_json_file_observer_writes_the_event(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            log_record(Logger(observer=jsonFileLogObserver(f)), self.record)
        with open(path) as f:
            written = eventFromJSON(f.read().strip("\x1e\n"))
        self.assertEqual(written["session_line"], self.record.line())
        self.assertEqual(written["up"], 517)

    def test_session_line_reaches_the_log_before_session_ended_returns(self) -> None:
        """Nothing waits in a buffer: a server that stops loses no line."""
        factory = SOCKS5ServerFactory(reactor=cast(Any, object()))
        session = ended_connect()
        with capturedLogs() as logs:
            factory.session_ended(session)
        [event] = [e for e in logs if "session_line" in e]
        self.assertEqual(formatEvent(event), event["session_line"])
        self.assertTrue(event["session_line"].startswith("session 127.0.0.1:45066 user=alice"))
        self.assertEqual(event["log_namespace"], "socks5twist.factory.SOCKS5ServerFactory")
        self.assertIs(event["log_source"], factory)
