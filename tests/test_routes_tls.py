"""
Route hops over TLS against the real server: socks5twist in front, with a
rule whose C{socks5s://} hop is another socks5twist listening on an
C{ssl:} port, its certificate from a CA that the test makes (the rule's
C{ca_file} trusts it, or a stranger's CA does not, or the certificate
names another host); and an C{https://} hop, tinyproxy behind a TLS
terminator.  Every address is loopback.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import rawsocks, socks_peers
from .conftest import SocksServer, free_port, require_module
from .test_routes import Addr, destinations, peer_seen, rule, session_line, write_rules

__all__ = ["destinations"]  # a fixture, used by name


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Any, Any]:
    """The CA that signed the upstream's certificate, and one that did not."""
    require_module("OpenSSL")
    require_module("service_identity")
    from .tlscerts import Authority

    return Authority(tmp_path / "ca"), Authority(tmp_path / "stranger", "a stranger's CA")


def tls_upstream(start_server: Callable[..., SocksServer], authority: Any) -> SocksServer:
    """socks5twist on TLS only, its certificate for 127.0.0.1 (no name)."""
    issued = authority.issue("upstream", "127.0.0.1")
    port = free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={issued.key}:certKey={issued.cert}"
    return start_server("--port", listen, connect_to=("127.0.0.1", port))


def test_a_socks5s_hop_is_reached_over_tls_and_its_certificate_checked(
    start_server: Callable[..., SocksServer],
    pki: tuple[Any, Any],
    destinations: Callable[[], Addr],
    tmp_path: Path,
) -> None:
    ours, stranger = pki
    upstream = tls_upstream(start_server, ours)
    port = upstream.address[1]
    good, untrusted, misnamed = destinations(), destinations(), destinations()
    rules = write_rules(
        tmp_path / "rules.toml",
        rule(good[1], f'via = ["socks5s://127.0.0.1:{port}"]', ca_file=f'"{ours.ca_file}"'),
        rule(
            untrusted[1], f'via = ["socks5s://127.0.0.1:{port}"]', ca_file=f'"{stranger.ca_file}"'
        ),
        # The certificate names 127.0.0.1, not localhost.
        rule(misnamed[1], f'via = ["socks5s://localhost:{port}"]', ca_file=f'"{ours.ca_file}"'),
    )
    front = start_server("--rules", str(rules))

    assert peer_seen(front, *good) == (0, "127.0.0.1")
    line = session_line(front, f"CONNECT 127.0.0.1:{good[1]}")
    assert f"route=socks5s://127.0.0.1:{port}" in line and "reply=0x00" in line
    session_line(upstream, f"CONNECT 127.0.0.1:{good[1]} ")

    # A certificate no trusted CA signed: the hop failed, X'01', one line naming it.
    assert peer_seen(front, *untrusted) == (1, None)
    failed = session_line(front, f"CONNECT 127.0.0.1:{untrusted[1]}")
    assert "reply=0x01" in failed and "route=none" in failed
    log = front.log()
    assert f"upstream socks5s://127.0.0.1:{port} failed" in log
    assert "certificate verify failed" in log

    # A certificate for another name than the hop's.
    assert peer_seen(front, *misnamed) == (1, None)
    session_line(front, f"CONNECT 127.0.0.1:{misnamed[1]}")
    assert f"upstream socks5s://localhost:{port} failed" in front.log()
    assert "VerificationError(errors=[DNSMismatch(" in front.log()
    # Only the good request reached the upstream's SOCKS5 negotiation.
    upstream.stop()
    assert len([x for x in upstream.session_lines() if "CONNECT" in x]) == 1


class _Terminator(socketserver.BaseRequestHandler):
    """Takes TLS off a connection and relays it to C{server.target} (bounded in time)."""

    def handle(self) -> None:
        server: Any = self.server
        sock: socket.socket = self.request
        sock.settimeout(10)
        try:
            tls = server.context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError):
            return  # a client that refused our certificate
        with tls, socket.create_connection(server.target, timeout=10) as plain:
            with selectors.DefaultSelector() as selector:
                selector.register(tls, selectors.EVENT_READ, plain)
                selector.register(plain, selectors.EVENT_READ, tls)
                while True:
                    ready = selector.select(timeout=10)
                    if not ready:
                        return
                    for key, _ in ready:
                        try:
                            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        except (OSError, ssl.SSLWantReadError):
                            return
                        if not data:
                            return
                        key.data.sendall(data)


class _ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def tls_in_front(target: Addr, cert: Path, key: Path) -> Iterator[Addr]:
    """A TLS listener on 127.0.0.1 whose connections go on to C{target} in clear."""
    server: Any = _ThreadingServer(("127.0.0.1", 0), _Terminator)
    server.target = target
    server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.context.load_cert_chain(cert, key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_an_https_hop_is_tinyproxy_behind_tls(
    start_server: Callable[..., SocksServer],
    pki: tuple[Any, Any],
    destinations: Callable[[], Addr],
    tmp_path: Path,
) -> None:
    ours, _ = pki
    issued = ours.issue("https-proxy", "127.0.0.1")
    dest = destinations()
    with (
        socks_peers.tinyproxy(tmp_path, "bob", "right", bind="127.0.0.3") as tiny,
        tls_in_front(tiny, issued.cert, issued.key) as https,
    ):
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(
                dest[1],
                f'via = ["https://bob:right@127.0.0.1:{https[1]}"]',
                ca_file=f'"{ours.ca_file}"',
            ),
        )
        front = start_server("--rules", str(rules))
        # tinyproxy, reached over TLS, made the connection (from its address).
        assert peer_seen(front, *dest) == (0, "127.0.0.3")
        line = session_line(front, f"CONNECT 127.0.0.1:{dest[1]}")
        assert f"route=https://127.0.0.1:{https[1]}" in line and "right" not in front.log()


def test_a_client_that_closes_first_ends_the_session_through_a_socks5s_hop(
    start_server: Callable[..., SocksServer],
    pki: tuple[Any, Any],
    echo_server: tuple[str, int],
    tmp_path: Path,
) -> None:
    """The front's TLS to the hop closes (close_notify) when the client does."""
    ours, _ = pki
    upstream = tls_upstream(start_server, ours)
    hop = f"socks5s://127.0.0.1:{upstream.address[1]}"
    rules = write_rules(
        tmp_path / "rules.toml",
        rule(echo_server[1], f'via = ["{hop}"]', ca_file=f'"{ours.ca_file}"'),
    )
    front = start_server("--rules", str(rules))
    sock, code = rawsocks.connect(front.address, *echo_server)
    with sock:
        assert code == 0
        sock.sendall(b"ping")
        assert rawsocks.recv_exact(sock, 4) == b"ping"
    # Both sessions end at once (they waited for the server to stop).
    line = session_line(front, f"CONNECT 127.0.0.1:{echo_server[1]}")
    assert f"route={hop} " in line and "up=4 down=4" in line
    session_line(upstream, f"CONNECT 127.0.0.1:{echo_server[1]} ")
