"""
The naive design socks5twist replaces, kept as a benchmark peer: a SOCKS5
server (no authentication, CONNECT to IPv4 only) on
socketserver.ThreadingTCPServer, blocking recv_into/sendall, one thread per
direction.  For the benchmark only: it checks nothing and limits nothing.

    python threaded_socks.py PORT
"""

from __future__ import annotations

import socket
import socketserver
import struct
import sys
import threading


def pump(src: socket.socket, dst: socket.socket) -> None:
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    try:
        while n := src.recv_into(buf):
            dst.sendall(view[:n])
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        client: socket.socket = self.request
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = client.recv(2)
        client.recv(head[1])
        client.sendall(b"\x05\x00")
        request = b""
        while len(request) < 10:
            chunk = client.recv(10 - len(request))
            if not chunk:
                return
            request += chunk
        host = socket.inet_ntoa(request[4:8])
        (port,) = struct.unpack("!H", request[8:10])
        try:
            remote = socket.create_connection((host, port))
        except OSError:
            client.sendall(b"\x05\x05\x00\x01" + bytes(6))
            return
        remote.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bound = remote.getsockname()
        client.sendall(
            b"\x05\x00\x00\x01" + socket.inet_aton(bound[0]) + struct.pack("!H", bound[1])
        )
        up = threading.Thread(target=pump, args=(client, remote), daemon=True)
        up.start()
        pump(remote, client)
        up.join()
        remote.close()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 4096


if __name__ == "__main__":
    threading.stack_size(256 * 1024)
    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
