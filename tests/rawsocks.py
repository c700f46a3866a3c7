"""
A deliberately small SOCKS5 client written from RFC 1928/1929 by hand, for
the edge cases real clients never produce.  It does not use socks5twist's
codec, so the server is checked against the RFC and not against itself.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes: {data!r}")
        data += chunk
    return data


def address_bytes(host: str, port: int) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode()
        return b"\x03" + bytes([len(name)]) + name + struct.pack("!H", port)
    atyp = b"\x01" if ip.version == 4 else b"\x04"
    return atyp + ip.packed + struct.pack("!H", port)


def read_reply(sock: socket.socket) -> tuple[int, str, int, bytes]:
    """Read one reply; return (code, bound host, bound port, the raw bytes)."""
    head = recv_exact(sock, 4)
    assert head[0] == 5 and head[2] == 0, head
    if head[3] == 1:
        raw = recv_exact(sock, 6)
        host = str(ipaddress.IPv4Address(raw[:4]))
    elif head[3] == 4:
        raw = recv_exact(sock, 18)
        host = str(ipaddress.IPv6Address(raw[:16]))
    else:
        raise AssertionError(f"reply with ATYP {head[3]}: {head!r}")
    (port,) = struct.unpack("!H", raw[-2:])
    return head[1], host, port, head + raw


def open_socket(server: tuple[Any, ...], timeout: float = 10) -> socket.socket:
    if isinstance(server[0], str) and server[0].startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(server[0])
        return sock
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(server[:2])
    return sock


def connect(
    server: tuple[Any, ...],
    host: str,
    port: int,
    credentials: tuple[bytes, bytes] | None = None,
    timeout: float = 10,
) -> tuple[socket.socket, int]:
    """CONNECT through the proxy; return the socket and the reply code."""
    sock = open_socket(server, timeout)
    if credentials is None:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
    else:
        user, password = credentials
        sock.sendall(b"\x05\x01\x02")
        assert recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        status = recv_exact(sock, 2)
        if status != b"\x01\x00":
            sock.close()
            raise PermissionError(f"authentication failed: {status!r}")
    sock.sendall(b"\x05\x01\x00" + address_bytes(host, port))
    code, *_ = read_reply(sock)
    return sock, code
