"""
The drain deadline: once one side of a tunnel has closed, a peer that takes
nothing of what is left for it ends the tunnel after the drain timeout,
and one that keeps taking, however slowly, never does.

The stream relay is driven through the in-memory tunnels of
L{socks5twist.test.test_stream_relay} on a fake clock; what is left for a
side is what its fake transport holds (L{unsent} reads a real transport's
buffer and socket; test_twistedinternals pins that).  The splice relay runs
on the real reactor with real sockets, on the reactor and in the relay
thread, with a short timeout.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from socks5twist import SOCKS5ServerFactory
from socks5twist import relay as relay_module
from socks5twist.drain import CHECKS, DEFAULT_DRAIN_TIMEOUT, Drain, Verdict, kernel_unsent
from socks5twist.options import Options
from socks5twist.relay import Side
from socks5twist.splice import SpliceRelay

from .splicing import Keep, read, start, turn, until
from .test_stream_relay import REPLIES, Tunnel, open_tunnel, pattern

STUCK_CLIENT = "client stopped reading after the destination closed"
STUCK_DESTINATION = "destination stopped reading after the client closed"


class DrainArithmeticTests(SynchronousTestCase):
    def test_stuck_after_a_whole_timeout_of_checks_without_progress(self) -> None:
        drain = Drain(100)
        verdicts = [drain.check(100, closing=False) for _ in range(CHECKS)]
        self.assertEqual(verdicts, [Verdict.MOVING] * (CHECKS - 1) + [Verdict.STUCK])

    def test_any_progress_starts_the_clock_again(self) -> None:
        drain = Drain(100)
        for _ in range(CHECKS - 1):
            self.assertIs(drain.check(100, closing=False), Verdict.MOVING)
        self.assertIs(drain.check(99, closing=False), Verdict.MOVING)
        for _ in range(CHECKS - 1):
            self.assertIs(drain.check(99, closing=False), Verdict.MOVING)
        self.assertIs(drain.check(99, closing=False), Verdict.STUCK)

    def test_nothing_left_ends_the_watch_unless_closing(self) -> None:
        self.assertIs(Drain(5).check(0, closing=False), Verdict.EMPTY)
        closing = Drain(5)
        verdicts = [closing.check(0, closing=True) for _ in range(CHECKS + 1)]
        # A closing side that has everything yet never closes holds on too.
        self.assertEqual(verdicts, [Verdict.MOVING] * (CHECKS) + [Verdict.STUCK])


class KernelUnsentTests(SynchronousTestCase):
    def test_what_the_peer_has_not_taken(self) -> None:
        """
        TCP: what is not acknowledged (a peer with room in its buffer takes
        everything, read or not); a Unix socket: what the peer has not read.
        """
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = socket.create_connection(listener.getsockname())
        self.addCleanup(sender.close)
        receiver = listener.accept()[0]
        self.addCleanup(receiver.close)
        sender.sendall(b"x" * 1000)
        for _ in range(200):
            if kernel_unsent(sender.fileno()) == 0:
                break
            time.sleep(0.01)
        self.assertEqual(kernel_unsent(sender.fileno()), 0)
        sender.setblocking(False)
        sent = 0
        try:
            while sent < 64 << 20:
                sent += sender.send(b"x" * (1 << 16))
        except BlockingIOError:
            pass
        self.assertGreater(kernel_unsent(sender.fileno()), 0)  # the window is shut
        mine, theirs = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(theirs.close)
        mine.sendall(b"y" * 100)
        self.assertGreater(kernel_unsent(mine.fileno()), 0)
        theirs.recv(100)
        self.assertEqual(kernel_unsent(mine.fileno()), 0)
        closed = socket.socket()
        closed.close()
        self.assertEqual(kernel_unsent(closed.fileno()), 0)


class ConfigurationTests(SynchronousTestCase):
    def test_on_by_default_off_with_zero_and_never_negative(self) -> None:
        self.assertEqual(SOCKS5ServerFactory().drain_timeout, DEFAULT_DRAIN_TIMEOUT)
        self.assertEqual(DEFAULT_DRAIN_TIMEOUT, 60.0)
        self.assertEqual(SOCKS5ServerFactory(drain_timeout=0).drain_timeout, 0)
        with self.assertRaisesRegex(ValueError, "drain_timeout must be 0 or more"):
            SOCKS5ServerFactory(drain_timeout=-1)

    def test_the_option(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["drain-timeout"], 60.0)
        options = Options()
        options.parseOptions(["--drain-timeout", "0"])
        self.assertEqual(options["drain-timeout"], 0.0)
        with self.assertRaisesRegex(usage.UsageError, "--drain-timeout takes a number"):
            Options().parseOptions(["--drain-timeout", "soon"])


def _left_in_fake(transport: Any) -> tuple[int, int]:
    """What a fake TCPEnd holds, as L{unsent} reads it from a real transport."""
    return transport.buffered, -1


def drained_tunnel(test: SynchronousTestCase, **options: Any) -> Tunnel:
    test.patch(relay_module, "unsent", _left_in_fake)
    return open_tunnel(test, **options)


def advance(t: Tunnel, seconds: float, step: float = 1.0) -> None:
    """Let C{seconds} pass, moving bytes at each C{step}."""
    for _ in range(round(seconds / step)):
        t.reactor.advance(step)
        t.settle()


class StreamRelayTests(SynchronousTestCase):
    def test_a_client_that_stops_reading_after_the_destination_closed_is_reset(self) -> None:
        t = drained_tunnel(self, drain_timeout=60)
        t.client_end.pauseProducing()  # the client reads nothing from here on
        t.destination_end.write(pattern(200, 3))
        t.destination_end.loseWriteConnection()
        t.settle()
        self.assertTrue(t.proxy_client_end.write_closing, "the destination's EOF was not seen")
        advance(t, 59)
        self.assertFalse(t.closed(), "cut before the drain timeout")
        advance(t, 16)  # (checked every timeout / CHECKS seconds)
        self.assertTrue(t.closed(), "a client that never reads holds the session")
        self.assertEqual(t.session.outcome, STUCK_CLIENT)
        assert t.client.lost is not None and t.destination.lost is not None
        t.client.lost.trap(error.ConnectionLost)  # a reset, not a clean close
        [line] = t.session_lines()
        self.assertIn(f"({STUCK_CLIENT})", line["session_line"])
        self.assertEqual(t.reactor.getDelayedCalls(), [])

    def test_a_destination_that_stops_reading_after_the_client_closed_is_reset(self) -> None:
        t = drained_tunnel(self, drain_timeout=10)
        t.destination_end.pauseProducing()
        t.client_end.write(b"request the destination never reads")
        t.client_end.loseWriteConnection()
        t.settle()
        self.assertTrue(t.proxy_remote_end.write_closing)
        advance(t, 9)
        self.assertFalse(t.closed())
        advance(t, 3)
        self.assertTrue(t.closed())
        self.assertEqual(t.session.outcome, STUCK_DESTINATION)
        assert t.destination.lost is not None
        t.destination.lost.trap(error.ConnectionLost)

    def test_a_destination_reset_with_a_client_that_reads_nothing(self) -> None:
        """The destination is gone: the close waits on the client, for the timeout only."""
        t = drained_tunnel(self, drain_timeout=60)
        t.client_end.pauseProducing()
        t.destination_end.write(pattern(200, 5))
        t.settle()
        t.destination_end.abortConnection()
        t.settle()
        self.assertTrue(t.proxy_remote_end.disconnected)
        self.assertFalse(t.closed())
        advance(t, 76)
        self.assertTrue(t.closed())
        self.assertEqual(t.session.outcome, STUCK_CLIENT)

    def test_a_slow_client_that_keeps_reading_is_never_cut(self) -> None:
        t = drained_tunnel(self, drain_timeout=60)
        t.client_end.pauseProducing()
        data = pattern(200, 7)
        t.destination_end.write(data)
        t.destination_end.loseWriteConnection()
        t.settle()
        t.client_end.read_size = 1
        client_pump = t.pumps[0]
        for _ in range(150):  # a byte every 50 seconds, for two hours
            advance(t, 50, step=10)
            t.client_end.resumeProducing()
            client_pump.pump()
            t.client_end.pauseProducing()
        self.assertFalse(t.closed(), "a client that keeps reading was cut")
        self.assertEqual(t.client.received, REPLIES + data[:150])
        t.client_end.read_size = 1 << 16
        t.client_end.resumeProducing()
        t.settle()
        self.assertEqual(t.client.received, REPLIES + data)
        self.assertTrue(t.client.eof)
        t.client_end.loseWriteConnection()
        t.settle()
        self.assertTrue(t.closed())
        self.assertEqual(t.session.outcome, "closed")

    def test_zero_never_cuts(self) -> None:
        t = drained_tunnel(self, drain_timeout=0)
        t.client_end.pauseProducing()
        t.destination_end.write(pattern(200, 9))
        t.destination_end.loseWriteConnection()
        t.settle()
        advance(t, 86400, step=3600)
        self.assertFalse(t.closed())
        self.assertEqual(t.reactor.getDelayedCalls(), [])

    def test_no_timer_while_both_sides_are_open_and_none_once_all_is_taken(self) -> None:
        """
        Cheap: a busy tunnel has no timer at all; after an EOF, the first
        check that finds everything taken is the last (the tunnel stays
        half open: the client may go on sending).
        """
        t = drained_tunnel(self, drain_timeout=60)
        for i in range(50):
            t.client_end.write(pattern(5000, i + 1))
            t.destination_end.write(pattern(5000, i + 2))
            t.settle()
            self.assertEqual(t.reactor.getDelayedCalls(), [])
        t.destination_end.write(b"last words")
        t.destination_end.loseWriteConnection()
        t.settle()
        self.assertTrue(t.client.eof)
        t.reactor.advance(60 / CHECKS)
        self.assertEqual(t.reactor.getDelayedCalls(), [])
        advance(t, 600, step=60)
        self.assertFalse(t.closed(), "a half-closed tunnel whose client took everything")
        t.client_end.write(b"more")
        t.settle()
        self.assertTrue(t.destination.received.endswith(b"more"))


class _Spy:
    """A transport that notes how it was asked to close."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def loseWriteConnection(self) -> None:
        self.calls.append("loseWriteConnection")

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")


