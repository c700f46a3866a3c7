"""
Pins the behaviour of Twisted's that socks5twist relies on through private
names (socks5twist.twistedinternals): a Twisted upgrade that changes any of
it fails here first.
"""

from __future__ import annotations

import io
import socket
from typing import Any

from twisted.application import strports
from twisted.internet import defer, error, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    FileLogObserver,
    LogEvent,
    LogLevel,
    LogPublisher,
    eventAsJSON,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from socks5twist.outbound import resolve
from socks5twist.twistedinternals import (
    HAProxyProtocolWrapper,
    HostResolution,
    end_transport,
    file_log_parts,
    half_closer,
    has_producer,
    listening_port,
    log_observers,
    plain_and_idle,
    replace_log_observer,
    socket_of,
    stop_watching,
    unsent,
    write_to_socket,
)


class _Keep(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)  # type: ignore[attr-defined]


class TransportBufferTests(TestCase):
    """A tcp.Connection keeps what it could not send in dataBuffer/_tempDataLen."""

    @defer.inlineCallbacks
    def test_plain_and_idle_and_a_direct_write(self) -> Any:
        server_factory = Factory.forProtocol(_Keep)
        server_factory.received = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
        self.addCleanup(port.stopListening)
        connected: defer.Deferred[Any] = defer.Deferred()

        class Client(Protocol):
            def connectionMade(self) -> None:
                connected.callback(self)

        client_factory = ClientFactory.forProtocol(Client)
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)  # type: ignore[attr-defined,arg-type]
        client = yield connected
        transport = client.transport
        self.addCleanup(transport.loseConnection)
        self.assertTrue(plain_and_idle(transport))
        # write() only buffers (Twisted sends in the reactor's next turn):
        # the buffer is what plain_and_idle looks at.
        transport.write(b"queued")
        self.assertTrue(transport.dataBuffer or transport._tempDataLen)
        self.assertFalse(plain_and_idle(transport))
        yield _turns(5)
        self.assertTrue(plain_and_idle(transport))
        self.assertEqual(write_to_socket(transport, b"direct"), len(b"direct"))
        yield _turns(5)
        self.assertEqual(b"".join(server_factory.received), b"queueddirect")  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_unsent_is_the_buffer_and_the_socket_under_any_wrapper(self) -> Any:
        from socks5twist.gsstransport import ProtectedTransport

        server_factory = Factory.forProtocol(_Keep)
        server_factory.received = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
        self.addCleanup(port.stopListening)
        connected: defer.Deferred[Any] = defer.Deferred()
        lost: defer.Deferred[Any] = defer.Deferred()

        class Client(Protocol):
            def connectionMade(self) -> None:
                connected.callback(self)

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                lost.callback(None)

        reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(Client))  # type: ignore[attr-defined,arg-type]
        transport = (yield connected).transport
        fd = transport.socket.fileno()
        self.assertEqual(unsent(transport), (0, fd))
        transport.write(b"queued")
        transport.write(b"twice")
        self.assertEqual(unsent(transport), (11, fd))

        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

        # A wrapper as Twisted's TLS is one, mid-handshake, under another
        # that passes every attribute it lacks on (the PROXY header's): each
        # buffer is counted once.
        tls = ProtocolWrapper(WrappingFactory(Factory.forProtocol(Protocol)), Protocol())
        tls.makeConnection(transport)
        tls._appSendBuffer = [b"abc", b"de"]  # type: ignore[attr-defined]
        outer = ProtocolWrapper(WrappingFactory(Factory.forProtocol(Protocol)), Protocol())
        outer.makeConnection(tls)
        self.assertEqual(unsent(tls), (16, fd))
        self.assertEqual(unsent(outer), (16, fd))
        self.assertEqual(unsent(ProtectedTransport(outer, None)), (16, fd))  # type: ignore[arg-type]
        yield _turns(5)
        self.assertEqual(unsent(transport), (0, fd))
        transport.loseConnection()
        yield lost
        self.assertEqual(unsent(transport), (0, -1))
        self.assertEqual(unsent(object()), (0, -1))

    def test_a_closed_socket_takes_nothing_and_raises_nothing(self) -> None:
        class Fake:
            socket = socket.socket()

        Fake.socket.close()
        self.assertEqual(write_to_socket(Fake(), b"x"), 0)


