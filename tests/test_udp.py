"""
UDP ASSOCIATE against the real server: PySocks' UDP socket through a local
echo server, a client behind (simulated) NAT, spoofed sources, fragments,
malformed headers, IPv6, and the relay's ports dying with the control
connection.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import rawsocks
from .conftest import SocksServer, require_module, socket_inodes, wait_until


@pytest.fixture(scope="module")
def udp_echo() -> Iterator[dict[int, tuple[str, int]]]:
    """UDP echo servers on 127.0.0.1 and ::1 that answer with the SHA-256 of what they got."""
    servers: dict[int, tuple[str, int]] = {}
    sockets = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.settimeout(0.2)
        sockets.append(sock)
        servers[4 if family == socket.AF_INET else 6] = (host, sock.getsockname()[1])
    stop = threading.Event()

    def serve(sock: socket.socket) -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(b"echo:" + hashlib.sha256(data).digest(), addr)

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in sockets]
    for t in threads:
        t.start()
    yield servers
    stop.set()
    for t in threads:
        t.join(2)
    for s in sockets:
        s.close()


class RecordingEcho:
    """A UDP echo server on 127.0.0.1 that notes each datagram it got and from where."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.received.append((data, addr))
            self.sock.sendto(b"echo:" + data, addr)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def recording_echo() -> Iterator[RecordingEcho]:
    echo = RecordingEcho()
    yield echo
    echo.stop()


class _FromNAT(socket.socket):
    """
    PySocks' control connection, made from 127.0.0.2: on loopback, the
    address a NAT would show the proxy instead of the client's own.
    """

    def connect(self, address: Any) -> None:
        self.bind(("127.0.0.2", 0))
        super().connect(address)


def udp_header(host: str, port: int, frag: int = 0) -> bytes:
    return b"\x00\x00" + bytes([frag]) + rawsocks.address_bytes(host, port)


def associate(
    server: SocksServer, family: int = socket.AF_INET
) -> tuple[socket.socket, tuple[str, int]]:
    control = rawsocks.open_socket(server.address)
    control.sendall(b"\x05\x01\x00")
    assert rawsocks.recv_exact(control, 2) == b"\x05\x00"
    zero = "0.0.0.0" if family == socket.AF_INET else "::"
    control.sendall(b"\x05\x03\x00" + rawsocks.address_bytes(zero, 0))
    code, host, port, _ = rawsocks.read_reply(control)
    assert code == 0
    return control, (host, port)


def udp_ports_of(pid: int) -> set[int]:
    """Local ports of the UDP sockets that process C{pid} holds."""
    inodes = socket_inodes(pid)
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_pysocks_udp_round_trip(
    socks_server: SocksServer, udp_echo: dict[int, tuple[str, int]]
) -> None:
    socks = require_module("socks")
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.set_proxy(socks.SOCKS5, *socks_server.address)
    sock.settimeout(5)
    for size in (1, 1200, 60000):
        payload = os.urandom(size)
        sock.sendto(payload, udp_echo[4])
        data, source = sock.recvfrom(65535)
        assert data == b"echo:" + hashlib.sha256(payload).digest()
        assert source == udp_echo[4]
    sock.close()
    wait_until(socks_server.session_lines, 5, "the session line")
    [line] = socks_server.session_lines()
    assert "UDP_ASSOCIATE" in line and "datagrams=3/3 dropped=0" in line


def test_spoofed_fragmented_and_malformed_datagrams_are_dropped(
    socks_server: SocksServer, udp_echo: dict[int, tuple[str, int]]
) -> None:
    control, relay = associate(socks_server)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(3)
    # From another loopback address: dropped (the client's IP is 127.0.0.1).
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer.bind(("127.0.0.2", 0))
    spoofer.settimeout(0.5)
    spoofer.sendto(udp_header(*udp_echo[4]) + b"spoofed", relay)
    with pytest.raises(TimeoutError):
        spoofer.recvfrom(100)
    # The real client: the first datagram fixes its address.
    client.sendto(udp_header(*udp_echo[4]) + b"hello", relay)
    data, _ = client.recvfrom(65535)
    assert data == udp_header(*udp_echo[4]) + b"echo:" + hashlib.sha256(b"hello").digest()
    # Fragments, truncated headers and junk get nothing back.
    client.sendto(udp_header(*udp_echo[4], frag=1) + b"fragment", relay)
    client.sendto(b"\x00\x00\x00\x01\x7f", relay)
    client.sendto(b"\x00\x00\x00\x07junk", relay)
    client.settimeout(0.5)
    with pytest.raises(TimeoutError):
        client.recvfrom(100)
    # And the association still works.
    client.settimeout(3)
    client.sendto(udp_header(*udp_echo[4]) + b"again", relay)
    assert client.recvfrom(65535)[0].endswith(hashlib.sha256(b"again").digest())
    control.close()
    wait_until(socks_server.session_lines, 5, "the session line")
    [line] = socks_server.session_lines()
    assert "datagrams=2/2" in line
    assert "dropped=fragmented:1,malformed:2,wrong source ip:1" in line


