"""
Shared pieces for the splice relay's tests on the real reactor: tunnels
whose client end is a Twisted TCP transport and whose remote end is one side
of a socket pair, and bounded waits.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from socks5twist.splice import SpliceRelay


@implementer(IHalfCloseableProtocol)
class Keep(protocol.Protocol):
    """The client's protocol: notes that it connected, and what it heard."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen
        self.received: list[bytes] = []
        self.read_lost = 0
        self.lost: Failure | None = None
        self.lost_in: int | None = None

    def connectionMade(self) -> None:
        self.seen.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def readConnectionLost(self) -> None:
        self.read_lost += 1

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = reason
        self.lost_in = threading.get_ident()


def turn() -> defer.Deferred[None]:
    return deferLater(reactor, 0.01, lambda: None)


@defer.inlineCallbacks
def read(sock: socket.socket, n: int) -> Any:
    """Read C{n} bytes from a non-blocking socket, letting the reactor run."""
    data = b""
    for _ in range(500):
        try:
            chunk = sock.recv(n - len(data))
        except BlockingIOError:
            yield turn()
            continue
        if not chunk:
            break
        data += chunk
        if len(data) == n:
            break
    return data


@defer.inlineCallbacks
def until(condition: Any, what: str) -> Any:
    for _ in range(300):
        if condition():
            return
        yield turn()
    raise AssertionError(f"timed out waiting for {what}")


@defer.inlineCallbacks
def connections(test: TestCase, count: int) -> Any:
    """C{count} TCP connections: (client socket, the server's L{Keep})."""
    connected: list[Keep] = []
    factory = protocol.Factory.forProtocol(lambda: Keep(connected))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
    test.addCleanup(port.stopListening)
    port_number = port.getHost().port  # type: ignore[attr-defined]
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port_number))
        clients.append(client)
        test.addCleanup(client.close)
    yield until(lambda: len(connected) == count, "the connections")
    return list(zip(clients, connected, strict=True))


@defer.inlineCallbacks
def make_tunnels(test: TestCase, count: int, **options: Any) -> Any:
    """C{count} tunnels: (client socket, relay, remote socket, server protocol)."""
    made = []
    for client, proto in (yield connections(test, count)):
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        theirs.setblocking(False)
        test.addCleanup(theirs.close)
        relay = SpliceRelay(reactor, proto.transport, mine, to_client=b"hi", **options)  # type: ignore[arg-type]
        made.append((client, relay, theirs, proto))
    return made


@defer.inlineCallbacks
def start(client: socket.socket, relay: SpliceRelay, move: bool) -> Any:
    """Start C{relay} (and move it to the thread), and read its reply at C{client}."""
    relay.start()
    if move:
        relay.move_to_thread()
    client.setblocking(False)
    hello = yield read(client, 2)
    if hello != b"hi":
        raise AssertionError(f"the client read {hello!r}, not the relay's b'hi'")
