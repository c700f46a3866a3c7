"""
The stream relay, driven through C{twisted.test.iosim}: a client and a
destination, each a real protocol on an in-memory connection, talk through a
session that reached RELAYING with the stream relay (splice off).

iosim's C{FakeTransport} hands every byte over at once, never pauses a
producer, and cannot half-close.  L{TCPEnd} adds, as one small subclass, what
Twisted's C{FileDescriptor} and TCP do that the relay relies on:

  - a write buffer: a write that takes it past C{buffer_size} pauses the
    registered streaming producer; once the buffer has drained, the producer
    is resumed (C{FileDescriptor.write} and C{doWrite});
  - reading: at most C{read_size} bytes per read, and none while this end is
    paused as a producer (C{pauseProducing} is C{stopReading});
  - half-close: C{loseWriteConnection} sends a FIN once the buffer has
    drained, but, as in C{doWrite}, not if that drain resumed a paused
    producer instead (the pitfall in TWISTED-NOTES: the FIN never goes out);
    C{loseConnection} likewise closes only after the drain;
  - C{abortConnection} drops the buffer, and the peer sees a reset.

Bytes the proxy holds are the write buffers of its two ends: at most
C{buffer_size + read_size} per direction once the tunnel is open (a read is
relayed whole, and the read that crosses the limit pauses the reading side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from socks5twist import SOCKS5ServerFactory
from socks5twist.relay import StreamRelay
from socks5twist.session import State

from .helpers import LOCAL_CLIENT, NO_AUTH_GREETING, PROXY_HOST, connect_request

DESTINATION = IPv4Address("TCP", "10.9.8.7", 80)
OUTBOUND = IPv4Address("TCP", "198.51.100.7", 43210)
# The method selection, then success with the bound address 198.51.100.7:43210.
REPLIES = b"\x05\x00" + b"\x05\x00\x00\x01\xc6\x33\x64\x07\xa8\xca"

BUFFER = 256
READ = 1024
BOUND = BUFFER + READ
"""The most bytes the proxy may hold per direction once the tunnel is open."""

_FIN = object()  # what a TCPEnd "sends" for its FIN: truthy, so IOPump moves it


class TCPEnd(iosim.FakeTransport):
    """One end of an iosim connection with a bounded write buffer and half-close."""

    def __init__(self, protocol: Any, isServer: bool, host: Any, peer: Any) -> None:
        super().__init__(protocol, isServer, hostAddress=host, peerAddress=peer)
        self.peer: TCPEnd = self
        self.buffer_size = BUFFER
        self.read_size = READ
        self.reading = True  # as a producer: not paused
        self.pauses = 0
        self.resumes = 0
        self.producerPaused = False  # as a consumer: it paused its producer
        self.peak = 0  # the most bytes its write buffer ever held
        self._writing = False  # doWrite is due (startWriting)
        self._closing = False  # loseConnection was called
        self.write_closing = False  # loseWriteConnection was called
        self.fin_sent = False

    @property
    def buffered(self) -> int:
        return sum(len(chunk) for chunk in self.stream)

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.fin_sent or not data:
            return
        self.stream.append(data)
        self.peak = max(self.peak, self.buffered)
        self._writing = True
        if self.producer is not None and self.streamingProducer:
            if self.buffered > self.buffer_size:
                self.producerPaused = True
                self.producer.pauseProducing()

    def loseWriteConnection(self) -> None:
        self.write_closing = True
        self._writing = True

    def loseConnection(self) -> None:
        self._closing = True
        self._writing = True

    def abortConnection(self) -> None:
        self.stream = []
        self.disconnecting = True
        # (iosim types the reason as ConnectionDone; a reset is not one.)
        self.peer.disconnectReason = error.ConnectionLost("reset")  # type: ignore[assignment]

    def pauseProducing(self) -> None:
        self.reading = False
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.reading = True
        self.resumes += 1

    def getOutBuffer(self) -> Any:
        """One C{doWrite}: what the peer reads now, if it reads at all."""
        if not self._writing or self.disconnecting or not self.peer.reading:
            return None
        if self.stream:
            data = b"".join(self.stream)
            rest = data[self.peer.read_size :]
            self.stream = [rest] if rest else []
            return data[: self.peer.read_size]
        self._writing = False
        if self.producer is not None and self.producerPaused:
            self.producerPaused = False
            self.producer.resumeProducing()
        elif self._closing:
            self.disconnecting = True  # IOPump closes both ends
        elif self.write_closing and not self.fin_sent:
            self.fin_sent = True
            return _FIN
        return None

    def bufferReceived(self, buf: Any) -> None:
        if buf is _FIN:
            assert IHalfCloseableProtocol.providedBy(self.protocol)
            self.protocol.readConnectionLost()
        else:
            super().bufferReceived(buf)


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """A test's end of a connection: keeps what it hears."""

    def __init__(self) -> None:
        self.received = b""
        self.eof = False
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.eof = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


