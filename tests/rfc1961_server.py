"""
A minimal SOCKS5 server with GSSAPI (RFC 1961), written for the tests from
the RFC and python-gssapi alone: it shares no code with socks5twist (not
its codec, not C{gsswire}, not C{gss}), so the client endpoint is checked
against an independent reading of the RFC.

Why not Dante: Debian 12's C{danted} (1.4.2+dfsg-7+b8) is built without
GSSAPI: C{socksmethod: gssapi} and the C{gssapi.*} keywords stop it at
start-up ("Dante must be linked with an external GSSAPI library at
compiletime"), and C{nm -D /usr/sbin/danted} lists no C{gss_*} symbol (the
C{libgssapi_krb5} that C{ldd} shows comes in through C{libtirpc}).

Run as a subprocess with the realm's environment::

    python -m tests.rfc1961_server PORT KEYTAB LEVELS [nec]

C{LEVELS} is the comma-separated levels it may choose, as Dante's
C{gssapi.enctype} (C{clear,integrity,confidentiality}): it answers the
level asked for when allowed, else the strongest it allows (the client
then decides).  It takes CONNECT to an IPv4 address only, relays with
every byte wrapped at integrity or confidentiality, and prints one line per
event on stdout (C{ready}, C{user alice@SOCKS.TEST level 2}, C{abort ...}).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

import gssapi

LEVELS = {"clear": 0, "integrity": 1, "confidentiality": 2}


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv_message(sock: socket.socket, mtyp: int) -> bytes:
    version, kind = recv_exactly(sock, 2)
    if version != 1 or kind != mtyp:
        raise ValueError(f"message {version}/{kind}, expected 1/{mtyp}")
    (length,) = struct.unpack("!H", recv_exactly(sock, 2))
    return recv_exactly(sock, length)


def send_message(sock: socket.socket, mtyp: int, token: bytes) -> None:
    sock.sendall(struct.pack("!BBH", 1, mtyp, len(token)) + token)


def say(line: str) -> None:
    print(line, flush=True)


class Session:
    def __init__(self, sock: socket.socket, creds: gssapi.Credentials, levels: set[int], nec: bool):
        self.sock = sock
        self.creds = creds
        self.levels = levels
        self.nec = nec
        self.lock = threading.Lock()  # one context, two relay threads
        self.context: gssapi.SecurityContext | None = None
        self.level = 0

    def run(self) -> None:
        try:
            self.negotiate()
        except Exception as e:
            say(f"abort {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            try:
                self.sock.sendall(b"\x01\xff")
            except OSError:
                pass
            self.sock.close()

    def negotiate(self) -> None:
        sock = self.sock
        version, count = recv_exactly(sock, 2)
        methods = recv_exactly(sock, count)
        if version != 5 or 1 not in methods:
            sock.sendall(b"\x05\xff")
            raise ValueError("GSSAPI not offered")
        sock.sendall(b"\x05\x01")
        context = gssapi.SecurityContext(creds=self.creds, usage="accept")
        context.__DEFER_STEP_ERRORS__ = False  # type: ignore[attr-defined]  # raise at the step
        self.context = context
        while not context.complete:
            out = context.step(recv_message(sock, 1))
            if out:
                send_message(sock, 1, out)
        token = recv_message(sock, 2)
        asked = token[0] if self.nec else context.unwrap(token).message[0]
        self.level = asked if asked in self.levels else max(self.levels)
        answer = bytes((self.level,))
        send_message(sock, 2, answer if self.nec else context.wrap(answer, False).message)
        say(f"user {context.initiator_name} asked {asked} level {self.level}")
        request = self.read_plain(10)
        if request[:4] != b"\x05\x01\x00\x01":
            raise ValueError(f"request {request!r}: only CONNECT to IPv4 here")
        host, port = socket.inet_ntoa(request[4:8]), struct.unpack("!H", request[8:10])[0]
        upstream = socket.create_connection((host, port), timeout=10)
        upstream.settimeout(None)
        bound = upstream.getsockname()
        reply = b"\x05\x00\x00\x01" + socket.inet_aton(bound[0]) + struct.pack("!H", bound[1])
        self.write(reply)
        threading.Thread(target=self.to_client, args=(upstream,), daemon=True).start()
        self.to_upstream(upstream)

    # -- protected or not -----------------------------------------------------------

    def read_plain(self, n: int) -> bytes:
        """Exactly C{n} plaintext bytes (the request fits one message)."""
        if self.level == 0:
            return recv_exactly(self.sock, n)
        data = self.unwrap(recv_message(self.sock, 3))
        if len(data) != n:
            raise ValueError(f"a request of {len(data)} bytes")
        return data

    def unwrap(self, token: bytes) -> bytes:
        assert self.context is not None
        with self.lock:
            result = self.context.unwrap(token)
        if self.level == 2 and not result.encrypted:
            raise ValueError("not encrypted at the confidentiality level")
        return bytes(result.message)

    def write(self, data: bytes) -> None:
        if self.level == 0:
            self.sock.sendall(data)
            return
        assert self.context is not None
        with self.lock:
            token = self.context.wrap(data, self.level == 2).message
        send_message(self.sock, 3, token)

    def to_upstream(self, upstream: socket.socket) -> None:
        try:
            while True:
                if self.level == 0:
                    data = self.sock.recv(65536)
                else:
                    try:
                        data = self.unwrap(recv_message(self.sock, 3))
                    except EOFError:
                        data = b""
                if not data:
                    upstream.shutdown(socket.SHUT_WR)
                    return
                upstream.sendall(data)
        except Exception as e:
            say(f"relay to upstream failed: {type(e).__name__}: {e}")
            upstream.close()
            self.sock.close()

    def to_client(self, upstream: socket.socket) -> None:
        try:
            while data := upstream.recv(16384):
                self.write(data)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main() -> None:
    port, keytab, levels_text = sys.argv[1], sys.argv[2], sys.argv[3]
    nec = sys.argv[4:] == ["nec"]
    levels = {LEVELS[name] for name in levels_text.split(",")}
    creds = gssapi.Credentials(usage="accept", store={"keytab": keytab})
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(16)
    say("ready")
    while True:
        sock, _ = listener.accept()
        session = Session(sock, creds, levels, nec)
        threading.Thread(target=session.run, daemon=True).start()


if __name__ == "__main__":
    main()
