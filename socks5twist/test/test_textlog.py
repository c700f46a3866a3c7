"""
socks5twist.textlog: session lines written to twistd's text log as Twisted's
own text observer writes them, byte for byte, flushed once per reactor turn.
"""

from __future__ import annotations

import io
import os
import time

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.logger import (
    Logger,
    LogPublisher,
    formatEventAsClassicLogText,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from socks5twist import textlog
from socks5twist.record import SessionRecord, log_record
from socks5twist.service import SOCKS5Service
from socks5twist.twistedinternals import log_observers

from .helpers import NO_AUTH_GREETING, connect_request, make_session

NAMESPACE = "socks5twist.factory"


def record(outcome: str = "closed by client") -> SessionRecord:
    return SessionRecord(
        client="127.0.0.1:5555",
        user="alice",
        command="CONNECT",
        destination="example.org:80",
        connected="127.0.0.2:80",
        bound="127.0.0.1:4444",
        reply="00",
        up=100,
        down=2000,
        datagrams=None,
        dropped=None,
        source=None,
        duration=0.012,
        relay="splice",
        outcome=outcome,
    )


class CountingFile(io.StringIO):
    """A text file that counts its flushes."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class SessionLineTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.publisher = LogPublisher()
        self.log = Logger(namespace=NAMESPACE, observer=self.publisher)

    def both(
        self, timeFormat: str | None = None
    ) -> tuple[io.StringIO, CountingFile, list[textlog.SessionLineObserver]]:
        """
        A publisher with Twisted's text observer installed twice, one of them
        then replaced: what each writes can be compared.
        """
        plain = io.StringIO()
        ours = CountingFile()
        kwargs = {} if timeFormat is None else {"timeFormat": timeFormat}
        self.publisher.addObserver(textFileLogObserver(plain, **kwargs))
        replaced = textFileLogObserver(ours, **kwargs)
        self.publisher.addObserver(replaced)
        installed = textlog.install(self.publisher, self.clock, NAMESPACE)
        # The first observer is a candidate too: leave only the second one's
        # stand-in, so that Twisted's own text stays to compare with.
        for observer in installed:
            if observer.original is not replaced:
                textlog.uninstall(self.publisher, [observer])
        return plain, ours, [o for o in installed if o.original is replaced]

    def in_zone(self, zone: str) -> None:
        old = os.environ.get("TZ")
        os.environ["TZ"] = zone
        time.tzset()

        def restore() -> None:
            if old is None:
                del os.environ["TZ"]
            else:
                os.environ["TZ"] = old
            time.tzset()

        self.addCleanup(restore)

    def test_the_same_bytes_as_twisteds_text_observer(self) -> None:
        for zone in ["UTC0", "EST5EDT,M3.2.0,M11.1.0", "IST-5:30"]:
            self.in_zone(zone)
            self.publisher = LogPublisher()
            self.log = Logger(namespace=NAMESPACE, observer=self.publisher)
            plain, ours, installed = self.both()
            self.assertEqual(len(installed), 1, zone)
            for i in range(40):
                log_record(self.log, record(f"closed by client {i}"))
                self.clock.advance(0)
                time.sleep(0.03)  # cross at least one second boundary
            self.log.info("other {what}", what="event")
            self.log.failure("with a traceback", Failure(ValueError("boom")))
            self.assertEqual(ours.getvalue(), plain.getvalue(), zone)
            lines = ours.getvalue().splitlines()
            self.assertIn(f" [{NAMESPACE}#info] session 127.0.0.1:5555 user=alice", lines[0])
            self.assertIn("ValueError: boom", ours.getvalue())

    def test_the_lines_of_a_reactor_turn_are_written_once(self) -> None:
        plain, ours, _ = self.both()
        before = ours.flushes
        for _ in range(5):
            log_record(self.log, record())
        self.assertEqual((ours.getvalue(), ours.flushes), ("", before))  # kept for now
        self.clock.advance(0)
        self.assertEqual(ours.flushes, before + 1)
        self.assertEqual(ours.getvalue().count("\n"), 5)
        self.assertEqual(ours.getvalue(), plain.getvalue())

    def test_another_event_comes_after_the_lines_kept(self) -> None:
        plain, ours, _ = self.both()
        log_record(self.log, record("first"))
        self.log.info("then another event")
        log_record(self.log, record("last"))
        self.clock.advance(0)
        self.assertEqual(ours.getvalue(), plain.getvalue())
        lines = ours.getvalue().splitlines()
        ends = ["(first)", "another event", "(last)"]
        self.assertEqual(len(lines), 3)
        self.assertTrue(all(line.endswith(end) for line, end in zip(lines, ends, strict=True)))

    def test_at_most_max_pending_is_kept(self) -> None:
        plain, ours, _ = self.both()
        line_size = len(plain.getvalue())
        log_record(self.log, record())
        line_size = len(plain.getvalue()) - line_size
        for _ in range(textlog.MAX_PENDING // line_size + 1):
            log_record(self.log, record())
        self.assertGreaterEqual(len(ours.getvalue()), textlog.MAX_PENDING)
        self.clock.advance(0)
        self.assertEqual(ours.getvalue(), plain.getvalue())

    def test_uninstall_flushes_and_restores(self) -> None:
        plain, ours, installed = self.both()
        stand_in = installed[0]
        log_record(self.log, record())
        textlog.uninstall(self.publisher, installed)
        self.assertNotIn(stand_in, log_observers(self.publisher))
        self.assertIn(stand_in.original, log_observers(self.publisher))
        self.assertEqual(ours.getvalue(), plain.getvalue())
        self.assertGreaterEqual(ours.flushes, 1)

    def test_other_formats_are_left_alone(self) -> None:
        json_observer = jsonFileLogObserver(io.StringIO())
        custom = textFileLogObserver(io.StringIO(), timeFormat="%H:%M")
        untimed = textFileLogObserver(io.StringIO(), timeFormat=None)

        def plain_function(event: object) -> None:
            pass

        for observer in [json_observer, custom, untimed, plain_function]:
            self.publisher.addObserver(observer)  # type: ignore[arg-type]
        self.assertEqual(textlog.install(self.publisher, self.clock, NAMESPACE), [])
        self.assertEqual(
            log_observers(self.publisher), [json_observer, custom, untimed, plain_function]
        )

    def test_format_agrees_with_twisteds_for_the_logged_event(self) -> None:
        events: list[dict[str, object]] = []
        self.publisher.addObserver(events.append)  # type: ignore[arg-type]
        log_record(self.log, record())
        stand_in = textlog.SessionLineObserver(
            events.append, io.StringIO().write, lambda: None, self.clock
        )
        self.assertEqual(stand_in.format(events[0]), formatEventAsClassicLogText(events[0]))


class ServiceTests(TestCase):
    """C{twistd socks5}'s service stands in for twistd's text observer while it runs."""

    def test_a_session_line_through_the_running_service(self) -> None:
        out = io.StringIO()
        observer = textFileLogObserver(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        s = make_session()
        service = SOCKS5Service(s.factory, shutdown_grace=0)
        service.own_text_log = True
        service.startService()
        [stand_in] = [
            o
            for o in log_observers(globalLogPublisher)
            if isinstance(o, textlog.SessionLineObserver) and o.original is observer
        ]
        s.send(NO_AUTH_GREETING + connect_request("10.9.8.7", 80))
        s.remote()
        s.protocol.connectionLost(error.ConnectionDone())
        self.assertNotIn("session ", out.getvalue())  # kept until the turn ends
        s.reactor.advance(0)
        [line] = [x for x in out.getvalue().splitlines() if " session " in x]
        self.assertRegex(
            line,
            r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
            r"\[socks5twist\.factory\.SOCKS5ServerFactory#info\] "
            r"session 127\.0\.0\.1:\d+ user=- CONNECT 10\.9\.8\.7:80 -> ",
        )
        service.stopService()
        s.reactor.advance(5)
        self.assertNotIn(stand_in, log_observers(globalLogPublisher))
        self.assertIn(observer, log_observers(globalLogPublisher))
