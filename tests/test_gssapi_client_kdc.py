"""
L{SOCKS5ClientEndpoint}'s first GSSAPI step, which asks the KDC for the
proxy's ticket when the cache holds only alice's TGT, against a real MIT
library: a KDC that accepts but never answers (MIT waits 27 seconds for it
here) leaves the reactor running and the connect fails at its timeout; a KDC
that is down fails it at once with the library's reason.  Either way the
proxy is never connected to.  With the KDC up, C{connect()} and C{bind()}
work through socks5twist itself (every level: C{test_gssapi_client}).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from socks5twist.client import GSSAPIError, HandshakeTimeout, SOCKS5ClientEndpoint
from socks5twist.gsswire import Protection

from .kerberos import Realm
from .test_client_endpoint import Collect, destination, eventually, failure_of, tcp
from .test_gssapi_client import alice, rfc1961

__all__ = ["alice", "destination", "rfc1961"]  # the fixtures


@implementer(IStreamClientEndpoint)
class Counted:
    """The proxy's endpoint, counting the connections asked of it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.connects = 0

    def connect(self, factory: Any) -> Any:
        self.connects += 1
        return self.inner.connect(factory)


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """
    A loopback port where a KDC would be, that never answers: TCP
    connections are accepted (by the kernel, into the backlog), datagrams
    read by no one.  Closing it resets what MIT still waits on.
    """
    for _ in range(20):
        stream = socket.socket()
        stream.bind(("127.0.0.1", 0))
        port = stream.getsockname()[1]
        datagram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            datagram.bind(("127.0.0.1", port))
            break
        except OSError:
            stream.close()
            datagram.close()
    else:
        raise AssertionError("no port free for both TCP and UDP")
    stream.listen(16)
    try:
        yield port
    finally:
        stream.close()
        datagram.close()


@contextlib.contextmanager
def kdc_at(realm: Realm, port: int, workdir: Path) -> Iterator[None]:
    """This process's Kerberos finds the realm's KDC at 127.0.0.1:C{port} (the cache kept)."""
    config = (realm.workdir / "krb5.conf").read_text()
    kdc = f"127.0.0.1:{realm.port}"
    assert kdc in config
    path = workdir / f"krb5-kdc-{port}.conf"
    path.write_text(config.replace(kdc, f"127.0.0.1:{port}"))
    saved = os.environ["KRB5_CONFIG"]
    os.environ["KRB5_CONFIG"] = str(path)
    try:
        yield
    finally:
        os.environ["KRB5_CONFIG"] = saved


class Ticks:
    """A LoopingCall every 50 ms: the longest gap between ticks is how long the reactor froze."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._loop = LoopingCall(lambda: self.times.append(time.monotonic()))
        self._loop.start(0.05)

    def stop(self) -> float:
        self._loop.stop()
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return max(gaps, default=float("inf"))


@inlineCallbacks
def bind_failure_of(endpoint: Any) -> Any:
    """The exception that C{endpoint.bind} fails with."""
    listens: list[Any] = []
    d = endpoint.bind(Factory.forProtocol(Collect), listens.append).addTimeout(30, reactor)
    try:
        yield d
    except Exception as e:
        assert listens == []
        return e
    raise AssertionError("bound, but should not have")


def pool_idle() -> bool:
    return not reactor.getThreadPool().working  # type: ignore[attr-defined]


@pytest_twisted.inlineCallbacks
def test_a_kdc_that_never_answers_does_not_freeze_the_reactor(
    rfc1961, alice, kerberos_realm, destination, tmp_path
):
    server = rfc1961("integrity,confidentiality")
    proxy = Counted(tcp(server.address))
    endpoint = SOCKS5ClientEndpoint(
        proxy, "127.0.0.1", destination.port, gssapi="rcmd@localhost", timeout=2
    )
    with blackhole() as port, kdc_at(kerberos_realm, port, tmp_path):
        ticks = Ticks()
        started = time.monotonic()
        error = yield failure_of(endpoint)
        elapsed = time.monotonic() - started
        longest = ticks.stop()
        assert not pool_idle()  # MIT still waits, in its thread
    assert type(error) is HandshakeTimeout
    assert "waiting for GSSAPI's first context step (the KDC)" in str(error)
    assert 1.9 < elapsed < 4, elapsed
    assert len(ticks.times) >= 20 and longest < 0.5, (len(ticks.times), longest)
    assert proxy.connects == 0 and destination.peers == []
    yield eventually(pool_idle, 30, "MIT's thread to give up")


@pytest_twisted.inlineCallbacks
def test_a_kdc_that_is_down_fails_at_once_without_connecting(
    rfc1961, alice, kerberos_realm, destination, tmp_path
):
    server = rfc1961("integrity,confidentiality")
    proxy = Counted(tcp(server.address))
    with blackhole() as port:
        pass  # closed: nothing listens there now
    with kdc_at(kerberos_realm, port, tmp_path):
        for start in ("connect", "bind"):
            endpoint = SOCKS5ClientEndpoint(
                proxy, "127.0.0.1", destination.port, gssapi="rcmd@localhost", timeout=10
            )
            started = time.monotonic()
            error = yield (failure_of if start == "connect" else bind_failure_of)(endpoint)
            assert time.monotonic() - started < 5
            assert type(error) is GSSAPIError
            assert "Cannot contact any KDC for realm 'SOCKS.TEST'" in str(error)
            assert str(error).isprintable()
    assert proxy.connects == 0 and destination.peers == []


@pytest_twisted.inlineCallbacks
def test_bind_through_socks5twist_with_the_ticket_asked_for_in_a_thread(
    start_server, kerberos_realm, alice
):
    """C{bind()}'s first step in a thread too: the peer's bytes arrive protected."""
    server = start_server(
        "--gssapi",
        f"--gssapi-keytab={kerberos_realm.keytab_path}",
        "--gssapi-protection=integrity",
        env=kerberos_realm.env,
    )
    endpoint = SOCKS5ClientEndpoint(
        tcp(server.address),
        "127.0.0.1",
        0,
        gssapi="rcmd@localhost",
        gssapi_protection=Protection.INTEGRITY,
    )
    listens: list[Any] = []
    client = Collect()
    accepted = endpoint.bind(Factory.forProtocol(lambda: client), listens.append)
    [where] = yield eventually(lambda: listens, 10, "the first reply")
    peer = Collect()
    peer_endpoint = TCP4ClientEndpoint(reactor, where.host, where.port, timeout=10)
    yield peer_endpoint.connect(Factory.forProtocol(lambda: peer))
    protocol = yield accepted.addTimeout(30, reactor)
    assert protocol is client
    assert client.transport.protection.level is Protection.INTEGRITY  # type: ignore[union-attr]
    up, down = os.urandom(100_000), os.urandom(100_000)
    client.transport.write(up)  # type: ignore[union-attr]
    peer.transport.write(down)  # type: ignore[union-attr]
    assert (yield peer.arrived(len(up))) == up
    assert (yield client.arrived(len(down))) == down
    client.transport.loseConnection()  # type: ignore[union-attr]
    peer.transport.loseConnection()  # type: ignore[union-attr]
    [session] = yield eventually(server.session_lines, 10, "the session line")
    assert "user=alice@SOCKS.TEST BIND" in session and " gssapi=integrity " in session
