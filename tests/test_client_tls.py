"""
TLS with L{SOCKS5ClientEndpoint}, on the real reactor: socks5twist
listening on an C{ssl:} port reached through a C{tls:} proxy endpoint, a
certificate that fails verification (and the error the caller gets), and
TLS to the destination through the tunnel.  The certificates come from a
CA that each test makes (L{tests.tlscerts}); every address is loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString, wrapClientTLS
from twisted.internet.protocol import Protocol, ServerFactory

from socks5twist.client import SOCKS5ClientEndpoint

from .conftest import free_port, require_module
from .test_client_endpoint import Destination, destination, eventually, exchange, failure_of, tcp

__all__ = ["destination"]  # a fixture, used by name


@pytest.fixture
def authority(tmp_path: Path) -> Any:
    require_module("OpenSSL")
    require_module("service_identity")
    from .tlscerts import Authority

    return Authority(tmp_path / "pki")


@pytest.fixture
def tls_server(start_server: Any, authority: Any) -> Any:
    """socks5twist listening on TLS only, with a certificate for C{localhost} alone."""
    issued = authority.issue("proxy", "localhost")
    port = free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={issued.key}:certKey={issued.cert}"
    return start_server("--port", listen, connect_to=("127.0.0.1", port))


def trusting(authority: Any, name: str) -> Any:
    """Client TLS options that trust only C{authority} and expect C{name}."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    return optionsForClientTLS(name, trustRoot=Certificate.loadPEM(authority.pem))


@pytest_twisted.inlineCallbacks
def test_endpoint_string_with_a_tls_proxy(tls_server, authority, destination):
    port = tls_server.address[1]
    proxy = f"tls\\:localhost\\:{port}\\:trustRoots={authority.ca_dir}"
    endpoint = clientFromString(
        reactor, f"socks5:127.0.0.1:{destination.port}:proxy={proxy}:timeout=10"
    )
    tunnel, line, rest = yield exchange(endpoint, b"over TLS")
    assert rest == b"over TLS" and line.startswith("peer=127.0.0.1 ")
    assert (tunnel.getPeer().host, tunnel.getPeer().port) == ("127.0.0.1", destination.port)
    [session] = yield eventually(tls_server.session_lines, 5, "the session line")
    assert f"CONNECT 127.0.0.1:{destination.port} " in session and "reply=0x00" in session


@pytest_twisted.inlineCallbacks
def test_a_tls_proxy_with_an_untrusted_certificate_fails_with_the_tls_error(
    tls_server, tmp_path, destination
):
    from OpenSSL.SSL import Error

    from .tlscerts import Authority

    stranger = Authority(tmp_path / "stranger", "a CA nobody trusts")
    proxy = wrapClientTLS(trusting(stranger, "localhost"), tcp(tls_server.address))
    error = yield failure_of(SOCKS5ClientEndpoint(proxy, "127.0.0.1", destination.port))
    # The way to the proxy failed: its endpoint's own error, not a SOCKS5 one.
    assert isinstance(error, Error) and "certificate verify failed" in str(error)
    assert destination.peers == []
    [session] = yield eventually(tls_server.session_lines, 5, "the session line")
    assert "client left in greeting" in session


@pytest_twisted.inlineCallbacks
def test_a_tls_proxy_whose_certificate_names_another_host_fails(tls_server, authority, destination):
    from service_identity import VerificationError

    # The certificate is for localhost; the client expects 127.0.0.1.
    proxy = wrapClientTLS(trusting(authority, "127.0.0.1"), tcp(tls_server.address))
    error = yield failure_of(SOCKS5ClientEndpoint(proxy, "127.0.0.1", destination.port))
    assert isinstance(error, VerificationError), repr(error)
    assert destination.peers == []


@pytest.fixture
def tls_destination(authority: Any) -> Any:
    """A L{Destination} behind TLS on 127.0.0.1, with a certificate for C{localhost}."""
    issued = authority.issue("destination", "localhost")
    factory: Any = ServerFactory.forProtocol(Destination)
    factory.peers = []
    listening = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={issued.key}:certKey={issued.cert}"
    ).listen(factory)
    ports: list[Any] = []
    listening.addCallback(ports.append)  # (a TCP listen fires at once)
    [port] = ports
    factory.port = port.getHost().port
    yield factory
    port.stopListening()