def pipe(
    server: Any, client: Any, server_host: Any, client_host: Any, clock: Any
) -> tuple[TCPEnd, TCPEnd, iosim.IOPump]:
    """Connect two protocols with a pair of L{TCPEnd}s."""
    server_end = TCPEnd(server, True, server_host, client_host)
    client_end = TCPEnd(client, False, client_host, server_host)
    server_end.peer, client_end.peer = client_end, server_end
    pump = iosim.connect(server, server_end, client, client_end, greet=False, clock=clock)
    return server_end, client_end, pump


@dataclass
class Tunnel:
    reactor: MemoryReactorClock
    session: Any
    client: Peer
    destination: Peer
    client_end: TCPEnd  # the client's
    proxy_client_end: TCPEnd  # the proxy's, facing the client
    proxy_remote_end: TCPEnd  # the proxy's, facing the destination
    destination_end: TCPEnd  # the destination's
    pumps: tuple[iosim.IOPump, ...]
    logs: Sequence[LogEvent]

    def settle(self) -> None:
        """Pump both connections until nothing moves."""
        while any([pump.flush() for pump in self.pumps]):
            pass

    def session_lines(self) -> list[LogEvent]:
        return [event for event in self.logs if "session_line" in event]

    def closed(self) -> bool:
        return bool(self.proxy_client_end.disconnected and self.proxy_remote_end.disconnected)


def open_tunnel(
    test: SynchronousTestCase, early: bytes = b"", client_eof: bool = False, **options: Any
) -> Tunnel:
    """
    A client that sends its greeting, a CONNECT and C{early} at once (and a
    FIN if C{client_eof}), through to a destination that accepted: the
    session is RELAYING once this returns.  C{options} go to the factory.
    """
    reactor = MemoryReactorClock()
    factory = SOCKS5ServerFactory(splice=False, reactor=reactor, **options)
    session: Any = factory.buildProtocol(LOCAL_CLIENT)
    client = Peer()
    proxy_client_end, client_end, client_pump = pipe(
        session, client, PROXY_HOST, LOCAL_CLIENT, reactor
    )
    logs = test.enterContext(capturedLogs())
    client_end.write(NO_AUTH_GREETING + connect_request("10.9.8.7", 80) + early)
    if client_eof:
        client_end.loseWriteConnection()
    client_pump.flush()
    test.assertIs(session.state, State.CONNECTING)
    _, _, remote_factory, _, _ = reactor.tcpClients[0]
    remote = remote_factory.buildProtocol(DESTINATION)
    destination = Peer()
    destination_end, proxy_remote_end, destination_pump = pipe(
        destination, remote, DESTINATION, OUTBOUND, reactor
    )
    test.assertIs(session.state, State.RELAYING)
    test.assertIsInstance(session.relay, StreamRelay)
    tunnel = Tunnel(
        reactor,
        session,
        client,
        destination,
        client_end,
        proxy_client_end,
        proxy_remote_end,
        destination_end,
        (client_pump, destination_pump),
        logs,
    )
    tunnel.settle()
    return tunnel


