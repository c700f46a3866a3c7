"""
L{SOCKS5ClientEndpoint} on the real reactor against real proxies: socks5twist
itself (C{twistd -n socks5}), microsocks and Dante, and chains of them.  The
destination is a server in this process that tells each connection the
address it came from, echoes, and on EOF sends the SHA-256 of what it read;
so each test checks what the destination saw as well as what the client got.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

from socks5twist.client import (
    ConnectionNotAllowed,
    ConnectionRefused,
    LoginRejected,
    NoAcceptableMethods,
    SOCKS5ClientEndpoint,
)

from . import socks_peers
from .conftest import free_port


@implementer(IHalfCloseableProtocol)
class Destination(Protocol):
    """Says where the connection came from, echoes, and sends a digest on EOF."""

    def connectionMade(self) -> None:
        peer: Any = self.transport.getPeer()  # type: ignore[union-attr]
        self.factory.peers.append((peer.host, peer.port))  # type: ignore[attr-defined]
        self.digest = hashlib.sha256()
        self.transport.write(f"peer={peer.host} {peer.port}\n".encode())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.write(b"SHA256:" + self.digest.hexdigest().encode())  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


@pytest.fixture
def destination() -> Iterator[Any]:
    """The destination on 127.0.0.1 and ::1; C{.peers}: (host, port) of each connection."""
    factory: Any = ServerFactory.forProtocol(Destination)
    factory.peers = []
    tcp_reactor: Any = reactor
    port4 = tcp_reactor.listenTCP(0, factory, interface="127.0.0.1")
    port6 = tcp_reactor.listenTCP(0, factory, interface="::1")
    factory.port = port4.getHost().port
    factory.port6 = port6.getHost().port
    yield factory
    port4.stopListening()
    port6.stopListening()


class Exchange(Protocol):
    """
    Sends C{payload}; with C{half_close}, then EOF, and reads until the
    destination closes; without, reads until the echo is back, then closes.
    C{done} fires with every byte received.
    """

    def __init__(self, payload: bytes, half_close: bool) -> None:
        self.payload = payload
        self.half_close = half_close
        self.received = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]
        if self.half_close:
            self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        header = self.received.find(b"\n") + 1
        if not self.half_close and header and len(self.received) - header >= len(self.payload):
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(bytes(self.received))


@inlineCallbacks
def eventually(predicate: Any, timeout: float = 10, what: str = "condition") -> Any:
    """Poll C{predicate} with the reactor running (the destination lives in it)."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while not (result := predicate()):
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, 0.05)
    return result


def tcp(address: tuple[str, int]) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, address[0], address[1], timeout=10)


@inlineCallbacks
def exchange(endpoint: Any, payload: bytes = b"hello", half_close: bool = False) -> Any:
    """Connect, exchange C{payload}; return (the tunnel transport, the peer line, the rest)."""
    protocol = Exchange(payload, half_close)
    yield endpoint.connect(Factory.forProtocol(lambda: protocol)).addTimeout(30, reactor)
    tunnel = protocol.transport
    received = yield protocol.done.addTimeout(30, reactor)
    line, _, rest = received.partition(b"\n")
    return tunnel, line.decode(), rest


@inlineCallbacks
def failure_of(endpoint: Any) -> Any:
    """The exception that C{endpoint.connect} fails with."""
    d = endpoint.connect(Factory.forProtocol(Protocol)).addTimeout(30, reactor)
    try:
        yield d
    except Exception as e:
        return e
    raise AssertionError("connected, but should not have")


# -- socks5twist -----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_socks5twist_ipv4_with_half_close_and_a_megabyte(start_server, destination):
    server = start_server("--outgoing-address", "127.0.0.3")
    payload = os.urandom(1 << 20)
    endpoint = SOCKS5ClientEndpoint(tcp(server.address), "127.0.0.1", destination.port)
    tunnel, line, rest = yield exchange(endpoint, payload, half_close=True)
    [(host, port)] = destination.peers
    assert (host, line) == ("127.0.0.3", f"peer=127.0.0.3 {port}")
    assert rest == payload + b"SHA256:" + hashlib.sha256(payload).hexdigest().encode()
    assert (tunnel.getHost().host, tunnel.getHost().port) == ("127.0.0.3", port)
    assert (tunnel.getPeer().host, tunnel.getPeer().port) == ("127.0.0.1", destination.port)
    [session] = yield eventually(server.session_lines, 5, "the session line")
    assert f"CONNECT 127.0.0.1:{destination.port} " in session