class ResetTests(SynchronousTestCase):
    def test_a_reset_is_not_preceded_or_followed_by_a_clean_close(self) -> None:
        """
        Twisted closes a transport whose write half is shut cleanly, at once,
        when asked to close: a reset asked for after that never happens, and
        the kernel goes on sending to a client that reads nothing.
        """
        client, remote = _Spy(), _Spy()
        relay = relay_module.StreamRelay(MemoryReactorClock(), client, remote, drain_timeout=60)  # type: ignore[arg-type]
        relay.start()
        relay.eof(Side.REMOTE)
        relay.abort()
        relay.close()  # (a session's close after its abort)
        self.assertEqual(client.calls, ["loseWriteConnection", "abortConnection"])
        self.assertEqual(remote.calls, ["abortConnection"])


# -- the splice relay, on the real reactor -------------------------------------

TIMEOUT = 0.4  # the drain timeout of these tests, in seconds
WINDOW = 4096  # the client's SO_RCVBUF: its window shuts after a few KiB


@defer.inlineCallbacks
def small_window_tunnel(test: TestCase, move: bool, timeout: float = TIMEOUT) -> Any:
    """
    A started splice tunnel (moved to the relay thread if C{move}) whose
    client has a small receive buffer: (client socket, relay, remote socket,
    the sides L{SpliceRelay} reported as stuck, the client's protocol).
    """
    connected: list[Keep] = []
    factory = protocol.Factory.forProtocol(lambda: Keep(connected))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
    test.addCleanup(port.stopListening)
    client = socket.socket()
    test.addCleanup(client.close)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WINDOW)
    client.connect(("127.0.0.1", port.getHost().port))  # type: ignore[attr-defined]
    yield until(lambda: connected, "the connection")
    [proto] = connected
    mine, theirs = socket.socketpair()
    mine.setblocking(False)
    theirs.setblocking(False)
    test.addCleanup(theirs.close)
    stuck: list[Side] = []
    relay = SpliceRelay(
        reactor,
        proto.transport,  # type: ignore[arg-type]
        mine,
        to_client=b"hi",
        drain_timeout=timeout,
        on_drain=stuck.append,
    )
    yield start(client, relay, move)
    return client, relay, theirs, stuck, proto