def _turns(n: int) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.01 * n, d.callback, None)  # type: ignore[attr-defined]
    return d


class ResolutionTests(TestCase):
    def test_host_resolution_takes_a_name(self) -> None:
        self.assertEqual(HostResolution("example.test").name, "example.test")

    def test_checked_addresses_resolver_answers_with_exactly_those(self) -> None:
        from ipaddress import ip_address

        from socks5twist.outbound import _CheckedAddresses

        memory = MemoryReactorClock()
        d = resolve(memory, "x.test", 0, _CheckedAddresses([ip_address("192.0.2.1")]))
        self.assertEqual(self.successResultOf(d), [ip_address("192.0.2.1")])


class WrapperTests(TestCase):
    def test_twisteds_proxy_wrapper_is_where_we_look_for_it(self) -> None:
        from twisted.protocols.haproxy import proxyEndpoint
        from twisted.protocols.policies import ProtocolWrapper

        self.assertTrue(issubclass(HAProxyProtocolWrapper, ProtocolWrapper))
        self.assertTrue(callable(proxyEndpoint))


class HalfCloserTests(TestCase):
    def test_tls_seems_to_half_close_but_half_closer_says_it_cannot(self) -> None:
        from twisted.internet.ssl import optionsForClientTLS
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from .helpers import HalfCloseTransport

        tcp_like = HalfCloseTransport()
        factory = TLSMemoryBIOFactory(
            optionsForClientTLS("example.test"), True, Factory.forProtocol(Protocol)
        )
        tls = factory.buildProtocol(None)
        tls.makeConnection(tcp_like)
        # What relay.eof would find without half_closer: the TCP connection's.
        tls.loseWriteConnection()
        self.assertTrue(tcp_like.write_closed)
        self.assertIsNone(half_closer(tls))
        plain = HalfCloseTransport()
        closer = half_closer(plain)
        assert closer is not None
        closer()
        self.assertTrue(plain.write_closed)


class ListeningPortTests(TestCase):
    @defer.inlineCallbacks
    def test_a_strports_service_gives_its_port_once_listening(self) -> Any:
        service = strports.service("tcp:0:interface=127.0.0.1", Factory.forProtocol(Protocol))
        self.assertIsNone(listening_port(service), "not listening yet")
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        port = listening_port(service)
        self.assertIsNotNone(port)
        self.assertTrue(port.fileno() > 0)
        yield defer.succeed(None)

    def test_another_service_has_none(self) -> None:
        from twisted.application.service import Service

        self.assertIsNone(listening_port(Service()))


class LogPublisherTests(TestCase):
    """A LogPublisher calls the list C{_observers}, in order."""

    def test_observers_are_listed_and_replaced_in_place(self) -> None:
        seen: list[str] = []
        publisher = LogPublisher()

        def first(event: LogEvent) -> None:
            seen.append("first")

        def second(event: LogEvent) -> None:
            seen.append("second")

        def third(event: LogEvent) -> None:
            seen.append("third")

        publisher.addObserver(first)  # type: ignore[arg-type]
        publisher.addObserver(second)  # type: ignore[arg-type]
        self.assertEqual(log_observers(publisher), [first, second])
        replace_log_observer(publisher, first, third)
        self.assertEqual(log_observers(publisher), [third, second])
        publisher({"log_format": "x"})
        self.assertEqual(seen, ["third", "second"])
        replace_log_observer(publisher, first, second)  # not there: nothing happens
        self.assertEqual(log_observers(publisher), [third, second])