@pytest_twisted.inlineCallbacks
def test_socks5twist_ipv6_and_name_destinations(start_server, destination):
    server = start_server()
    endpoint = SOCKS5ClientEndpoint(tcp(server.address), "::1", destination.port6)
    tunnel, line, rest = yield exchange(endpoint)
    assert line.startswith("peer=::1 ") and rest == b"hello"
    assert tunnel.getHost().host == "::1"
    endpoint = SOCKS5ClientEndpoint(tcp(server.address), "LocalHost.", destination.port)
    tunnel, line, rest = yield exchange(endpoint)
    assert rest == b"hello"
    assert tunnel.getPeer().hostname == b"localhost"
    lines = yield eventually(lambda: len(server.session_lines()) == 2 and server.session_lines())
    assert f"CONNECT localhost:{destination.port} -> 127.0.0.1:{destination.port}" in lines[1]


@pytest_twisted.inlineCallbacks
def test_socks5twist_with_a_password(start_server, destination):
    server = start_server("--auth", "memory:alice:s3cret")
    proxy = tcp(server.address)
    good = SOCKS5ClientEndpoint(proxy, "127.0.0.1", destination.port, "alice", "s3cret")
    _, _, rest = yield exchange(good)
    assert rest == b"hello"
    wrong = SOCKS5ClientEndpoint(proxy, "127.0.0.1", destination.port, "alice", "wrong-pw")
    error = yield failure_of(wrong)
    assert isinstance(error, LoginRejected) and "wrong-pw" not in str(error)
    error = yield failure_of(SOCKS5ClientEndpoint(proxy, "127.0.0.1", destination.port))
    assert isinstance(error, NoAcceptableMethods)
    assert len(destination.peers) == 1
    server.stop()
    assert "s3cret" not in server.log() and "wrong-pw" not in server.log()


@pytest_twisted.inlineCallbacks
def test_socks5twist_denied_and_refused(start_server, destination, tmp_path):
    closed = free_port()
    rules = tmp_path / "rules.toml"
    rules.write_text(
        f'default = "allow"\n[[rule]]\naction = "deny"\nports = [{destination.port}]\n'
    )
    server = start_server("--rules", str(rules))
    proxy = tcp(server.address)
    error = yield failure_of(SOCKS5ClientEndpoint(proxy, "127.0.0.1", destination.port))
    assert isinstance(error, ConnectionNotAllowed) and error.code == 2
    error = yield failure_of(SOCKS5ClientEndpoint(proxy, "127.0.0.1", closed))
    assert isinstance(error, ConnectionRefused) and error.code == 5
    assert f"127.0.0.1:{closed}" in str(error)
    assert destination.peers == []


@pytest_twisted.inlineCallbacks
def test_endpoint_string_with_a_unix_socket_proxy(start_server, destination, tmp_path):
    path = tmp_path / "socks.sock"
    server = start_server("--port", f"unix:{path}", connect_to=(str(path),))
    escaped = str(path).replace(":", "\\\\\\:")
    endpoint = clientFromString(
        reactor, f"socks5:127.0.0.1:{destination.port}:proxy=unix\\:{escaped}:timeout=10"
    )
    _, line, rest = yield exchange(endpoint)
    assert rest == b"hello" and line.startswith("peer=127.0.0.1 ")
    (yield eventually(server.session_lines, 5, "the session line"))


