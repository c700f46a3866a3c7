"""
An RFC 1961 (GSSAPI for SOCKS5) client for the tests, written on python-gssapi
directly and on nothing of socks5twist's, so that what the server does is
checked by a second reading of the RFC rather than by its own code.

Blocking sockets with timeouts; every loop bounded.
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

import gssapi

VERSION = 1
AUTH, LEVEL, MESSAGE, ABORT = 1, 2, 3, 0xFF
CLEAR, INTEGRITY, CONFIDENTIALITY = 0, 1, 2


class Aborted(Exception):
    """The server sent 01 FF."""


class Closed(Exception):
    """The server closed the connection."""


def frame(mtyp: int, token: bytes) -> bytes:
    return struct.pack("!BBH", VERSION, mtyp, len(token)) + token


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise Closed(data)
        data += chunk
    return data


def recv_message(sock: socket.socket, mtyp: int) -> bytes:
    head = recv_exact(sock, 2)
    if head == bytes((VERSION, ABORT)):
        raise Aborted()
    assert head == bytes((VERSION, mtyp)), f"expected message type {mtyp}, got {head.hex()}"
    (length,) = struct.unpack("!H", recv_exact(sock, 2))
    return recv_exact(sock, length)


def context(
    target: str = "rcmd@localhost", replay: bool = True, **kw: Any
) -> gssapi.SecurityContext:
    """An initiator's context (C{replay=False}: without replay or sequence checks)."""
    flag = gssapi.RequirementFlag
    wanted = [flag.mutual_authentication, flag.integrity, flag.confidentiality]
    if replay:
        wanted += [flag.replay_detection, flag.out_of_sequence_detection]
    flags = sum(int(f) for f in wanted)
    name = gssapi.Name(target, gssapi.NameType.hostbased_service)
    return gssapi.SecurityContext(name=name, usage="initiate", flags=flags, **kw)


class Client:
    """One RFC 1961 negotiation over a connected socket, then the SOCKS request."""

    def __init__(
        self, address: tuple[str, int], timeout: float = 10.0, tls: ssl.SSLContext | None = None
    ) -> None:
        """Connects to C{address} (over TLS with C{tls}, for an C{ssl:} listener)."""
        sock = socket.create_connection(address, timeout=timeout)
        self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname="localhost")
        self.ctx: gssapi.SecurityContext | None = None
        self.level: int | None = None
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def greet(self, methods: bytes = b"\x01") -> int:
        self.sock.sendall(b"\x05" + bytes((len(methods),)) + methods)
        answer = recv_exact(self.sock, 2)
        assert answer[0] == 5, answer
        return answer[1]

    def establish(self, target: str = "rcmd@localhost", replay: bool = True) -> None:
        """Context tokens back and forth until both sides are done (section 3)."""
        ctx = self.ctx = context(target, replay)
        token = ctx.step()
        for _ in range(10):
            self.sock.sendall(frame(AUTH, token))
            if ctx.complete:
                return
            token = ctx.step(recv_message(self.sock, AUTH))
            if ctx.complete and not token:
                return
        raise AssertionError("the context took more than 10 rounds")

    def ask_level(self, level: int, nec: bool = False) -> int:
        """Section 4: the level asked (wrapped, or one byte) and the server's answer."""
        assert self.ctx is not None
        token = bytes((level,)) if nec else self.ctx.wrap(bytes((level,)), False).message
        self.sock.sendall(frame(LEVEL, token))
        answer = recv_message(self.sock, LEVEL)
        if nec:
            assert len(answer) == 1, answer
            chosen = answer[0]
        else:
            message = self.ctx.unwrap(answer).message
            assert len(message) == 1, message
            chosen = message[0]
        self.level = chosen
        return chosen

    # -- after the level: wrapped or not ---------------------------------------

    def wrap(self, data: bytes, encrypt: bool | None = None) -> bytes:
        """C{data} as the stream carries it at the chosen level."""
        if not self.level:
            return data
        assert self.ctx is not None
        if encrypt is None:
            encrypt = self.level == CONFIDENTIALITY
        out = b""
        for i in range(0, len(data), 16384):
            out += frame(MESSAGE, self.ctx.wrap(data[i : i + 16384], encrypt).message)
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.wrap(data))

    def recv(self, n: int) -> bytes:
        """Exactly C{n} bytes of plaintext."""
        while len(self.buffer) < n:
            if not self.level:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Closed(self.buffer)
                self.buffer += chunk
            else:
                assert self.ctx is not None
                result = self.ctx.unwrap(recv_message(self.sock, MESSAGE))
                if self.level == CONFIDENTIALITY:
                    assert result.encrypted, "the server sent in the clear at confidentiality"
                self.buffer += result.message
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def connect(self, host: str, port: int) -> bytes:
        """A CONNECT to an IPv4 literal; the reply (10 bytes)."""
        request = b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port)
        self.send(request)
        return self.recv(10)

    def wrap_datagram(self, datagram: bytes) -> bytes:
        """A UDP datagram as section 5 carries it (one message)."""
        if not self.level:
            return datagram
        assert self.ctx is not None
        token = self.ctx.wrap(datagram, self.level == CONFIDENTIALITY).message
        return frame(MESSAGE, token)

    def unwrap_datagram(self, datagram: bytes) -> bytes:
        if not self.level:
            return datagram
        assert self.ctx is not None
        assert datagram[:2] == bytes((VERSION, MESSAGE)), datagram[:4].hex()
        (length,) = struct.unpack("!H", datagram[2:4])
        assert len(datagram) == 4 + length
        return bytes(self.ctx.unwrap(datagram[4:]).message)