def pattern(size: int, seed: int) -> bytes:
    """C{size} bytes in which a lost, repeated or reordered chunk shows."""
    return b"".join((i * seed + i // 251).to_bytes(4, "big") for i in range(size // 4 + 1))[:size]


class BytesFlowTests(SynchronousTestCase):
    def test_bytes_flow_both_ways_intact_and_in_order_early_bytes_first(self) -> None:
        t = open_tunnel(self, early=b"pipelined before the tunnel opened;")
        up, down = pattern(100_000, 7), pattern(120_000, 13)
        for i in range(0, 120_000, 10_000):
            t.client_end.write(up[i : i + 10_000])
            t.destination_end.write(down[i : i + 10_000])
            t.settle()
        self.assertEqual(t.destination.received, b"pipelined before the tunnel opened;" + up)
        self.assertEqual(t.client.received, REPLIES + down)
        self.assertEqual((t.session.relay.up, t.session.relay.down), (35 + len(up), len(down)))
        self.assertFalse(t.closed())


class FlowControlTests(SynchronousTestCase):
    def test_a_destination_that_stops_reading_pauses_the_client_within_the_bound(self) -> None:
        t = open_tunnel(self)
        t.destination_end.pauseProducing()  # the destination stops reading
        data = pattern(200_000, 3)
        t.client_end.write(data)
        t.settle()
        self.assertFalse(t.proxy_client_end.reading, "the proxy still reads from the client")
        self.assertLessEqual(t.proxy_remote_end.peak, BOUND)
        self.assertGreater(t.client_end.buffered, 190_000, "the rest waits at the client")
        t.destination_end.resumeProducing()
        t.settle()
        self.assertTrue(t.proxy_client_end.reading)
        self.assertEqual(t.destination.received, data)
        self.assertLessEqual(t.proxy_remote_end.peak, BOUND)
        self.assertGreater(t.proxy_client_end.resumes, 0)

    def test_a_client_that_stops_reading_pauses_the_destination_within_the_bound(self) -> None:
        t = open_tunnel(self)
        t.client_end.pauseProducing()
        data = pattern(200_000, 5)
        t.destination_end.write(data)
        t.settle()
        self.assertFalse(t.proxy_remote_end.reading, "the proxy still reads from the destination")
        self.assertLessEqual(t.proxy_client_end.peak, BOUND)
        self.assertGreater(t.destination_end.buffered, 190_000)
        t.client_end.resumeProducing()
        t.settle()
        self.assertTrue(t.proxy_remote_end.reading)
        self.assertEqual(t.client.received, REPLIES + data)
        self.assertLessEqual(t.proxy_client_end.peak, BOUND)

    def test_early_bytes_past_the_buffer_still_pause_the_client(self) -> None:
        """
        Early bytes fill the destination's buffer before the session resumes
        reading from the client: the next read must pause it again, so the
        proxy holds at most the early bytes and one read.
        """
        early = pattern(600, 11)
        t = open_tunnel(self, early=early)
        t.destination_end.pauseProducing()
        t.client_end.write(pattern(50_000, 17))
        t.settle()
        self.assertFalse(t.proxy_client_end.reading)
        self.assertLessEqual(t.proxy_remote_end.peak, len(early) + READ)


class HalfCloseTests(SynchronousTestCase):
    def test_client_eof_reaches_the_destination_and_bytes_still_flow_back(self) -> None:
        t = open_tunnel(self)
        t.client_end.write(b"request")
        t.client_end.loseWriteConnection()
        t.settle()
        self.assertEqual(t.destination.received, b"request")
        self.assertTrue(t.destination.eof, "no FIN reached the destination")
        self.assertTrue(t.proxy_remote_end.fin_sent)
        self.assertFalse(t.client.eof)
        t.destination_end.write(b"response after the client's FIN")
        t.settle()
        self.assertEqual(t.client.received, REPLIES + b"response after the client's FIN")
        self.assertFalse(t.closed())
        self.assertEqual(t.session_lines(), [])
        t.destination_end.loseWriteConnection()
        t.settle()
        self.assertTrue(t.closed(), "both EOFs must end the tunnel")
        self.assertIsNotNone(t.client.lost)
        self.assertIsNotNone(t.destination.lost)
        self.assertEqual(len(t.session_lines()), 1)

    def test_destination_eof_reaches_the_client_and_bytes_still_flow_up(self) -> None:
        t = open_tunnel(self)
        t.destination_end.write(b"banner")
        t.destination_end.loseWriteConnection()
        t.settle()
        self.assertEqual(t.client.received, REPLIES + b"banner")
        self.assertTrue(t.client.eof, "no FIN reached the client")
        self.assertFalse(t.destination.eof)
        t.client_end.write(b"upload after the destination's FIN")
        t.settle()
        self.assertEqual(t.destination.received, b"upload after the destination's FIN")
        self.assertFalse(t.closed())
        t.client_end.loseWriteConnection()
        t.settle()
        self.assertTrue(t.closed(), "both EOFs must end the tunnel")
        self.assertEqual(len(t.session_lines()), 1)

    def test_fin_goes_out_although_its_producer_was_paused(self) -> None:
        """
        Early bytes past the destination's buffer pause the client's side; a
        FIN that comes right behind them must still reach the destination,
        after them (a paused producer left registered would swallow it).
        """
        early = pattern(600, 19)
        t = open_tunnel(self, early=early, client_eof=True)
        self.assertTrue(t.destination.eof, "the FIN was lost behind a paused producer")
        self.assertEqual(t.destination.received, early)
        t.destination_end.write(b"reply")
        t.destination_end.loseWriteConnection()
        t.settle()
        self.assertEqual(t.client.received, REPLIES + b"reply")
        self.assertTrue(t.closed())

    def test_both_eofs_close_both_ends_with_bytes_and_a_paused_producer_pending(self) -> None:
        t = open_tunnel(self)
        t.client_end.pauseProducing()
        data = pattern(10_000, 23)
        t.destination_end.write(data)
        t.destination_end.loseWriteConnection()
        t.client_end.loseWriteConnection()
        t.settle()
        self.assertFalse(t.proxy_remote_end.reading)  # paused: the client reads nothing
        t.client_end.resumeProducing()
        t.settle()
        self.assertEqual(t.client.received, REPLIES + data)
        self.assertTrue(t.destination.eof)
        self.assertIsNotNone(t.client.lost)  # iosim's close: the FIN and the close at once
        self.assertTrue(t.closed(), "a paused producer held the close back")
        self.assertEqual(len(t.session_lines()), 1)


class ResetTests(SynchronousTestCase):
    def test_a_reset_destination_closes_the_client_at_once(self) -> None:
        t = open_tunnel(self)
        t.destination_end.abortConnection()
        t.settle()
        self.assertIsInstance(t.session.relay, StreamRelay)
        self.assertTrue(t.closed())
        self.assertIsNotNone(t.client.lost)
        self.assertEqual(len(t.session_lines()), 1)

    def test_a_reset_client_closes_the_destination_at_once(self) -> None:
        t = open_tunnel(self)
        t.destination_end.write(b"unread")
        t.client_end.pauseProducing()
        t.client_end.abortConnection()
        t.settle()
        self.assertTrue(t.closed())
        self.assertIsNotNone(t.destination.lost)
        self.assertEqual(len(t.session_lines()), 1)

    def test_a_reset_destination_closes_a_slow_client_once_it_has_its_bytes(self) -> None:
        """
        The client's side is full and its producer paused when the
        destination resets: the close waits for what the proxy holds, and
        then happens (a paused producer left registered would hold it back).
        """
        t = open_tunnel(self)
        t.client_end.pauseProducing()
        data = pattern(10_000, 29)
        t.destination_end.write(data)
        t.settle()
        self.assertFalse(t.proxy_remote_end.reading)
        t.destination_end.abortConnection()
        t.settle()
        t.client_end.resumeProducing()
        t.settle()
        self.assertTrue(t.closed(), "a paused producer held the close back")
        self.assertGreater(t.session.relay.down, 0)
        self.assertEqual(t.client.received, REPLIES + data[: t.session.relay.down])
        self.assertEqual(len(t.session_lines()), 1)


class StalledReaderTests(SynchronousTestCase):
    def test_idle_timeout_ends_a_tunnel_whose_client_stopped_reading(self) -> None:
        """
        Nothing moves for the idle timeout because the client reads nothing:
        the tunnel must end.  The relay closes with loseConnection, which
        waits for the client to read what the proxy holds; what has not closed
        L{FLUSH_GRACE} seconds later is reset, so the session (a --max-clients
        slot, up to L{BOUND} bytes) is not held for as long as the client
        keeps its window shut.
        """
        t = open_tunnel(self, idle_timeout=60)
        t.client_end.pauseProducing()
        t.destination_end.write(pattern(10_000, 31))
        t.settle()
        for _ in range(3):
            t.reactor.advance(61)
            t.settle()
        self.assertEqual(t.session.outcome, "idle timeout")
        self.assertTrue(t.closed(), "a client that never reads holds the session")
