"""
A measuring stick, not a server: the least a Python SOCKS5 CONNECT relay can
do per session, to see how much of socks5twist's time is its own.

    python bench/floor.py PORT [--loop twisted|epoll]

It answers the load generator's sessions (no authentication, CONNECT to an
IPv4 address, the CONNECT done inside connect() as on loopback) and relays
with recv/send, nothing else: no checks, no timeouts, no logs, no flow
control, and it trusts its client.  `--loop twisted` drives bare descriptors
from Twisted's epoll reactor (every event through Twisted's dispatch, as
socks5twist's are); `--loop epoll` drives the same objects from a plain
`select.epoll` loop.  The README's Performance section quotes both.
Loopback only; stop it with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import select
import socket
from typing import Any


class Side:
    """One socket of a tunnel: the client's (negotiating first) or the destination's."""

    def __init__(self, loop: Any, sock: socket.socket, negotiating: bool) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.stage = 0 if negotiating else 2  # 0 greeting, 1 request, 2 relaying
        self.peer: Side | None = None
        self.eof = False

    # The reactor's IReadDescriptor, for --loop twisted.
    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "floor"

    def connectionLost(self, reason: object) -> None:
        pass

    def doRead(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        if not data and self.stage < 2:
            # Gone before its request (the benchmark's "is it listening?"
            # probe): forget it.
            self.loop.remove(self)
            self.sock.close()
            return
        if self.stage == 0:
            self.sock.send(b"\x05\x00")
            self.stage = 1
        elif self.stage == 1:
            host, port = socket.inet_ntoa(data[4:8]), int.from_bytes(data[8:10], "big")
            remote = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            remote.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            remote.connect_ex((host, port))
            local = remote.getsockname()
            self.sock.send(
                b"\x05\x00\x00\x01" + socket.inet_aton(local[0]) + local[1].to_bytes(2, "big")
            )
            self.peer = Side(self.loop, remote, negotiating=False)
            self.peer.peer = self
            self.loop.add(self.peer)
            self.stage = 2
        elif not data:
            assert self.peer is not None
            self.eof = True
            self.loop.remove(self)
            if self.peer.eof:
                self.sock.close()
                self.peer.sock.close()
            else:
                self.peer.sock.shutdown(socket.SHUT_WR)
        else:
            assert self.peer is not None
            self.peer.sock.send(data)


class Listener(Side):
    def __init__(self, loop: Any, port: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        sock.setblocking(False)
        super().__init__(loop, sock, negotiating=False)

    def doRead(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.loop.add(Side(self.loop, client, negotiating=True))


class EpollLoop:
    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.sides: dict[int, Side] = {}

    def add(self, side: Side) -> None:
        self.sides[side.fd] = side
        self.epoll.register(side.fd, select.EPOLLIN)

    def remove(self, side: Side) -> None:
        del self.sides[side.fd]
        self.epoll.unregister(side.fd)

    def run(self) -> None:
        while True:
            for fd, _ in self.epoll.poll():
                side = self.sides.get(fd)
                if side is not None:
                    side.doRead()


class TwistedLoop:
    def __init__(self) -> None:
        from twisted.internet import epollreactor

        epollreactor.install()
        from twisted.internet import reactor

        self.reactor: Any = reactor

    def add(self, side: Side) -> None:
        self.reactor.addReader(side)

    def remove(self, side: Side) -> None:
        self.reactor.removeReader(side)

    def run(self) -> None:
        self.reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--loop", choices=("twisted", "epoll"), default="twisted")
    args = parser.parse_args()
    loop: Any = TwistedLoop() if args.loop == "twisted" else EpollLoop()
    loop.add(Listener(loop, args.port))
    try:
        loop.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
