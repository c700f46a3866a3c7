"""
BIND against the real server: a raw client with a second socket playing the
application server, the peer check, hang-ups, timeouts, listener cleanup, and
dante's socksify driving an active-mode FTP download with curl.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from . import rawsocks
from .conftest import SocksServer, require_tool, wait_until


def bind_request(server: SocksServer, peer: str) -> tuple[socket.socket, str, int]:
    """Send BIND naming C{peer}; return the control socket and the first reply's address."""
    control = rawsocks.open_socket(server.address)
    control.sendall(b"\x05\x01\x00")
    assert rawsocks.recv_exact(control, 2) == b"\x05\x00"
    control.sendall(b"\x05\x02\x00" + rawsocks.address_bytes(peer, 0))
    code, host, port, raw = rawsocks.read_reply(control)
    assert code == 0, raw
    return control, host, port


def refused(host: str, port: int) -> bool:
    """Whether nothing listens on C{host}:C{port} any more."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # caught in the backlog of a listener that is closing: ask again
    return False


def test_bind_two_replies_and_data_both_ways(socks_server: SocksServer) -> None:
    control, host, port = bind_request(socks_server, "127.0.0.2")
    assert host == "127.0.0.1" and port > 0
    # Someone else connects first: closed, and the wait goes on.
    intruder = socket.create_connection((host, port), timeout=5, source_address=("127.0.0.1", 0))
    assert intruder.recv(10) == b""
    intruder.close()
    # The application server, from the address the client named.
    peer = socket.create_connection((host, port), timeout=5, source_address=("127.0.0.2", 0))
    code, peer_host, peer_port, raw = rawsocks.read_reply(control)
    assert (code, peer_host, peer_port, len(raw)) == (0, "127.0.0.2", peer.getsockname()[1], 10)
    wait_until(lambda: refused(host, port), 2, "the listener to close after its one connection")

    up, down = os.urandom(1_500_000), os.urandom(2_500_000)
    received: dict[str, bytes] = {}

    def drain(name: str, sock: socket.socket) -> None:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        received[name] = data

    readers = [
        threading.Thread(target=drain, args=("peer", peer)),
        threading.Thread(target=drain, args=("client", control)),
    ]
    for t in readers:
        t.start()
    control.sendall(up)
    control.shutdown(socket.SHUT_WR)
    peer.sendall(down)
    peer.shutdown(socket.SHUT_WR)
    for t in readers:
        t.join(30)
    assert hashlib.sha256(received["peer"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received["client"]).digest() == hashlib.sha256(down).digest()
    control.close()
    peer.close()
    wait_until(socks_server.session_lines, 5, "the session line")
    [line] = socks_server.session_lines()
    assert f"BIND 127.0.0.2:0 -> 127.0.0.2:{peer_port} bound=127.0.0.1:{port}" in line
    assert "reply=0x00/0x00" in line and f"up={len(up)} down={len(down)}" in line
    assert "not the expected peer" in socks_server.log()


def test_bind_over_ipv6(start_server) -> None:
    server = start_server(host="::1")
    control, host, port = bind_request(server, "::")
    assert host == "::1"
    peer = socket.create_connection((host, port), timeout=5)
    code, peer_host, _, raw = rawsocks.read_reply(control)
    assert (code, peer_host, len(raw)) == (0, "::1", 22)
    peer.sendall(b"v6")
    assert rawsocks.recv_exact(control, 2) == b"v6"


def test_client_hanging_up_closes_the_listener(socks_server: SocksServer) -> None:
    baseline = socks_server.open_fds()
    control, host, port = bind_request(socks_server, "127.0.0.2")
    control.close()
    wait_until(lambda: refused(host, port), 2, "the listener to close")
    wait_until(lambda: socks_server.open_fds() <= baseline, 5, "descriptors back to baseline")


def test_bind_timeout(start_server) -> None:
    server = start_server("--bind-timeout", "1")
    control, host, port = bind_request(server, "127.0.0.2")
    started = time.monotonic()
    code, _, _, raw = rawsocks.read_reply(control)
    assert code == 4 and len(raw) == 10
    assert control.recv(10) == b""
    assert 0.5 < time.monotonic() - started < 5
    wait_until(lambda: refused(host, port), 2, "the listener to close")
    wait_until(server.session_lines, 5, "the session line")
    assert "no BIND peer within 1 second)" in server.session_lines()[0]


def test_no_listener_outlives_its_session(socks_server: SocksServer) -> None:
    baseline = socks_server.open_fds()
    ports = []
    for i in range(30):
        control, host, port = bind_request(socks_server, "0.0.0.0")
        ports.append(port)
        if i % 3 == 0:
            peer = socket.create_connection((host, port), timeout=5)
            rawsocks.read_reply(control)
            peer.close()
        control.close()
    wait_until(lambda: len(socks_server.session_lines()) == 30, 10, "30 session lines")
    wait_until(lambda: socks_server.open_fds() <= baseline, 5, "descriptors back to baseline")
    assert all(refused("127.0.0.1", p) for p in ports)


def test_socksify_active_ftp_download(socks_server: SocksServer, tmp_path: Path) -> None:
    """dante's socksify makes curl's active-mode FTP data connection a SOCKS BIND."""
    socksify = require_tool("socksify")
    curl = require_tool("curl")
    root = tmp_path / "ftp"
    root.mkdir()
    payload = os.urandom(700_000)
    (root / "file.bin").write_bytes(payload)
    ftp = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("ftp_server.py")), str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert ftp.stdout is not None
        ftp_port = int(ftp.stdout.readline())
        conf = tmp_path / "socks.conf"
        conf.write_text(
            "route {\n"
            f"  from: 0.0.0.0/0 to: 0.0.0.0/0 via: 127.0.0.1 port = {socks_server.address[1]}\n"
            "  proxyprotocol: socks_v5\n"
            "  command: connect bind\n"
            "  method: none\n"
            "}\n"
        )
        out = tmp_path / "out.bin"
        result = subprocess.run(
            [
                socksify,
                curl,
                "-sS",
                "--max-time",
                "30",
                "--ftp-port",
                "-",
                f"ftp://127.0.0.1:{ftp_port}/file.bin",
                "-o",
                str(out),
            ],
            env={**os.environ, "SOCKS_CONF": str(conf)},
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload).digest()
    finally:
        ftp.terminate()
        ftp.wait(10)
    wait_until(socks_server.session_lines, 5, "the session line")
    binds = [line for line in socks_server.session_lines() if " BIND " in line]
    assert binds, socks_server.log()
    assert "reply=0x00/0x00" in binds[0] and f"down={len(payload)}" in binds[0]


@pytest.mark.parametrize("peer", ["127.0.0.2"])
def test_bind_naming_a_host_by_name(socks_server: SocksServer, peer: str) -> None:
    """A name is resolved by the proxy and any of its addresses may connect."""
    control = rawsocks.open_socket(socks_server.address)
    control.sendall(b"\x05\x01\x00\x05\x02\x00" + rawsocks.address_bytes("localhost", 0))
    assert rawsocks.recv_exact(control, 2) == b"\x05\x00"
    code, host, port, _ = rawsocks.read_reply(control)
    assert code == 0
    wrong = socket.create_connection((host, port), timeout=5, source_address=(peer, 0))
    assert wrong.recv(10) == b""
    right = socket.create_connection((host, port), timeout=5, source_address=("127.0.0.1", 0))
    assert rawsocks.read_reply(control)[0] == 0
    right.close()
