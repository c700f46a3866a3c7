"""
Routes against real upstream proxies: chains through microsocks, Dante and
tinyproxy (HTTP CONNECT), failover past a dead upstream, wrong upstream
credentials, reply codes passed on, egress pools, reload, and the
commands refused through a route.

Every destination here tells each connection the address it came from, so
a test compares the way the rules chose with the way the connection came:
microsocks and tinyproxy are started with their outgoing address on
127.0.0.2 or 127.0.0.3 (C{-b}, C{Bind}), egress pools use those addresses.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from socks5twist.routes import egress_for, parse_egress

from . import rawsocks, socks_peers
from .conftest import SocksServer, free_port, wait_until

Addr = tuple[str, int]


class _PeerHandler(socketserver.BaseRequestHandler):
    """Says where the connection came from (C{peer=HOST}), then echoes one read."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        with contextlib.suppress(OSError):
            sock.sendall(f"peer={self.client_address[0]}\n".encode())
            data = sock.recv(65536)
            if data:
                sock.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def destination() -> Iterator[Addr]:
    server = _Server(("127.0.0.1", 0), _PeerHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def destinations() -> Iterator[Callable[[], Addr]]:
    """Start as many destinations as a test needs (each on its own port)."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(destination())


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    return free_port()


def peer_seen(
    server: SocksServer,
    host: str,
    port: int,
    credentials: tuple[bytes, bytes] | None = None,
) -> tuple[int, str | None]:
    """CONNECT through C{server}; the reply code and the source the destination saw."""
    sock, code = rawsocks.connect(server.address, host, port, credentials)
    with sock:
        if code != 0:
            return code, None
        line = b""
        while not line.endswith(b"\n"):
            chunk = sock.recv(100)
            assert chunk, f"closed after {line!r}"
            line += chunk
        sock.sendall(b"ping")
        assert rawsocks.recv_exact(sock, 4) == b"ping"
        assert line.startswith(b"peer=")
        return code, line[5:].strip().decode()


def write_rules(path: Path, *rules: str, default: str = "deny") -> Path:
    path.write_text(f'default = "{default}"\n\n' + "\n".join(rules))
    return path


def rule(port: int, route: str, **extra: str) -> str:
    more = "".join(f"{key} = {value}\n" for key, value in extra.items())
    return f'[[rule]]\naction = "allow"\nports = [{port}]\n{route}\n{more}'


def session_line(server: SocksServer, needle: str) -> str:
    def found() -> str | None:
        return next((x for x in server.session_lines() if needle in x), None)

    line = wait_until(found, 5, f"a session line with {needle!r}")
    assert isinstance(line, str)
    return line


# -- chains -------------------------------------------------------------------


def test_chains_through_microsocks_dante_and_tinyproxy_come_from_their_last_hop(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Any
) -> None:
    """
    One destination port per route; the destination sees the outgoing
    address of the route's last hop, and the session line names the route,
    never its credentials.
    """
    one, two, three, four = (destinations() for _ in range(4))
    with (
        socks_peers.microsocks("alice", "s3cret", bind="127.0.0.2") as ms_auth,
        socks_peers.microsocks(bind="127.0.0.3") as ms3,
        socks_peers.dante(tmp_path) as dante,
        socks_peers.tinyproxy(tmp_path, "bob", "pa55", bind="127.0.0.3") as tiny,
    ):
        ms_url = f"socks5://alice:s3cret@127.0.0.1:{ms_auth[1]}"
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(one[1], f'via = ["{ms_url}"]'),
            # Two hops: Dante, then microsocks, which connects from 127.0.0.3.
            rule(two[1], f'via = ["socks5://127.0.0.1:{dante[1]}", "socks5://127.0.0.1:{ms3[1]}"]'),
            # HTTP CONNECT with Basic authentication.
            rule(three[1], f'via = ["http://bob:pa55@127.0.0.1:{tiny[1]}"]'),
            # SOCKS5 with RFC 1929, then HTTP: the hops mix.
            rule(four[1], f'via = ["{ms_url}", "http://bob:pa55@127.0.0.1:{tiny[1]}"]'),
        )
        server = start_server("--rules", str(rules))
        assert peer_seen(server, *one) == (0, "127.0.0.2")
        assert peer_seen(server, *two) == (0, "127.0.0.3")
        assert peer_seen(server, *three) == (0, "127.0.0.3")
        assert peer_seen(server, *four) == (0, "127.0.0.3")
        line = session_line(server, f"-> 127.0.0.1:{four[1]}")
        assert f"route=socks5://127.0.0.1:{ms_auth[1]}>http://127.0.0.1:{tiny[1]}" in line
        assert "s3cret" not in server.log() and "pa55" not in server.log()
        line = session_line(server, f"-> 127.0.0.1:{two[1]}")
        assert f"route=socks5://127.0.0.1:{dante[1]}>socks5://127.0.0.1:{ms3[1]}" in line


def test_names_go_to_the_upstream_unresolved(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Any
) -> None:
    """A rule about names decides on the name; the upstream gets the name."""
    dest = destinations()
    with socks_peers.microsocks() as ms:
        rules = write_rules(
            tmp_path / "rules.toml",
            '[[rule]]\naction = "allow"\nnames = ["localhost"]\n'
            f'via = ["socks5://127.0.0.1:{ms[1]}"]\n',
        )
        server = start_server("--rules", str(rules))
        code, peer = peer_seen(server, "localhost", dest[1])
        line = session_line(server, f"CONNECT localhost:{dest[1]}")
        assert f"-> localhost:{dest[1]}" in line and f"route=socks5://127.0.0.1:{ms[1]}" in line
        # microsocks resolves localhost itself: to 127.0.0.1, or to ::1 first,
        # where this destination does not listen (then it says so: X'05').
        assert (code, peer) in ((0, "127.0.0.1"), (5, None))


# -- failures -----------------------------------------------------------------


def test_reply_codes_of_the_last_hop_are_passed_on(
    start_server: Callable[..., SocksServer], tmp_path: Path, destinations: Any
) -> None:
    """X'05' from microsocks stays X'05'; tinyproxy's 403 is X'02', its 500 X'01'."""
    dest = destinations()
    refused_a, refused_b = closed_port(), closed_port()
    with (
        socks_peers.microsocks() as ms,
        # The HTTP proxy may CONNECT to refused_b only.
        socks_peers.tinyproxy(tmp_path, connect_ports=(refused_b,)) as tiny,
    ):
        http = f'via = ["http://127.0.0.1:{tiny[1]}"]'
        rules = write_rules(
            tmp_path / "rules.toml",
            rule(refused_a, f'via = ["socks5://127.0.0.1:{ms[1]}"]'),
            rule(refused_b, http),
            rule(dest[1], http),
        )
        server = start_server("--rules", str(rules))
        assert rawsocks.connect(server.address, "127.0.0.1", refused_a)[1] == 5
        assert rawsocks.connect(server.address, "127.0.0.1", refused_b)[1] == 1
        assert rawsocks.connect(server.address, *dest)[1] == 2
        line = session_line(server, f"-> 127.0.0.1:{dest[1]}")
        assert "reply=0x02" in line and "HTTP 403" in line
        line = session_line(server, f"-> 127.0.0.1:{refused_b}")
        assert "reply=0x01" in line and "HTTP 500" in line
        # An upstream that answered is not marked down.
        assert "passed over" not in server.log()