class FileLogObserverTests(TestCase):
    """A FileLogObserver keeps its file, its encoding and its formatter."""

    def event(self) -> LogEvent:
        return {
            "log_format": "hello {who}",
            "who": "there",
            "log_namespace": "ns",
            "log_level": LogLevel.info,
            "log_time": 1e9,
        }

    def test_a_text_file(self) -> None:
        out = io.StringIO()
        observer = textFileLogObserver(out)
        self.assertIsInstance(observer, FileLogObserver)
        parts = file_log_parts(observer)
        assert parts is not None
        write, flush, format_event = parts
        self.assertEqual(format_event(self.event()), observer.formatEvent(self.event()))
        observer(self.event())
        write("more\n")
        flush()
        self.assertTrue(out.getvalue().endswith("hello there\nmore\n"))

    def test_a_file_of_bytes_gets_utf8(self) -> None:
        out = io.BytesIO()
        observer = textFileLogObserver(out)  # type: ignore[arg-type]
        parts = file_log_parts(observer)
        assert parts is not None
        write = parts[0]
        observer(self.event())
        write("caf\u00e9\n")
        self.assertTrue(out.getvalue().endswith(b"hello there\ncaf\xc3\xa9\n"))

    def test_a_json_log_is_a_file_observer_too(self) -> None:
        # Which is why socks5twist.textlog compares formats before it
        # replaces an observer, rather than trusting its class.
        observer = jsonFileLogObserver(io.StringIO())
        parts = file_log_parts(observer)
        assert parts is not None
        self.assertEqual(parts[2](self.event()), "\x1e" + eventAsJSON(self.event()) + "\n")

    def test_another_observer_has_none(self) -> None:
        self.assertIsNone(file_log_parts(lambda event: None))


@implementer(IHalfCloseableProtocol)
class _Heard(Protocol):
    """Records everything Twisted tells a (half-closeable) protocol."""

    def __init__(self) -> None:
        self.made: defer.Deferred[_Heard] = defer.Deferred()
        self.received: list[bytes] = []
        self.read_lost = 0
        self.lost: list[Failure] = []

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.read_lost += 1

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.append(reason)


class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@defer.inlineCallbacks
def _recv(sock: socket.socket, n: int = 64) -> Any:
    """What a non-blocking socket has (b"" at EOF), letting the reactor run; bounded."""
    for _ in range(200):
        try:
            return sock.recv(n)
        except BlockingIOError:
            yield _turns(1)
    raise AssertionError("nothing to read")