@defer.inlineCallbacks
def send_all(sock: socket.socket, data: bytes) -> Any:
    """Send C{data} on a non-blocking socket, letting the reactor run."""
    for _ in range(2000):
        try:
            data = data[sock.send(data) :]
        except BlockingIOError:
            pass
        if not data:
            return
        yield turn()
    raise AssertionError("the relay stopped taking bytes")


def read_until_reset(sock: socket.socket) -> int:
    """Read what a reset socket still holds; the bytes read before the reset."""
    sock.setblocking(True)
    sock.settimeout(5)
    got = 0
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            return got
        if not chunk:
            raise AssertionError(f"a clean EOF after {got} bytes, not a reset")
        got += len(chunk)


class SpliceRelayTests(TestCase):
    @defer.inlineCallbacks
    def test_a_client_that_stops_reading_after_the_remote_closed_is_reset(self) -> Any:
        for move in (False, True):
            client, _relay, remote, stuck, proto = yield small_window_tunnel(self, move)
            # Far past the client's window, and yet all in the proxy's socket
            # (loopback's large segments make its send buffer large): the
            # relay reads the remote's EOF (it reads nothing while the client's
            # socket is full, the EOF included).
            total = 128 * 1024
            yield send_all(remote, b"x" * total)
            remote.shutdown(socket.SHUT_WR)
            closed_at = time.monotonic()
            yield until(lambda: proto.lost is not None, "the tunnel to end")  # noqa: B023
            self.assertGreaterEqual(time.monotonic() - closed_at, TIMEOUT)
            self.assertEqual(stuck, [Side.CLIENT])
            assert proto.lost is not None
            proto.lost.trap(error.ConnectionAborted)
            self.assertLess(read_until_reset(client), total)

    @defer.inlineCallbacks
    def test_a_remote_that_stops_reading_after_the_client_closed_is_reset(self) -> Any:
        client, _relay, _remote, stuck, proto = yield small_window_tunnel(self, True)
        client.setblocking(False)
        yield send_all(client, b"y" * (64 * 1024))  # (all in the remote's socket, unread)
        client.shutdown(socket.SHUT_WR)
        yield until(lambda: proto.lost is not None, "the tunnel to end")
        self.assertEqual(stuck, [Side.REMOTE])
        with self.assertRaises(ConnectionResetError):
            while client.recv(1 << 16):
                pass

    @defer.inlineCallbacks
    def test_a_slow_client_that_keeps_reading_is_never_cut(self) -> Any:
        for move in (False, True):
            client, relay, remote, stuck, proto = yield small_window_tunnel(self, move)
            total = 128 * 1024
            yield send_all(remote, b"z" * total)
            remote.shutdown(socket.SHUT_WR)
            got = b""
            started = time.monotonic()
            for _ in range(100):  # 16 KiB every TIMEOUT / 3 seconds
                deadline = time.monotonic() + TIMEOUT / 3
                while time.monotonic() < deadline:
                    yield turn()
                if not move:  # (the owner's: read only while the reactor owns it)
                    self.assertTrue(relay._down.eof, "the remote's EOF came after the bytes")
                chunk = yield read(client, 16 * 1024)
                got += chunk
                if len(chunk) < 16 * 1024:
                    break
            self.assertGreater(time.monotonic() - started, 2 * TIMEOUT, "not slow enough")
            self.assertEqual(got, b"z" * total, "cut while it kept reading")
            self.assertEqual(stuck, [])
            client.shutdown(socket.SHUT_WR)
            yield until(lambda: proto.lost is not None, "the tunnel to end")  # noqa: B023
            assert proto.lost is not None
            proto.lost.trap(error.ConnectionDone)

    @defer.inlineCallbacks
    def test_a_pending_check_does_not_keep_an_idle_relay_thread(self) -> Any:
        """
        A check due long after its tunnel ended (a minute's timeout) is
        dropped with the tunnel: the relay thread lingers out as usual.
        """
        client, relay, remote, stuck, proto = yield small_window_tunnel(self, True, timeout=60)
        total = 128 * 1024
        yield send_all(remote, b"w" * total)
        remote.shutdown(socket.SHUT_WR)
        yield until(lambda: relay.down == total, "the bytes in the client's socket")
        # (The EOF is read, and most of the bytes are still the kernel's:
        # the check, in 15 seconds, is on the thread's timers.)
        got = yield read(client, total + 1)
        self.assertEqual(len(got), total)
        client.close()
        yield until(lambda: proto.lost is not None, "the tunnel to end")
        thread = relay.thread
        assert thread is not None
        yield until(lambda: not thread.alive, "the relay thread to linger out")
        self.assertEqual(stuck, [])
