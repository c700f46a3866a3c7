"""
The drain deadline on the real server: a client that stops reading after
its destination closed (or a destination that stops reading after its
client did) no longer holds its session, with the splice relay, the stream
relay and over TLS; a slow client that keeps reading is never cut; and with
--drain-timeout 0 such a session is held, as it was before the deadline.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from . import rawsocks
from .conftest import SocksServer, free_port, require_module, wait_until

RELAYS = pytest.mark.parametrize("relay", ["splice", "stream"])
STUCK_CLIENT = "(client stopped reading after the destination closed)"
STUCK_DESTINATION = "(destination stopped reading after the client closed)"
# What the destination sends: far past a small client window, and yet what
# the proxy takes whole on loopback, so it reads the destination's EOF.
TOTAL = 128 * 1024
WINDOW = 4096  # the client's SO_RCVBUF


def start(start_server: Any, relay: str, *args: str) -> SocksServer:
    return start_server(*args, *(["--no-splice"] if relay == "stream" else []))


class Destination:
    """A loopback destination that sends C{data} to its first client, then closes."""

    def __init__(self, data: bytes, close: bool = True, window: int | None = None) -> None:
        self.listener = socket.socket()
        if window is not None:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(10)
        self.address = self.listener.getsockname()
        self.sent = threading.Event()
        self.conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, args=(data, close), daemon=True)
        self._thread.start()

    def _serve(self, data: bytes, close: bool) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        conn.settimeout(10)
        conn.sendall(data)
        self.sent.set()
        if close:
            conn.close()

    def close(self) -> None:
        self._thread.join(10)
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


def small_window_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WINDOW)
    sock.settimeout(10)
    return sock


def socks_connect(sock: Any, address: tuple[str, int]) -> None:
    sock.sendall(b"\x05\x01\x00")
    assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(b"\x05\x01\x00" + rawsocks.address_bytes(*address))
    code, *_ = rawsocks.read_reply(sock)
    assert code == 0


def line_with(server: SocksServer, text: str, timeout: float) -> str:
    [line] = wait_until(
        lambda: [x for x in server.session_lines() if text in x], timeout, f"a line with {text}"
    )
    return line


def fds(server: SocksServer) -> list[str]:
    """What the server's descriptors are (for a failure's message)."""
    names = []
    for fd in os.listdir(f"/proc/{server.pid}/fd"):
        try:
            names.append(os.readlink(f"/proc/{server.pid}/fd/{fd}"))
        except OSError:
            pass
    return names


def duration(line: str) -> float:
    return float(line.split(" duration=")[1].split("s ")[0])


def read_until_reset(sock: Any) -> int:
    """Read what the socket still holds; the bytes read before the reset."""
    got = 0
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError):
            return got
        if not chunk:
            raise AssertionError(f"a clean EOF after {got} bytes, not a reset")
        got += len(chunk)


@RELAYS
def test_a_client_that_stops_reading_after_the_destination_closed_is_reset(
    start_server: Any, relay: str
) -> None:
    server = start(start_server, relay, "--drain-timeout", "1")
    baseline = server.open_fds()
    destination = Destination(b"d" * TOTAL)
    client = small_window_socket()
    client.connect(server.address)
    socks_connect(client, destination.address)
    assert destination.sent.wait(10)
    line = line_with(server, STUCK_CLIENT, 10)  # the client reads nothing
    assert f"relay={relay}" in line and f"down={TOTAL} " in line
    assert 1.0 <= duration(line) < 5.0, line
    assert read_until_reset(client) < TOTAL
    client.close()
    destination.close()
    try:
        wait_until(lambda: server.open_fds() <= baseline, 10, f"fds back to {baseline}")
    except AssertionError as e:
        raise AssertionError(f"{e}; open: {fds(server)}") from None


@RELAYS
def test_with_zero_such_a_client_holds_its_session(start_server: Any, relay: str) -> None:
    """The reproduction: --drain-timeout 0 is the server as it was."""
    server = start(start_server, relay, "--drain-timeout", "0")
    destination = Destination(b"d" * TOTAL)
    client = small_window_socket()
    client.connect(server.address)
    socks_connect(client, destination.address)
    assert destination.sent.wait(10)
    time.sleep(3)
    assert server.session_lines() == []
    client.close()
    line_with(server, "(closed)", 10)
    destination.close()


@RELAYS
def test_a_slow_client_that_keeps_reading_is_never_cut(start_server: Any, relay: str) -> None:
    server = start(start_server, relay, "--drain-timeout", "1")
    total = 256 * 1024
    destination = Destination(b"s" * total)
    client = small_window_socket()
    client.connect(server.address)
    socks_connect(client, destination.address)
    assert destination.sent.wait(10)
    received = 0
    started = time.monotonic()
    while True:  # 32 KiB every 0.3 seconds (each wait bounded by the timeout)
        time.sleep(0.3)
        chunk = b""
        while len(chunk) < 32 * 1024:
            more = client.recv(32 * 1024 - len(chunk))
            if not more:
                break
            chunk += more
        received += len(chunk)
        if len(chunk) < 32 * 1024:
            break
    assert received == total
    assert time.monotonic() - started > 2.0, "not slow enough to prove anything"
    client.close()
    line = line_with(server, f"down={total} ", 10)
    assert line.endswith("(closed)"), line
    destination.close()


@RELAYS
def test_a_destination_that_stops_reading_after_the_client_closed_is_reset(
    start_server: Any, relay: str
) -> None:
    server = start(start_server, relay, "--drain-timeout", "1")
    destination = Destination(b"", close=False, window=WINDOW)  # reads nothing, stays open
    client = socket.socket()
    client.settimeout(10)
    client.connect(server.address)
    socks_connect(client, destination.address)
    client.sendall(b"u" * (64 * 1024))
    client.shutdown(socket.SHUT_WR)
    line = line_with(server, STUCK_DESTINATION, 10)
    assert f"relay={relay}" in line
    assert 1.0 <= duration(line) < 5.0, line
    client.close()
    destination.close()


def test_over_tls_a_client_that_stops_reading_is_reset(start_server: Any, tmp_path: Path) -> None:
    """
    TLS closes whole (no half-close), and only once the client's own
    close_notify is read: a client that reads nothing held it forever.
    """
    require_module("OpenSSL")
    from .tlscerts import Authority

    authority = Authority(tmp_path / "pki")
    issued = authority.issue("proxy", "localhost")
    port = free_port()
    listen = f"ssl:{port}:interface=127.0.0.1:privateKey={issued.key}:certKey={issued.cert}"
    server = start_server("--port", listen, "--drain-timeout", "1", connect_to=("127.0.0.1", port))
    destination = Destination(b"t" * TOTAL)
    context = ssl.create_default_context(cadata=authority.pem.decode())
    raw = small_window_socket()
    raw.connect(server.address)
    # (Python's ssl reports an EOF without close_notify as b"" unless told not to.)
    client = context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    socks_connect(client, destination.address)
    assert destination.sent.wait(10)
    line = line_with(server, STUCK_CLIENT, 10)
    assert "relay=stream" in line and 1.0 <= duration(line) < 5.0, line
    assert read_until_reset(client) < TOTAL
    client.close()
    destination.close()
