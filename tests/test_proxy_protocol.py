"""
The real server behind a PROXY-protocol balancer (C{haproxy:} ports): the
header believed only from C{--trusted-proxy} peers, the allow-list applied to
the client it names, and malformed headers closed cleanly.  The test itself is
the balancer, on loopback.
"""

from __future__ import annotations

import socket
import subprocess

from . import rawsocks
from .conftest import TWISTD, SocksServer, free_port, wait_until

Addr = tuple[str, int]


def start_behind_balancer(start_server, *args: str) -> SocksServer:
    port = free_port()
    return start_server(  # type: ignore[no-any-return]
        "--port", f"haproxy:tcp:{port}:interface=127.0.0.1", *args, connect_to=("127.0.0.1", port)
    )


def send_header(server: SocksServer, header: bytes) -> socket.socket:
    """Connect from 127.0.0.1 and send C{header} with a SOCKS5 greeting behind it."""
    sock = rawsocks.open_socket(server.address, timeout=5)
    sock.sendall(header + b"\x05\x01\x00")
    return sock


def refused(server: SocksServer, header: bytes) -> bool:
    """
    Whether a connection from 127.0.0.1 that sends C{header} is closed without
    a reply (a reset counts: a socket closed before it is read is reset, and
    that may come as early as the connect).
    """
    try:
        sock = send_header(server, header)
        return sock.recv(16) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_forged_header_from_an_untrusted_peer_is_refused_and_logged_with_its_real_address(
    start_server,
) -> None:
    server = start_behind_balancer(
        start_server, "--trusted-proxy", "127.0.0.2/32", "--allow-client", "127.0.0.2/32"
    )
    assert refused(server, b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 PORT\r\n")
    line = wait_until(
        lambda: [x for x in server.log().splitlines() if "refused PROXY-protocol" in x],
        5,
        "the refusal line",
    )[0]
    assert "from 127.0.0.1:" in line and "not a trusted proxy" in line
    assert "127.0.0.2" not in line
    assert server.session_lines() == []


def test_trusted_balancer_names_the_client_for_the_allow_list_and_the_session_line(
    start_server, echo_server: Addr
) -> None:
    server = start_behind_balancer(
        start_server, "--trusted-proxy", "127.0.0.1/32", "--allow-client", "127.0.0.2/32"
    )
    # The balancer itself (127.0.0.1) is not an allowed client, and neither is 127.0.0.3.
    outsider = send_header(server, b"PROXY TCP4 127.0.0.3 127.0.0.1 5556 1080\r\n")
    assert rawsocks.recv_exact(outsider, 2) == b"\x05\xff"
    client = send_header(server, b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 1080\r\n")
    assert rawsocks.recv_exact(client, 2) == b"\x05\x00"
    client.sendall(b"\x05\x01\x00" + rawsocks.address_bytes(*echo_server))
    assert rawsocks.read_reply(client)[0] == 0
    client.sendall(b"through the balancer")
    client.shutdown(socket.SHUT_WR)  # the half-close passes through the wrapper
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    assert received.startswith(b"through the balancer" + b"SHA256:")
    client.close()
    wait_until(lambda: len(server.session_lines()) == 2, 5, "two session lines")
    log = server.log()
    assert "refused client 127.0.0.3:5556: not in the allowed client networks" in log
    [served] = [x for x in server.session_lines() if "CONNECT" in x]
    assert "session 127.0.0.2:5555 " in served


def test_malformed_headers_from_the_trusted_balancer_are_a_clean_close_with_one_line(
    start_server,
) -> None:
    server = start_behind_balancer(start_server, "--trusted-proxy", "127.0.0.1")
    headers = [
        b"PROXY TCP4 999.1.1.1 x y z\r\n",
        b"PROXY TCP4 127.0.0.2 127.0.0.1 5555 PORT\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04\x7f\x00\x00\x01",  # v2, length too short
        b"GET / HTTP/1.0\r\n\r\n",
    ]
    for header in headers:
        assert refused(server, header)
    lines = wait_until(
        lambda: (
            [x for x in server.log().splitlines() if "malformed PROXY header from 127.0.0.1:" in x]
            if len([x for x in server.log().splitlines() if "malformed PROXY" in x]) == 4
            else None
        ),
        5,
        "four malformed-header lines",
    )
    assert "999.1.1.1 x y z" in lines[0]
    assert "\\x00" in lines[2]
    # (The fixture checks that the log has no traceback and no unhandled error.)


def test_haproxy_port_without_trusted_proxy_does_not_start_and_says_what_to_add() -> None:
    port = free_port()
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "socks5", "--port", f"haproxy:tcp:{port}"],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).decode().strip()
    assert output.count("\n") == 0, output
    assert output.startswith("twistd socks5: error: --port haproxy:tcp:"), output
    assert "--trusted-proxy" in output


def test_workers_believe_trusted_balancers_only_too(start_server, echo_server: Addr) -> None:
    """Every process, the workers' inherited sockets included, wraps with our listener."""
    server = start_behind_balancer(
        start_server, "--workers", "2", "--trusted-proxy", "127.0.0.2", "--handshake-timeout", "5"
    )
    wait_until(lambda: server.log().count("] listening on ") >= 2, 15, "both processes to listen")
    forged = b"PROXY TCP4 127.0.0.9 127.0.0.1 5555 1080\r\n"
    for _ in range(20):
        assert refused(server, forged)
    for _ in range(10):
        sock = socket.create_connection(server.address, timeout=5, source_address=("127.0.0.2", 0))
        sock.sendall(forged + b"\x05\x01\x00")
        assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00" + rawsocks.address_bytes(*echo_server))
        assert rawsocks.read_reply(sock)[0] == 0
        sock.close()
    lines = wait_until(
        lambda: len(server.session_lines()) == 10 and server.session_lines(), 10, "ten sessions"
    )
    assert all("session 127.0.0.9:5555 " in line for line in lines)