@pytest.mark.parametrize("stated", ["private address", "destination address"])
def test_client_behind_nat_is_locked_to_its_first_datagram(
    socks_server: SocksServer,
    recording_echo: RecordingEcho,
    monkeypatch: pytest.MonkeyPatch,
    stated: str,
) -> None:
    """
    PySocks behind a (simulated) NAT: its control connection comes from
    127.0.0.2 and its request names 10.1.2.3 (its own address behind the
    NAT) or the destination's address, as many clients do.  Its datagrams,
    from 127.0.0.2, are relayed; a third party (127.0.0.3) and a second port
    of 127.0.0.2 are not.
    """
    socks = require_module("socks")
    monkeypatch.setattr(socks, "_orig_socket", _FromNAT)
    echo = recording_echo.address

    class BehindNAT(socks.socksocket):  # type: ignore[misc, name-defined]
        def _SOCKS5_request(self, conn: Any, cmd: bytes, dst: Any) -> Any:
            if cmd == b"\x03":  # UDP ASSOCIATE: PySocks would state ("0", its port)
                dst = ("10.1.2.3", dst[1]) if stated == "private address" else echo
            return super()._SOCKS5_request(conn, cmd, dst)

    client = BehindNAT(socket.AF_INET, socket.SOCK_DGRAM)
    client.set_proxy(socks.SOCKS5, *socks_server.address)
    client.bind(("127.0.0.2", 0))
    client.settimeout(5)
    client_port = socket.socket.getsockname(client)[1]
    relay = socket.socket.getpeername(client)
    client.sendto(b"first", echo)
    assert client.recvfrom(65535) == (b"echo:first", echo)

    strangers = []
    for host, payload in (("127.0.0.3", b"third party"), ("127.0.0.2", b"second port")):
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind((host, 0))
        stranger.settimeout(0.3)
        stranger.sendto(udp_header(*echo) + payload, relay)
        strangers.append(stranger)
    client.sendto(b"again", echo)
    assert client.recvfrom(65535) == (b"echo:again", echo)
    for stranger in strangers:
        with pytest.raises(TimeoutError):
            stranger.recvfrom(100)
        stranger.close()
    assert [data for data, _ in recording_echo.received] == [b"first", b"again"]
    client.close()

    wait_until(socks_server.session_lines, 5, "the session line")
    [line] = socks_server.session_lines()
    assert "session 127.0.0.2:" in line and "UDP_ASSOCIATE" in line
    assert f"lock=nat source=127.0.0.2:{client_port} datagrams=2/2" in line
    assert "dropped=wrong source ip:1,wrong source port:1 " in line


def test_domain_name_destination(
    socks_server: SocksServer, udp_echo: dict[int, tuple[str, int]]
) -> None:
    control, relay = associate(socks_server)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    port = udp_echo[4][1]
    header = b"\x00\x00\x00\x03" + bytes([9]) + b"localhost" + struct.pack("!H", port)
    client.sendto(header + b"by name", relay)
    data, _ = client.recvfrom(65535)
    # The reply names the address the datagram came from, never a name.
    assert data[3] in (1, 4)
    assert data.endswith(hashlib.sha256(b"by name").digest())
    control.close()


def test_ipv6_client_reaches_both_families(
    start_server, udp_echo: dict[int, tuple[str, int]]
) -> None:
    server = start_server(host="::1")
    control, relay = associate(server, socket.AF_INET6)
    assert relay[0] == "::1"
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    client.settimeout(5)
    for family in (6, 4):
        client.sendto(udp_header(*udp_echo[family]) + b"v6 client", relay)
        data, _ = client.recvfrom(65535)
        assert (
            data == udp_header(*udp_echo[family]) + b"echo:" + hashlib.sha256(b"v6 client").digest()
        )
    control.close()


def test_relay_ports_die_with_the_control_connection(
    socks_server: SocksServer, udp_echo: dict[int, tuple[str, int]]
) -> None:
    before = udp_ports_of(socks_server.pid)
    controls = []
    for _ in range(10):
        control, relay = associate(socks_server)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)
        client.sendto(udp_header(*udp_echo[4]) + b"x", relay)
        client.recvfrom(100)
        controls.append((control, relay))
    during = udp_ports_of(socks_server.pid)
    assert {relay[1] for _, relay in controls} <= during
    for control, _ in controls:
        control.close()
    wait_until(lambda: udp_ports_of(socks_server.pid) == before, 2, "the UDP ports to close")


def test_associations_per_client_are_limited(start_server) -> None:
    server = start_server("--max-udp-per-client", "2")
    held = [associate(server)[0] for _ in range(2)]
    control = rawsocks.open_socket(server.address)
    control.sendall(b"\x05\x01\x00\x05\x03\x00" + rawsocks.address_bytes("0.0.0.0", 0))
    assert rawsocks.recv_exact(control, 2) == b"\x05\x00"
    assert rawsocks.read_reply(control)[0] == 2
    held[0].close()
    wait_until(lambda: len(server.session_lines()) >= 2, 5, "a slot to free")
    associate(server)[0].close()