class Collect(Protocol):
    """Keeps what it receives; C{arrived(n)} fires once C{n} bytes are in."""

    def __init__(self) -> None:
        self.received = b""
        self.waiting: list[tuple[int, Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for entry in [e for e in self.waiting if len(self.received) >= e[0]]:
            self.waiting.remove(entry)
            entry[1].callback(self.received)

    def arrived(self, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append((size, d))
        self.dataReceived(b"")
        return d.addTimeout(30, reactor)


@pytest_twisted.inlineCallbacks
def test_socks5twist_bind_two_replies_and_data_both_ways(start_server):
    server = start_server("--auth", "memory:erin:pw")
    listens: list[Any] = []
    endpoint = SOCKS5ClientEndpoint(tcp(server.address), "127.0.0.2", 0, "erin", "pw")
    client = Collect()
    accepted = endpoint.bind(Factory.forProtocol(lambda: client), listens.append)
    # The first reply: where the peer is to connect (the server's listener).
    [where] = yield eventually(lambda: listens, 10, "the first reply")
    assert where.host == "127.0.0.1" and where.port > 0 and not accepted.called
    # The peer connects from the address the request named: the second reply.
    peer = Collect()
    peer_endpoint = TCP4ClientEndpoint(
        reactor, where.host, where.port, timeout=10, bindAddress=("127.0.0.2", 0)
    )
    yield peer_endpoint.connect(Factory.forProtocol(lambda: peer))
    protocol = yield accepted.addTimeout(30, reactor)
    assert protocol is client
    seen = client.transport.getHost()  # type: ignore[union-attr]
    assert (seen.host, seen.port) == ("127.0.0.2", peer.transport.getHost().port)  # type: ignore[union-attr]
    up, down = os.urandom(300_000), os.urandom(200_000)
    client.transport.write(up)  # type: ignore[union-attr]
    peer.transport.write(down)  # type: ignore[union-attr]
    assert (yield peer.arrived(len(up))) == up
    assert (yield client.arrived(len(down))) == down
    client.transport.loseConnection()  # type: ignore[union-attr]
    [session] = yield eventually(server.session_lines, 10, "the session line")
    assert "user=erin BIND 127.0.0.2:0 -> 127.0.0.2:" in session and "reply=0x00" in session
    peer.transport.loseConnection()  # type: ignore[union-attr]


# -- microsocks and Dante ----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_microsocks_with_and_without_a_password(destination):
    with socks_peers.microsocks(bind="127.0.0.2") as address:
        endpoint = SOCKS5ClientEndpoint(tcp(address), "127.0.0.1", destination.port)
        _, line, rest = yield exchange(endpoint, b"x" * 100000)
        assert line.startswith("peer=127.0.0.2 ") and rest == b"x" * 100000
    with socks_peers.microsocks("bob", "hunter2") as address:
        good = SOCKS5ClientEndpoint(tcp(address), "::1", destination.port6, "bob", "hunter2")
        _, line, rest = yield exchange(good)
        assert line.startswith("peer=::1 ") and rest == b"hello"
        wrong = SOCKS5ClientEndpoint(tcp(address), "127.0.0.1", destination.port, "bob", "no")
        error = yield failure_of(wrong)
        assert isinstance(error, LoginRejected)
    assert len(destination.peers) == 2


@pytest_twisted.inlineCallbacks
def test_dante_connect_refused_and_blocked(destination, tmp_path):
    closed = free_port()
    with socks_peers.dante(tmp_path, blocked_port=destination.port6) as address:
        endpoint = SOCKS5ClientEndpoint(tcp(address), "127.0.0.1", destination.port)
        tunnel, line, rest = yield exchange(endpoint, half_close=True)
        [(host, port)] = destination.peers
        assert line == f"peer=127.0.0.1 {port}"
        assert rest == b"hello" + b"SHA256:" + hashlib.sha256(b"hello").hexdigest().encode()
        assert (tunnel.getHost().host, tunnel.getHost().port) == (host, port)
        error = yield failure_of(SOCKS5ClientEndpoint(tcp(address), "127.0.0.1", closed))
        assert isinstance(error, ConnectionRefused)
        blocked = SOCKS5ClientEndpoint(tcp(address), "127.0.0.1", destination.port6)
        error = yield failure_of(blocked)
        assert isinstance(error, ConnectionNotAllowed)


# -- chains ------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_chain_socks5twist_then_socks5twist(start_server, destination):
    first = start_server("--outgoing-address", "127.0.0.3")
    second = start_server("--outgoing-address", "127.0.0.4", "--auth", "memory:carol:pw")
    hop = SOCKS5ClientEndpoint(tcp(first.address), *second.address)
    endpoint = SOCKS5ClientEndpoint(hop, "127.0.0.1", destination.port, "carol", "pw")
    tunnel, line, rest = yield exchange(endpoint, half_close=True)
    [(host, port)] = destination.peers
    assert (host, line) == ("127.0.0.4", f"peer=127.0.0.4 {port}")
    assert rest.startswith(b"helloSHA256:")
    assert (tunnel.getHost().host, tunnel.getHost().port) == (host, port)
    [line_first] = yield eventually(first.session_lines, 5, "the first hop's session line")
    assert f"CONNECT {second.address[0]}:{second.address[1]} " in line_first
    [line_second] = yield eventually(second.session_lines, 5, "the second hop's session line")
    assert "127.0.0.3:" in line_second and "user=carol" in line_second


@pytest_twisted.inlineCallbacks
def test_chain_socks5twist_then_microsocks(start_server, destination):
    first = start_server("--outgoing-address", "127.0.0.3")
    with socks_peers.microsocks("dave", "pw2", bind="127.0.0.2") as address:
        hop = SOCKS5ClientEndpoint(tcp(first.address), *address)
        endpoint = SOCKS5ClientEndpoint(hop, "localhost", destination.port, "dave", "pw2")
        _, line, rest = yield exchange(endpoint)
        assert line.startswith("peer=127.0.0.2 ") and rest == b"hello"
        [session] = yield eventually(first.session_lines, 5, "the first hop's session line")
        assert f"CONNECT 127.0.0.1:{address[1]} " in session
        refused = SOCKS5ClientEndpoint(hop, "127.0.0.1", free_port(), "dave", "pw2")
        error = yield failure_of(refused)
        assert isinstance(error, ConnectionRefused)