class TransportSocketTests(TestCase):
    """
    How the splice relay takes a TCP transport's socket for a tunnel and ends
    the transport itself: pinned for both kinds it takes, an accepted
    connection (the client's, a BIND peer's) and one Twisted connected (a
    destination), each against a plain socket as the peer.
    """

    @defer.inlineCallbacks
    def _accepted(self) -> Any:
        heard = _Heard()
        factory: Any = Factory.forProtocol(lambda: heard)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        peer = socket.create_connection(("127.0.0.1", port.getHost().port))  # type: ignore[attr-defined]
        peer.setblocking(False)
        self.addCleanup(peer.close)
        yield heard.made
        self.addCleanup(self._close, heard)
        return heard, peer

    @defer.inlineCallbacks
    def _connected(self) -> Any:
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        heard = _Heard()
        factory: Any = ClientFactory.forProtocol(lambda: heard)
        reactor.connectTCP("127.0.0.1", listener.getsockname()[1], factory)  # type: ignore[attr-defined]
        yield heard.made
        self.addCleanup(self._close, heard)
        peer, _ = listener.accept()
        peer.setblocking(False)
        self.addCleanup(peer.close)
        return heard, peer

    def _close(self, heard: _Heard) -> None:
        transport: Any = heard.transport
        if transport is not None and transport.connected:
            transport.abortConnection()

    def _both(self) -> list[Any]:
        return [self._accepted, self._connected]

    @defer.inlineCallbacks
    def test_socket_of_is_the_connection_the_transport_reads(self) -> Any:
        for make in self._both():
            heard, peer = yield make()
            transport = heard.transport
            sock = socket_of(transport)
            self.assertIsInstance(sock, socket.socket)
            self.assertEqual(sock.fileno(), transport.fileno())
            self.assertEqual(sock.family, socket.AF_INET)
            self.assertEqual(sock.getpeername(), peer.getsockname())
            self.assertEqual(sock.send(b"direct"), 6)
            self.assertEqual((yield _recv(peer)), b"direct")

    @defer.inlineCallbacks
    def test_has_producer_follows_register_and_unregister(self) -> Any:
        heard, _ = yield self._accepted()
        transport = heard.transport
        self.assertFalse(has_producer(transport))
        transport.registerProducer(_Producer(), True)
        self.assertTrue(has_producer(transport))
        transport.unregisterProducer()
        self.assertFalse(has_producer(transport))

    @defer.inlineCallbacks
    def test_stop_watching_leaves_the_socket_and_the_transport_connected(self) -> Any:
        for make in self._both():
            heard, peer = yield make()
            transport = heard.transport
            stop_watching(transport)
            self.assertNotIn(transport, reactor.getReaders())  # type: ignore[attr-defined]
            self.assertNotIn(transport, reactor.getWriters())  # type: ignore[attr-defined]
            peer.sendall(b"for the relay")
            peer.shutdown(socket.SHUT_WR)
            yield _turns(5)
            # The protocol hears nothing: the bytes and the EOF wait in the socket.
            self.assertEqual((heard.received, heard.read_lost, heard.lost), ([], 0, []))
            self.assertTrue(plain_and_idle(transport))
            self.assertEqual((yield _recv(socket_of(transport))), b"for the relay")
            self.assertEqual((yield _recv(socket_of(transport))), b"")

    @defer.inlineCallbacks
    def test_end_transport_closes_at_once_and_the_protocol_hears_it_once(self) -> Any:
        for make in self._both():
            heard, peer = yield make()
            transport = heard.transport
            stop_watching(transport)
            end_transport(transport, abort=False)
            [reason] = heard.lost  # synchronously
            reason.trap(error.ConnectionDone)
            self.assertTrue(transport.disconnected)
            self.assertFalse(transport.connected)
            self.assertEqual((yield _recv(peer)), b"", "an orderly close: the peer reads EOF")
            end_transport(transport, abort=False)
            end_transport(transport, abort=True)
            self.assertEqual(len(heard.lost), 1)

    @defer.inlineCallbacks
    def test_end_transport_with_abort_resets_the_peer(self) -> Any:
        for make in self._both():
            heard, peer = yield make()
            transport = heard.transport
            stop_watching(transport)
            end_transport(transport, abort=True)
            [reason] = heard.lost
            reason.trap(error.ConnectionAborted)
            with self.assertRaises(ConnectionResetError):
                yield _recv(peer)

    @defer.inlineCallbacks
    def test_after_a_half_close_the_socket_still_reads_eof_and_writes(self) -> Any:
        """
        A half-closeable protocol hears the peer's EOF, and the transport
        stays a plain idle connection whose socket still reads EOF (Twisted
        neither shuts it down nor closes it): the splice relay may take it
        and find the EOF itself (which is why SpliceRelay.eof does nothing).
        """
        heard, peer = yield self._accepted()
        transport = heard.transport
        peer.shutdown(socket.SHUT_WR)
        for _ in range(100):
            if heard.read_lost:
                break
            yield _turns(1)
        self.assertEqual((heard.read_lost, heard.lost), (1, []))
        self.assertTrue(plain_and_idle(transport))
        stop_watching(transport)
        self.assertEqual((yield _recv(socket_of(transport))), b"")
        self.assertEqual((yield _recv(socket_of(transport))), b"")
        socket_of(transport).sendall(b"still open")
        self.assertEqual((yield _recv(peer)), b"still open")
