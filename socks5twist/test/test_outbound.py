"""
L{socks5twist.outbound.connect_socket}: the bare-socket connect the splice
relay's tunnels use, on the real reactor and real loopback sockets.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet import defer, error, reactor
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from socks5twist import outbound
from socks5twist.codec import Reply
from socks5twist.relay import RemoteProtocol, Side
from socks5twist.tunnel import adopt as _adopt

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _listener(host: str = "127.0.0.1", backlog: int = 8) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(backlog)
    return sock


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class ConnectSocketTests(TestCase):
    def setUp(self) -> None:
        self.sockets: list[socket.socket] = []

    def tearDown(self) -> None:
        for sock in self.sockets:
            sock.close()

    def keep(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock

    @defer.inlineCallbacks
    def test_connects_a_non_blocking_socket_to_the_address(self) -> Any:
        server = self.keep(_listener())
        sock = self.keep(
            (yield outbound.connect_socket(reactor, LOOPBACK, server.getsockname()[1], 5))
        )
        accepted, peer = server.accept()
        self.keep(accepted)
        self.assertEqual(peer, sock.getsockname())
        self.assertEqual(sock.getpeername(), server.getsockname())
        self.assertFalse(sock.getblocking())
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        sock.sendall(b"ping")
        self.assertEqual(accepted.recv(4), b"ping")

    @defer.inlineCallbacks
    def test_ipv6(self) -> Any:
        try:
            server = self.keep(_listener("::1"))
        except OSError as e:
            self.skipTest(f"no IPv6 loopback here: {e}")
        sock = self.keep(
            (
                yield outbound.connect_socket(
                    reactor, ipaddress.ip_address("::1"), server.getsockname()[1], 5
                )
            )
        )
        self.assertEqual(sock.family, socket.AF_INET6)
        self.assertEqual(sock.getpeername()[:2], server.getsockname()[:2])

    @defer.inlineCallbacks
    def test_bind_gives_the_source_address(self) -> Any:
        server = self.keep(_listener())
        sock = self.keep(
            (
                yield outbound.connect_socket(
                    reactor, LOOPBACK, server.getsockname()[1], 5, bind="127.0.0.2"
                )
            )
        )
        accepted, peer = server.accept()
        self.keep(accepted)
        self.assertEqual(peer[0], "127.0.0.2")
        self.assertEqual(sock.getsockname()[0], "127.0.0.2")

    @defer.inlineCallbacks
    def test_refused_is_connection_refused_and_x05(self) -> Any:
        d = outbound.connect_socket(reactor, LOOPBACK, _closed_port(), 5)
        failure = yield self.assertFailure(d, error.ConnectionRefusedError)
        self.assertIsInstance(failure, error.ConnectionRefusedError)
        self.assertEqual(outbound.reply_for_failure(Failure(failure)), Reply.CONNECTION_REFUSED)

    @defer.inlineCallbacks
    def test_unusable_bind_address_fails_without_connecting(self) -> Any:
        # 192.0.2.1 (TEST-NET-1) is no address of this machine: bind fails,
        # and nothing is sent anywhere.
        d = outbound.connect_socket(reactor, LOOPBACK, _closed_port(), 5, bind="192.0.2.1")
        yield self.assertFailure(d, error.ConnectBindError)

    @defer.inlineCallbacks
    def silent_port(self) -> Any:
        """
        A port that never answers: a listener whose accept queue is full
        drops new SYNs, so an attempt to connect hangs.
        """
        server = self.keep(_listener(backlog=0))
        port = server.getsockname()[1]
        for _ in range(4):
            filler = self.keep(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield deferLater(reactor, 0.1, lambda: None)
        return port

    @defer.inlineCallbacks
    def test_no_answer_times_out_as_x04_and_closes_the_socket(self) -> Any:
        port = yield self.silent_port()
        writers = len(reactor.getWriters())
        d = outbound.connect_socket(reactor, LOOPBACK, port, 0.3)
        failure = yield self.assertFailure(d, error.TimeoutError)
        self.assertIn("no connection within 0.3 seconds", str(failure))
        self.assertEqual(outbound.reply_for_failure(Failure(failure)), Reply.HOST_UNREACHABLE)
        self.assertEqual(len(reactor.getWriters()), writers)

    @defer.inlineCallbacks
    def test_a_slow_answer_comes_through_the_writable_event(self) -> Any:
        """
        On loopback a connection is usually made inside connect(); one that
        is not (here: a SYN dropped by a full accept queue, answered once the
        client resends it and the queue has room) completes on the socket's
        writable event.
        """
        port = yield self.silent_port()
        server = self.sockets[0]
        writers = len(reactor.getWriters())
        d = outbound.connect_socket(reactor, LOOPBACK, port, 10)
        self.assertFalse(d.called)
        self.assertEqual(len(reactor.getWriters()), writers + 1)
        server.setblocking(False)
        for _ in range(200):  # keep making room in the accept queue
            if d.called:
                break
            try:
                self.keep(server.accept()[0])
            except BlockingIOError:
                yield deferLater(reactor, 0.05, lambda: None)
        sock = self.keep((yield d))
        self.assertEqual(sock.getpeername(), server.getsockname())
        self.assertEqual(len(reactor.getWriters()), writers)

    @defer.inlineCallbacks
    def test_cancel_stops_the_attempt(self) -> Any:
        port = yield self.silent_port()
        writers = len(reactor.getWriters())
        d = outbound.connect_socket(reactor, LOOPBACK, port, 30)
        self.assertEqual(len(reactor.getWriters()), writers + 1)
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        # Nothing is left behind: no writer, no timer (trial fails a test
        # that leaves either in the reactor).
        self.assertEqual(len(reactor.getWriters()), writers)


class _Relay:
    """Stands in for a relay: what a RemoteProtocol reports to it."""

    def __init__(self) -> None:
        self.received = b""
        self.events: list[Side] = []

    def from_remote(self, data: bytes) -> None:
        self.received += data

    def eof(self, side: Side) -> None:
        self.events.append(side)

    def lost(self, side: Side) -> None:
        self.events.append(side)


class AdoptTests(TestCase):
    @defer.inlineCallbacks
    def test_a_connected_socket_becomes_a_transport(self) -> Any:
        """
        The fallback when a socket was connected for splicing but the tunnel
        cannot splice after all: the socket becomes a Twisted transport.
        """
        server = _listener()
        self.addCleanup(server.close)
        sock = yield outbound.connect_socket(reactor, LOOPBACK, server.getsockname()[1], 5)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        remote = _adopt(reactor, sock)
        self.assertEqual(sock.fileno(), -1)  # the transport has a duplicate
        transport: Any = remote.transport
        relay = _Relay()
        remote.relay = relay
        transport.write(b"to the destination")
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(accepted.recv(100), b"to the destination")
        accepted.sendall(b"back")
        accepted.shutdown(socket.SHUT_WR)
        for _ in range(100):
            if relay.events:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(relay.received, b"back")
        self.assertEqual(relay.events[0], Side.REMOTE)
        self.assertIsInstance(remote, RemoteProtocol)
        transport.loseConnection()
        yield deferLater(reactor, 0.05, lambda: None)
