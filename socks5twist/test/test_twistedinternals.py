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
from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
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
from twisted.trial.unittest import TestCase

from socks5twist.outbound import resolve
from socks5twist.twistedinternals import (
    HAProxyProtocolWrapper,
    HostResolution,
    file_log_parts,
    listening_port,
    log_observers,
    plain_and_idle,
    replace_log_observer,
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
