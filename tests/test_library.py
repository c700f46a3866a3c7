"""
socks5twist as a library: L{SOCKS5ServerFactory} composed into a Twisted
program's own L{MultiService}, on the real reactor (pytest-twisted), served
to a client running in a thread.
"""

from __future__ import annotations

import pytest_twisted
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from socks5twist import SOCKS5ServerFactory
from socks5twist.auth import portal_for_checkers
from socks5twist.tap import Options, makeService

from . import rawsocks


def echo_through(
    address: tuple[str, int], echo: tuple[str, int], credentials: tuple[bytes, bytes] | None = None
) -> bytes:
    sock, code = rawsocks.connect(address, *echo, credentials=credentials)
    assert code == 0
    sock.sendall(b"composed")
    data = rawsocks.recv_exact(sock, 8)
    sock.close()
    return data


@pytest_twisted.inlineCallbacks
def test_factory_in_a_multiservice(echo_server):
    top = MultiService()
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    service = StreamServerEndpointService(endpoint, SOCKS5ServerFactory())
    service.setServiceParent(top)
    top.startService()
    try:
        port = yield service._waitingForPort
        address = ("127.0.0.1", port.getHost().port)
        data = yield deferToThread(echo_through, address, echo_server)
        assert data == b"composed"
    finally:
        yield top.stopService()


@pytest_twisted.inlineCallbacks
def test_factory_with_a_portal(echo_server):
    checker = InMemoryUsernamePasswordDatabaseDontUse(carol=b"pw")
    factory = SOCKS5ServerFactory(portal_for_checkers([checker]), idle_timeout=30)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        address = ("127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]
        data = yield deferToThread(echo_through, address, echo_server, (b"carol", b"pw"))
        assert data == b"composed"
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_make_service_composes(echo_server):
    from .conftest import free_port

    options = Options()
    port = free_port()
    options.parseOptions(["--port", f"tcp:{port}:interface=127.0.0.1"])
    top = MultiService()
    makeService(options).setServiceParent(top)
    top.privilegedStartService()
    top.startService()
    try:
        data = yield deferToThread(echo_through, ("127.0.0.1", port), echo_server)
        assert data == b"composed"
    finally:
        yield top.stopService()
