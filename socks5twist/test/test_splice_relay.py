"""
The splice relay as the session sees it (the rest of the L{Relay
<socks5twist.tunnel.Relay>} surface: bytes and an EOF the session might
pass on), and its ownership protocol where it can be broken from outside:
the reactor thread reads nothing of a tunnel the relay thread owns, and no
relay thread starts that nothing would stop and join.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, cast

from twisted.internet import defer, error, reactor
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from socks5twist.relay import Side
from socks5twist.splice import SpliceRelay
from socks5twist.splice.shared import ReactorState, state_for
from socks5twist.splice.thread import RelayThread

from .splicing import connections, make_tunnels, read, start, until


def _logged(test: TestCase) -> list[LogEvent]:
    seen: list[LogEvent] = []
    observer = cast(ILogObserver, seen.append)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return seen


class SurfaceTests(TestCase):
    @defer.inlineCallbacks
    def test_bytes_from_the_session_abort_the_tunnel_with_one_line(self) -> Any:
        """
        The relay reads the client's socket itself: bytes handed to it by
        the session cannot be put in order with what it relayed, so the
        tunnel is reset (both peers see it) rather than silently corrupted.
        """
        for move in (False, True):
            yield self._fed_bytes(move)

    @defer.inlineCallbacks
    def _fed_bytes(self, move: bool) -> Any:
        seen = _logged(self)
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, move)
        client.sendall(b"in order")
        self.assertEqual((yield read(remote, 8)), b"in order")
        relay.from_client(b"late")
        yield until(lambda: proto.lost is not None, "the tunnel to end")
        proto.lost.trap(error.ConnectionAborted)
        with self.assertRaises(ConnectionResetError):
            client.recv(1)
        self.assertEqual((yield read(remote, 4)), b"", "nothing more reached the remote")
        lines = [formatEvent(e) for e in seen if e.get("log_level") is LogLevel.error]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("4 bytes", lines[0])

    @defer.inlineCallbacks
    def test_nothing_from_the_session_changes_nothing(self) -> Any:
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, False)
        relay.from_client(b"")
        relay.eof()
        client.sendall(b"up")
        self.assertEqual((yield read(remote, 2)), b"up")
        remote.sendall(b"down")
        self.assertEqual((yield read(client, 4)), b"down")
        self.assertIsNone(proto.lost)
        relay.close()
        yield until(lambda: proto.lost is not None, "connectionLost")

    @defer.inlineCallbacks
    def test_an_eof_the_session_saw_reaches_the_remote_after_the_early_bytes(self) -> Any:
        """
        The client sends bytes and its EOF while its request is under way;
        the session (here, Twisted reading for the protocol) has both.  The
        relay takes the early bytes to send on, and the EOF it finds in the
        socket itself: eof() does nothing, and the remote sees the bytes,
        then the EOF, while its own direction still flows.
        """
        [(client, proto)] = yield connections(self, 1)
        client.sendall(b"early")
        client.shutdown(socket.SHUT_WR)
        yield until(lambda: proto.read_lost == 1, "Twisted to read the EOF")
        early = b"".join(proto.received)
        self.assertEqual(early, b"early")
        mine, remote = socket.socketpair()
        mine.setblocking(False)
        remote.setblocking(False)
        self.addCleanup(remote.close)
        relay = SpliceRelay(reactor, proto.transport, mine, to_client=b"hi", to_remote=early)  # type: ignore[arg-type]
        yield start(client, relay, False)
        relay.eof()
        self.assertEqual((yield read(remote, 6)), b"early")
        self.assertEqual((yield read(remote, 1)), b"", "the client's EOF, passed on")
        remote.sendall(b"answer")
        self.assertEqual((yield read(client, 6)), b"answer")
        remote.shutdown(socket.SHUT_WR)
        self.assertEqual((yield read(client, 1)), b"")
        yield until(lambda: proto.lost is not None, "connectionLost")
        assert proto.lost is not None
        proto.lost.trap(error.ConnectionDone)
        self.assertEqual((relay.up, relay.down), (5, 6))


class OwnershipTests(TestCase):
    @defer.inlineCallbacks
    def test_the_reactor_reads_nothing_of_a_tunnel_the_thread_owns(self) -> Any:
        """
        While the relay thread owns a tunnel, every call the session may make
        from the reactor thread (and a second move) goes through the lock or
        the queue: none reads the owner's fields.
        """
        touched: list[tuple[str, int]] = []

        class Watched(SpliceRelay):
            __slots__ = ()

            def __getattribute__(self, name: str) -> Any:
                if name in ("finished", "idled", "active_at", "_client", "_remote"):
                    touched.append((name, threading.get_ident()))
                return super().__getattribute__(name)

        [(client, proto)] = yield connections(self, 1)
        mine, remote = socket.socketpair()
        mine.setblocking(False)
        remote.setblocking(False)
        self.addCleanup(remote.close)
        relay = Watched(reactor, proto.transport, mine, to_client=b"hi")  # type: ignore[arg-type]
        yield start(client, relay, True)
        thread = relay.thread
        assert thread is not None
        yield until(lambda: len(thread.ends) == 2, "the relay thread to watch the sockets")
        here = threading.get_ident()
        del touched[:]
        relay.move_to_thread()
        relay.from_client(b"")
        relay.eof()
        self.assertEqual((relay.up, relay.down), (0, 0))
        relay.lost(Side.REMOTE)
        self.assertEqual([name for name, ident in touched if ident == here], [])
        yield until(lambda: proto.lost is not None, "connectionLost")

    def test_no_relay_thread_starts_once_the_reactor_has_shut_down(self) -> None:
        """
        The reactor joins its relay thread as it shuts down; a tunnel that
        would move after that (the reactor still turns once) stays where it
        is: a thread started then would never be stopped nor joined.
        """
        fake = MemoryReactor()
        state = state_for(fake)
        for trigger, args, kwargs in fake.triggers["during"]["shutdown"]:
            trigger(*args, **kwargs)
        started: list[RelayThread] = []
        real_init = RelayThread.__init__

        def noting(thread: RelayThread, *args: Any) -> None:
            real_init(thread, *args)
            started.append(thread)

        self.patch(RelayThread, "__init__", noting)

        def stop_started() -> None:
            for thread in started:
                thread.stop()

        self.addCleanup(stop_started)
        client, client_peer = socket.socketpair()
        remote, remote_peer = socket.socketpair()
        for sock in (client_peer, remote_peer):
            self.addCleanup(sock.close)
        relay = SpliceRelay(fake, client, remote)  # type: ignore[arg-type]
        relay.start()
        relay.move_to_thread()
        self.assertEqual(started, [])
        self.assertIsNone(relay.thread)
        self.assertIs(state_for(fake), state, "one state, shut, until the reactor goes")
        client_peer.sendall(b"x")
        relay.read_on_reactor(relay._client)  # (the fake reactor does not poll)
        self.assertEqual(remote_peer.recv(1), b"x")
        relay.close()
        self.assertTrue(relay.finished)
        self.assertEqual(client_peer.recv(1), b"")

    @defer.inlineCallbacks
    def test_a_thread_that_ends_as_a_tunnel_moves_ends_it_on_the_reactor(self) -> Any:
        """
        The hand-over is one step under the lock: a relay thread that ends
        (here by a bug in its loop) just as a tunnel is handed to it ends
        that tunnel as its owner, and the transports are closed in the
        reactor thread, as always.
        """
        enter = ReactorState.enter

        def then_the_thread_ends(state: ReactorState, relay: SpliceRelay) -> Any:
            entered = enter(state, relay)  # type: ignore[func-returns-value]
            thread = state.thread
            assert thread is not None
            thread.call(lambda: setattr(thread, "_quitting", True))  # (a bug ends its loop)
            thread._thread.join(5)
            return entered

        self.patch(ReactorState, "enter", then_the_thread_ends)
        [(client, relay, remote, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, True)
        yield until(lambda: proto.lost is not None, "connectionLost")
        proto.lost.trap(error.ConnectionAborted)
        self.assertEqual(proto.lost_in, threading.get_ident())
        self.assertEqual((yield read(remote, 1)), b"")

    @defer.inlineCallbacks
    def test_shutdown_joins_a_thread_that_is_ending_already(self) -> Any:
        """
        A relay thread whose loop ended (a bug) ends its tunnels on its way
        out; the reactor, shutting down meanwhile, joins it all the same and
        closes those transports before it stops.
        """
        [(client, relay, _, proto)] = yield make_tunnels(self, 1)
        yield start(client, relay, True)
        thread = relay.thread
        assert thread is not None
        yield until(lambda: len(thread.ends) == 2, "the relay thread to watch the sockets")
        leaving, gate = threading.Event(), threading.Event()
        self.addCleanup(gate.set)
        abort = RelayThread._abort

        def slowly(self: RelayThread, relay: SpliceRelay) -> None:
            leaving.set()
            gate.wait(5)
            abort(self, relay)

        self.patch(RelayThread, "_abort", slowly)
        thread.call(lambda: setattr(thread, "_quitting", True))  # (a bug ends its loop)
        self.assertTrue(leaving.wait(5))
        self.assertFalse(thread.running)
        threading.Timer(0.1, gate.set).start()
        thread.stop()
        self.assertFalse(thread._thread.is_alive())
        assert proto.lost is not None, "closed as the thread was joined"
        proto.lost.trap(error.ConnectionAborted)
        self.assertEqual(proto.lost_in, threading.get_ident())