@pytest_twisted.inlineCallbacks
def test_tls_to_the_destination_through_a_tls_proxy(tls_server, authority, tls_destination):
    proxy = wrapClientTLS(trusting(authority, "localhost"), tcp(tls_server.address))
    tunnel = SOCKS5ClientEndpoint(proxy, "localhost", tls_destination.port, timeout=10)
    endpoint = wrapClientTLS(trusting(authority, "localhost"), tunnel)
    payload = b"TLS inside TLS" * 1000
    _, line, rest = yield exchange(endpoint, payload)
    assert rest == payload and line.startswith("peer=127.0.0.1 ")
    [session] = yield eventually(tls_server.session_lines, 5, "the session line")
    assert f"CONNECT localhost:{tls_destination.port} -> 127.0.0.1:" in session
    # The proxy relayed TLS records, not the payload in clear: more bytes went up.
    up = int(session.split(" up=")[1].split()[0])
    assert up > len(payload)


@pytest_twisted.inlineCallbacks
def test_tls_through_the_tunnel_checks_the_destinations_certificate(
    tls_server, authority, tmp_path, tls_destination
):
    from OpenSSL.SSL import Error

    from .tlscerts import Authority

    stranger = Authority(tmp_path / "stranger", "a CA nobody trusts")
    proxy = wrapClientTLS(trusting(authority, "localhost"), tcp(tls_server.address))
    tunnel = SOCKS5ClientEndpoint(proxy, "127.0.0.1", tls_destination.port, timeout=10)
    endpoint = wrapClientTLS(trusting(stranger, "localhost"), tunnel)
    protocol = yield exchange_failure(endpoint)
    assert protocol.reason.check(Error), protocol.reason
    assert "certificate verify failed" in str(protocol.reason.value)


def exchange_failure(endpoint: Any) -> Any:
    """Connect, then wait for the connection to be lost: the protocol (C{reason}, C{received})."""
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory

    class Lost(Protocol):
        def __init__(self) -> None:
            self.done: Deferred[Any] = Deferred()
            self.received = b""

        def dataReceived(self, data: bytes) -> None:
            self.received += data

        def connectionLost(self, reason: Any = None) -> None:
            self.reason = reason
            self.done.callback(self)

    protocol = Lost()
    d = endpoint.connect(Factory.forProtocol(lambda: protocol)).addTimeout(30, reactor)
    d.addCallback(lambda _: protocol.done.addTimeout(30, reactor))
    return d


@pytest_twisted.inlineCallbacks
def test_a_failure_reply_on_a_tls_listener_closes_the_session_at_once(tls_server, authority):
    from socks5twist.client import ConnectionRefused

    proxy = wrapClientTLS(trusting(authority, "localhost"), tcp(tls_server.address))
    error = yield failure_of(SOCKS5ClientEndpoint(proxy, "127.0.0.1", free_port()))
    assert isinstance(error, ConnectionRefused)
    # (A CONNECT reads nothing until its tunnel opens: a TLS connection
    # that stayed paused could not close, and the line came at shutdown.)
    [session] = yield eventually(tls_server.session_lines, 5, "the session line")
    assert "reply=0x05" in session


class Farewell(Protocol):
    """Says goodbye and closes as soon as it is connected."""

    def connectionMade(self) -> None:
        self.transport.write(b"bye")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


@pytest_twisted.inlineCallbacks
def test_the_destination_closing_closes_a_tls_client_with_close_notify(tls_server, authority):
    from twisted.internet.error import ConnectionDone

    factory: Any = ServerFactory.forProtocol(Farewell)
    port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        proxy = wrapClientTLS(trusting(authority, "localhost"), tcp(tls_server.address))
        endpoint = SOCKS5ClientEndpoint(proxy, "127.0.0.1", port.getHost().port, timeout=10)
        protocol = yield exchange_failure(endpoint)
    finally:
        port.stopListening()
    assert protocol.received == b"bye"
    # TLS cannot half-close: the destination's EOF closes the client's
    # connection whole, with TLS's close_notify (not a bare TCP FIN under it).
    assert protocol.reason.check(ConnectionDone), protocol.reason


def test_a_tls_client_that_never_answers_close_notify_is_reset(start_server, authority):
    import socket
    import ssl

    from socks5twist.relay import FLUSH_GRACE

    from .conftest import wait_until

    issued = authority.issue("proxy", "localhost")
    port = free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={issued.key}:certKey={issued.cert}"
    server = start_server(
        "--handshake-timeout", "1", "--port", listen, connect_to=("127.0.0.1", port)
    )
    context = ssl.create_default_context(cafile=str(authority.ca_file))
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
    ):
        # The TLS handshake is done; the client says nothing and reads
        # nothing, so it never answers the server's close_notify.
        [line] = wait_until(server.session_lines, 1 + FLUSH_GRACE + 10, "the session to end")
        assert "(handshake timeout)" in line
        assert float(line.split(" duration=")[1].split("s ")[0]) < 1 + FLUSH_GRACE + 5
