"""L{socks5twist.accesslog.AccessLog}: session lines in a file of their own."""

from __future__ import annotations

import os
import re

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from socks5twist import accesslog
from socks5twist.accesslog import AccessLog

from .helpers import connect_request, make_session


class AccessLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.path = self.mktemp()
        self.log = AccessLog(self.path, self.clock)
        self.addCleanup(self.log.close)

    def read(self) -> list[str]:
        with open(self.path, encoding="utf-8") as f:
            return f.read().splitlines()

    def test_lines_are_written_in_one_batch_after_the_interval(self) -> None:
        self.log.write("first")
        self.log.write("second")
        self.assertEqual(self.read(), [])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(accesslog.FLUSH_INTERVAL)
        lines = self.read()
        self.assertEqual([line.split(" ", 1)[1] for line in lines], ["first", "second"])
        for line in lines:
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_big_batch_is_written_at_once(self) -> None:
        count = accesslog.MAX_PENDING // 1000 + 10
        for _ in range(count):
            self.log.write("x" * 1000)
        written = len(self.read())
        self.assertGreater(written, count - 50)  # without waiting for the timer
        self.clock.advance(accesslog.FLUSH_INTERVAL)
        self.assertEqual(len(self.read()), count)

    def test_appends_to_an_existing_file(self) -> None:
        self.log.close()
        with open(self.path, "w") as f:
            f.write("earlier\n")
        log = AccessLog(self.path, self.clock)
        log.write("later")
        log.close()
        self.assertEqual(self.read()[0], "earlier")
        self.assertTrue(self.read()[1].endswith(" later"))

    def test_reopen_follows_a_rotation(self) -> None:
        self.log.write("before")
        os.rename(self.path, self.path + ".1")
        self.log.reopen()  # flushes to the old file first
        self.log.write("after")
        self.log.flush()
        with open(self.path + ".1") as f:
            self.assertTrue(f.read().endswith(" before\n"))
        self.assertEqual(len(self.read()), 1)
        self.assertTrue(self.read()[0].endswith(" after"))

    def test_close_flushes_and_later_lines_are_dropped(self) -> None:
        self.log.write("last")
        self.log.close()
        self.log.write("too late")
        self.clock.advance(1)
        self.assertEqual(len(self.read()), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unopenable_path_raises(self) -> None:
        with self.assertRaises(OSError):
            AccessLog(os.path.join(self.mktemp(), "missing-directory", "log"), self.clock)

    def test_a_failing_write_is_reported_once_and_memory_stays_bounded(self) -> None:
        if not os.path.exists("/dev/full"):
            self.skipTest("no /dev/full here")
        log = AccessLog("/dev/full", self.clock)
        self.addCleanup(log.close)
        with capturedLogs() as events:
            for _ in range(3):
                log.write("lost")
                self.clock.advance(1)
        errors = [e for e in events if e.get("log_level") is LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("No space left", errors[0]["error"])
        self.assertEqual(log._pending, [])


class FactoryTests(SynchronousTestCase):
    def test_session_lines_go_to_the_access_log_not_the_log(self) -> None:
        path = self.mktemp()
        s = make_session()
        s.factory.access_log = AccessLog(path, s.reactor)
        with capturedLogs() as events:
            s.send(b"\x05\x01\x00" + connect_request("203.0.113.9", 80))
            s.reactor.advance(0)
            s.remote()
            s.protocol.connectionLost()
        s.factory.access_log.close()
        with open(path) as f:
            (line,) = f.read().splitlines()
        self.assertTrue(
            re.search(r" session 127\.0\.0\.1:40000 user=- CONNECT 203\.0\.113\.9:80 ", line),
            line,
        )
        self.assertEqual([e for e in events if "session_line" in e], [])
