"""
The splice relay's shared poller, on the real reactor: the first tunnels'
sockets are the reactor's own readers, the tunnels after those share one
reader, and nothing is left when they end.  (The relay's flow control,
half-close and fallback are tested end to end in tests/test_server.py.)
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from socks5twist import splice
from socks5twist.splice import SpliceRelay


class _Keep(protocol.Protocol):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    def connectionMade(self) -> None:
        self.seen.append(self)


@defer.inlineCallbacks
def _read(sock: socket.socket, n: int) -> Any:
    """Read C{n} bytes from a non-blocking socket, letting the reactor run."""
    data = b""
    for _ in range(500):
        try:
            chunk = sock.recv(n - len(data))
        except BlockingIOError:
            yield deferLater(reactor, 0.01, lambda: None)
            continue
        if not chunk:
            break
        data += chunk
        if len(data) == n:
            break
    return data


class PollerTests(TestCase):
    if not splice.available():
        skip = "no splice(2) on this platform"

    @defer.inlineCallbacks
    def test_few_tunnels_direct_many_tunnels_one_reader_none_left_after(self) -> Any:
        connected: list[Any] = []
        factory = protocol.Factory.forProtocol(lambda: _Keep(connected))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        port_number = port.getHost().port  # type: ignore[attr-defined]
        clients, remotes, relays = [], [], []
        direct = splice._Poller.SHARED_FROM
        count = direct + 5
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", port_number))
            clients.append(client)
            self.addCleanup(client.close)
        for _ in range(50):
            if len(connected) == count:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        readers_before = set(reactor.getReaders())
        for proto in connected:
            mine, theirs = socket.socketpair()
            mine.setblocking(False)
            theirs.setblocking(False)
            remotes.append(theirs)
            self.addCleanup(theirs.close)
            relay = SpliceRelay(reactor, proto.transport, mine)
            relay.start()
            relays.append(relay)
        added = set(reactor.getReaders()) - readers_before
        # Two sockets each for the first tunnels, one poller for the rest.
        self.assertEqual(len(added), 2 * direct + 1)
        (poller,) = [r for r in added if isinstance(r, splice._Poller)]
        self.assertEqual([r.poller for r in relays], [None] * direct + [poller] * 5)
        for index, (client, remote) in enumerate(zip(clients, remotes, strict=True)):
            client.sendall(b"up %d" % index)
            self.assertEqual((yield _read(remote, 4)), b"up %d" % index)
            remote.sendall(b"down %d" % index)
        for client in clients:
            client.setblocking(False)
        for index, client in enumerate(clients):
            self.assertEqual((yield _read(client, 6)), b"down %d" % index)
        for client, remote in zip(clients, remotes, strict=True):
            client.shutdown(socket.SHUT_WR)
            remote.shutdown(socket.SHUT_WR)
        for _ in range(100):
            if all(relay.finished for relay in relays):
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(all(relay.finished for relay in relays))
        left = [r for r in reactor.getReaders() if isinstance(r, (splice._End, splice._Poller))]
        self.assertEqual(left, [])
        self.assertEqual(poller.fileno(), -1)  # its epoll set is closed
        self.assertEqual(poller.open, 0)
        self.assertEqual([relay.up for relay in relays], [4] * count)
        self.assertEqual([relay.down for relay in relays], [6] * count)
