"""
A hostile upstream proxy (our server as its client): what it says reaches
the log printable and escaped once, and what it floods is held to the
client's pace (flow control through the tunnel), never buffered.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from . import rawsocks
from .conftest import SocksServer, wait_until

Addr = tuple[str, int]


@contextlib.contextmanager
def upstream(answer: Callable[[socket.socket], None]) -> Iterator[Addr]:
    """A loopback listener that runs C{answer} on each connection, in a thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(10)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def routed(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(f'default = "deny"\n\n[[rule]]\naction = "allow"\nvia = ["{url}"]\n')
    return path


def test_an_http_upstreams_escape_sequences_are_logged_escaped_once(
    start_server: Callable[..., SocksServer], tmp_path: Path
) -> None:
    def refuse(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 403 \x1b[31mred\x07 \\ok\r\n\r\n")

    with upstream(refuse) as (host, port):
        server = start_server("--rules", str(routed(tmp_path, f"http://{host}:{port}")))
        sock, code = rawsocks.connect(server.address, "127.0.0.1", 9)
        sock.close()
        assert code == 2  # 403: the proxy's rules
        line = wait_until(
            lambda: next((x for x in server.session_lines() if "reply=0x02" in x), None),
            5,
            "the session line",
        )
    # Escaped once: the reader sees the bytes the proxy sent, as logsafe
    # spells them (\x1b is ESC, \\ a backslash), never an escape escaped.
    assert "(HTTP 403 \\x1b[31mred\\x07 \\\\ok)" in line
    assert "\\\\x1b" not in server.log() and "\x1b" not in server.log()


def test_a_socks5_upstreams_garbage_name_is_logged_escaped_once(
    start_server: Callable[..., SocksServer], tmp_path: Path
) -> None:
    def bad_name(conn: socket.socket) -> None:
        conn.recv(16)
        conn.sendall(b"\x05\x00")
        conn.recv(300)
        name = b"\x1b[2J\r\nx"
        conn.sendall(b"\x05\x00\x00\x03" + bytes([len(name)]) + name + b"\x00\x50")

    with upstream(bad_name) as (host, port):
        server = start_server("--rules", str(routed(tmp_path, f"socks5://{host}:{port}")))
        sock, code = rawsocks.connect(server.address, "127.0.0.1", 9)
        sock.close()
        assert code == 1
        wait_until(lambda: server.session_lines(), 5, "the session line")
    log = server.log()
    failed = [x for x in log.splitlines() if f"upstream socks5://{host}:{port} failed" in x]
    assert len(failed) == 1
    assert "invalid name \\x1b[2J\\x0d\\x0ax" in failed[0]
    assert "\\\\x1b" not in log and "\x1b" not in log


def test_an_upstream_flooding_a_client_that_does_not_read_is_held_back(
    start_server: Callable[..., SocksServer], tmp_path: Path
) -> None:
    total = 1024 * 65536  # 64 MiB: more than every socket buffer on the way
    sent = threading.Event()

    def flood(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 65536)
        block = b"z" * 65536
        for _ in range(total // 65536 - 1):
            conn.sendall(block)
        sent.set()

    with upstream(flood) as (host, port):
        server = start_server("--rules", str(routed(tmp_path, f"http://{host}:{port}")))
        before = server.rss_kib()
        sock, code = rawsocks.connect(server.address, "127.0.0.1", 9)
        with sock:
            assert code == 0
            # The client reads nothing: the upstream must be stopped by
            # flow control, not buffered by the server.
            assert not sent.wait(3), "the server read the whole flood into memory"
            assert server.rss_kib() - before < 8 * 1024
            received = 0
            while received < total:
                chunk = sock.recv(65536)
                assert chunk, f"closed after {received} bytes"
                received += len(chunk)
        assert sent.wait(5)
