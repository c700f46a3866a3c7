"""
The real server driven by hand-written clients: listeners (tcp6, unix,
haproxy), half-close, flow control, timeouts, limits, descriptors, fuzzing.
"""

from __future__ import annotations

import hashlib
import os
import random
import resource
import signal
import socket
import subprocess
import threading
import time

import pytest

from . import rawsocks
from .conftest import SocksServer, free_port, wait_until

Addr = tuple[str, int]


def echo_round_trip(sock: socket.socket, payload: bytes) -> None:
    """Send C{payload}, shut the write half, expect the echo and the digest."""
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    assert received == payload + b"SHA256:" + hashlib.sha256(payload).hexdigest().encode()


RELAYS = pytest.mark.parametrize("relay", ["splice", "splice-shared", "stream"])


def epoll_sets(pid: int) -> int:
    """How many epoll sets a process holds open."""
    fd_dir = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            count += os.readlink(f"{fd_dir}/{fd}") == "anon_inode:[eventpoll]"
        except FileNotFoundError:
            pass  # closed while listed
    return count


def start_relay(start_server, relay: str, *args: str) -> SocksServer:
    """
    A server that relays with C{relay}: splice(2) with each new tunnel's
    sockets registered with the reactor (a quiet server), splice(2) with new
    tunnels' sockets in the relay's shared epoll set (C{splice-shared}: four
    other tunnels are kept open, so the test's tunnel is past the fourth), or
    Twisted's transports.  (Splice tunnels that carry more than a few round
    trips move on to the relay thread either way.)
    """
    server = start_server(*args, *(["--no-splice"] if relay == "stream" else []))
    if relay == "splice-shared":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        idle = []
        for _ in range(4):
            sock, code = rawsocks.connect(server.address, *listener.getsockname())
            assert code == 0
            idle.append(sock)
            idle.append(listener.accept()[0])
        server.keep_open = [listener, *idle]  # type: ignore[attr-defined]
        # A fifth tunnel joins the shared set: the reactor's epoll and the relay's.
        assert epoll_sets(server.pid) == 1
        probe, code = rawsocks.connect(server.address, *listener.getsockname())
        assert code == 0
        wait_until(lambda: epoll_sets(server.pid) == 2, 5, "the relay's shared epoll set")
        probe.close()
        listener.accept()[0].close()
        # (The set stays open while the four idle tunnels are: the test's
        # tunnel joins it too.)
    return server


@RELAYS
def test_half_close_both_ways(start_server, echo_server: Addr, relay: str) -> None:
    """The client's EOF reaches the destination, whose reply still flows back."""
    server = start_relay(start_server, relay)
    sock, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    echo_round_trip(sock, os.urandom(2_000_000))
    sock.close()
    [line] = wait_until(
        lambda: [
            x for x in server.session_lines() if f"CONNECT {echo_server[0]}:{echo_server[1]} " in x
        ],
        5,
        "the session line",
    )
    assert f"up=2000000 down={2_000_000 + 71}" in line and f"relay={relay.split('-')[0]}" in line


@RELAYS
def test_pipelined_request_and_payload_then_eof(
    start_server, echo_server: Addr, relay: str
) -> None:
    """Greeting, request, payload and EOF in one send (printf ... | nc): all of it relayed."""
    server = start_relay(start_server, relay)
    sock = rawsocks.open_socket(server.address)
    payload = os.urandom(50_000)
    sock.sendall(b"\x05\x01\x00\x05\x01\x00" + rawsocks.address_bytes(*echo_server) + payload)
    sock.shutdown(socket.SHUT_WR)
    assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
    assert rawsocks.read_reply(sock)[0] == 0
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    assert received == payload + b"SHA256:" + hashlib.sha256(payload).hexdigest().encode()


def test_success_reply_names_the_outbound_socket(
    socks_server: SocksServer, echo_server: Addr
) -> None:
    sock = rawsocks.open_socket(socks_server.address)
    sock.sendall(b"\x05\x01\x00" + b"\x05\x01\x00" + rawsocks.address_bytes(*echo_server))
    assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
    code, host, port, raw = rawsocks.read_reply(sock)
    assert (code, host, len(raw)) == (0, "127.0.0.1", 10)
    assert port != echo_server[1] and port > 0
    sock.close()
    wait_until(lambda: socks_server.session_lines(), 5, "the session line")
    [line] = socks_server.session_lines()
    assert f"-> 127.0.0.1:{echo_server[1]}" in line


def test_ipv6_listener(start_server, echo_server: Addr) -> None:
    server = start_server(host="::1")
    sock, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    echo_round_trip(sock, b"over ipv6")


def test_unix_listener(start_server, tmp_path, echo_server: Addr) -> None:
    path = str(tmp_path / "socks.sock")
    server = start_server("--port", f"unix:{path}", connect_to=(path,))
    sock, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    echo_round_trip(sock, b"over a unix socket")
    sock.close()
    wait_until(lambda: server.session_lines(), 5, "the session line")
    assert "unix:" in server.session_lines()[0]


def haproxy_client(server: SocksServer, source: str) -> socket.socket:
    sock = rawsocks.open_socket(server.address)
    family = "TCP6" if ":" in source else "TCP4"
    dest = "::1" if ":" in source else "127.0.0.1"
    header = f"PROXY {family} {source} {dest} 40123 {server.address[1]}\r\n".encode()
    sock.sendall(header + b"\x05\x01\x00")
    return sock


def test_haproxy_uses_the_address_in_the_proxy_header(start_server, echo_server: Addr) -> None:
    port = free_port()
    server = start_server(
        "--port",
        f"haproxy:tcp:{port}:interface=127.0.0.1",
        "--trusted-proxy",
        "127.0.0.1",
        connect_to=("127.0.0.1", port),
    )
    # The balancer is on loopback, but the client it names is not: refused.
    outsider = haproxy_client(server, "192.0.2.44")
    assert rawsocks.recv_exact(outsider, 2) == b"\x05\xff"
    assert outsider.recv(10) == b""
    # A loopback client named by the header is served.
    insider = haproxy_client(server, "127.0.0.9")
    assert rawsocks.recv_exact(insider, 2) == b"\x05\x00"
    insider.sendall(b"\x05\x01\x00" + rawsocks.address_bytes(*echo_server))
    assert rawsocks.read_reply(insider)[0] == 0
    insider.sendall(b"ping")
    assert rawsocks.recv_exact(insider, 4) == b"ping"
    insider.close()
    wait_until(lambda: len(server.session_lines()) == 2, 5, "two session lines")
    log = server.log()
    assert "refused client 192.0.2.44:40123" in log
    assert "session 127.0.0.9:40123" in log
    # The PROXY-protocol wrapper is not a plain socket: the stream relay serves it.
    assert "relay=stream" in log


def test_allow_client_widens_and_refuses_others(start_server, echo_server: Addr) -> None:
    server = start_server("--allow-client", "127.0.0.2/32", host="127.0.0.1")
    sock = socket.create_connection(server.address, timeout=5)
    sock.sendall(b"\x05\x01\x00")
    assert rawsocks.recv_exact(sock, 2) == b"\x05\xff"
    assert sock.recv(10) == b""
    sock = socket.create_connection(server.address, timeout=5, source_address=("127.0.0.2", 0))
    sock.sendall(b"\x05\x01\x00")
    assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
    assert "not in the allowed client networks" in server.log()


def test_start_up_says_who_is_served(socks_server: SocksServer) -> None:
    assert "no --auth: serving without authentication to clients in 127.0.0.0/8, ::1/128" in (
        socks_server.log()
    )


def read_to_end_hashed(sock: socket.socket) -> tuple[int, str]:
    """Read until EOF (each wait bounded); the byte count and the SHA-256."""
    digest = hashlib.sha256()
    count = 0
    sock.settimeout(30)
    while chunk := sock.recv(1 << 20):
        digest.update(chunk)
        count += len(chunk)
    return count, digest.hexdigest()


def firehose(total: int) -> tuple[tuple[str, int], threading.Thread, list[str]]:
    """A server that sends C{total} pseudo-random bytes to its first client."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    digests: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        digest = hashlib.sha256()
        block = os.urandom(1 << 16)
        sent = 0
        while sent < total:
            chunk = block[: min(len(block), total - sent)]
            conn.sendall(chunk)
            digest.update(chunk)
            sent += len(chunk)
        digests.append(digest.hexdigest())
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname(), thread, digests


@RELAYS
def test_slow_reader_pauses_the_sender_and_memory_stays_bounded(start_server, relay: str) -> None:
    socks_server = start_relay(start_server, relay)
    total = 256 * 1024 * 1024
    address, thread, digests = firehose(total)
    sock, code = rawsocks.connect(socks_server.address, *address)
    assert code == 0
    before = socks_server.rss_kib()
    time.sleep(2)  # the client reads nothing; the server must stop reading too
    during = socks_server.rss_kib()
    assert thread.is_alive(), "the whole stream went somewhere though nobody read it"
    assert during - before < 16 * 1024, f"RSS grew {during - before} KiB while the reader slept"
    received, digest = read_to_end_hashed(sock)
    thread.join(10)
    assert received == total
    assert digest == digests[0]


def test_handshake_timeout_closes_silent_and_dribbling_clients(start_server) -> None:
    server = start_server("--handshake-timeout", "1")
    silent = socket.create_connection(server.address, timeout=5)
    started = time.monotonic()
    assert silent.recv(10) == b""
    assert time.monotonic() - started < 3
    dribbler = socket.create_connection(server.address, timeout=5)
    dribbler.sendall(b"\x05")
    time.sleep(0.4)
    dribbler.sendall(b"\x01")
    time.sleep(0.4)
    dribbler.sendall(b"\x00")
    assert rawsocks.recv_exact(dribbler, 2) == b"\x05\x00"
    dribbler.sendall(b"\x05")
    assert dribbler.recv(10) == b""
    assert time.monotonic() - started < 5
    assert server.log().count("handshake timeout") >= 2


def test_max_clients(start_server, echo_server: Addr) -> None:
    server = start_server("--max-clients", "3")
    held = []
    for _ in range(3):
        sock, code = rawsocks.connect(server.address, *echo_server)
        assert code == 0
        held.append(sock)
    extra = socket.create_connection(server.address, timeout=5)
    # The server resets the connection as it accepts it: the reset may come
    # before the greeting is even sent.
    with pytest.raises((AssertionError, ConnectionError)):
        extra.sendall(b"\x05\x01\x00")
        data = extra.recv(10)
        assert data != b""
        raise AssertionError(f"over the limit but got {data!r}")
    assert "--max-clients" in server.log()
    held[0].close()
    wait_until(lambda: len(server.session_lines()) >= 1, 5, "a slot to free")
    sock, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0


def test_no_descriptor_outlives_a_thousand_sessions(start_server, echo_server: Addr) -> None:
    server = start_server("--handshake-timeout", "2")
    refused_port = free_port()
    baseline = server.open_fds()
    kinds = ["ok", "refused", "abandon", "malformed", "garbage", "halfway"]
    for i in range(1000):
        kind = kinds[i % len(kinds)]
        sock = socket.create_connection(server.address, timeout=10)
        if kind == "ok":
            request = rawsocks.address_bytes(*echo_server)
            sock.sendall(b"\x05\x01\x00\x05\x01\x00" + request + b"x")
            assert rawsocks.recv_exact(sock, 2 + 10 + 1)[-1:] == b"x"
        elif kind == "refused":
            sock.sendall(
                b"\x05\x01\x00\x05\x01\x00" + rawsocks.address_bytes("127.0.0.1", refused_port)
            )
            assert rawsocks.recv_exact(sock, 12)[3] == 5
        elif kind == "malformed":
            sock.sendall(b"\x05\x01\x00\x05\x01\x00\x09")
            assert rawsocks.recv_exact(sock, 12)[3] == 8
        elif kind == "garbage":
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        elif kind == "halfway":
            sock.sendall(b"\x05\x01\x00\x05\x01")
        sock.close()
    wait_until(lambda: len(server.session_lines()) >= 1000, 60, "all sessions to end")
    wait_until(lambda: server.open_fds() <= baseline, 10, f"fds back to {baseline}")
    assert server.open_fds() == baseline


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_tunnels_in_the_relay_thread_end_every_way_and_leave_nothing(
    start_server, echo_server: Addr
) -> None:
    """
    Sixty tunnels at once, each past the round trips that move it to the
    relay thread, then ended by a close, a half-close and a reset from the
    client: every session logs its line, and the descriptors and the thread
    go once the last tunnel has ended.
    """
    server = start_server()
    baseline = server.open_fds()
    assert threads(server.pid) == 1
    tunnels = []
    for _ in range(60):
        sock, code = rawsocks.connect(server.address, *echo_server)
        assert code == 0
        tunnels.append(sock)
    sent = [b""] * len(tunnels)
    for trip in range(6):  # interleaved, so the thread holds many at once
        for i, sock in enumerate(tunnels):
            message = b"%02d.%d" % (i, trip) * (1 + i * 37)
            sock.sendall(message)
            sent[i] += message
        for i, sock in enumerate(tunnels):
            n = len(b"%02d.%d" % (i, trip) * (1 + i * 37))
            assert rawsocks.recv_exact(sock, n) == sent[i][-n:]
    assert threads(server.pid) == 2, "no relay thread"
    # Signals go to the reactor's thread: the relay thread blocks them.
    [relay_thread] = [t for t in os.listdir(f"/proc/{server.pid}/task") if t != str(server.pid)]
    status = open(f"/proc/{server.pid}/task/{relay_thread}/status").read()
    [blocked] = [int(x.split()[1], 16) for x in status.splitlines() if x.startswith("SigBlk:")]
    assert blocked & (1 << (signal.SIGTERM - 1)) and blocked & (1 << (signal.SIGHUP - 1))
    for i, sock in enumerate(tunnels):
        if i % 3 == 0:
            sock.close()
        elif i % 3 == 1:
            sock.shutdown(socket.SHUT_WR)
            digest = b"SHA256:" + hashlib.sha256(sent[i]).hexdigest().encode()
            assert rawsocks.recv_exact(sock, len(digest)) == digest
            assert sock.recv(1) == b""
            sock.close()
        else:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            sock.close()  # a reset
    wait_until(lambda: len(server.session_lines()) >= 60, 10, "60 session lines")
    lines = server.session_lines()
    assert len(lines) == 60 and all("relay=splice" in x for x in lines)
    wait_until(lambda: threads(server.pid) == 1, 10, "the relay thread to end")
    wait_until(lambda: server.open_fds() <= baseline, 10, f"fds back to {baseline}")
    assert server.open_fds() == baseline


def test_idle_timeout_in_the_relay_thread_and_on_the_reactor(
    start_server, echo_server: Addr
) -> None:
    """Quiet tunnels close after --idle-timeout, wherever they run; a busy one stays."""
    server = start_server("--idle-timeout", "1")
    tunnels = []
    for trips in (8, 1, 8):  # moved to the relay thread, not moved, moved and kept busy
        sock, code = rawsocks.connect(server.address, *echo_server)
        assert code == 0
        for i in range(trips):
            sock.sendall(b"trip %d" % i)
            assert rawsocks.recv_exact(sock, 6) == b"trip %d" % i
        tunnels.append(sock)
    moved, quiet, busy = tunnels
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        busy.sendall(b"still here")
        assert rawsocks.recv_exact(busy, 10) == b"still here"
        time.sleep(0.2)
    for sock in (moved, quiet):
        sock.settimeout(1)
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
    busy.sendall(b"and now?")
    assert rawsocks.recv_exact(busy, 8) == b"and now?"
    lines = wait_until(
        lambda: [x for x in server.session_lines() if "idle timeout" in x], 5, "the idle lines"
    )
    assert len(lines) == 2, server.session_lines()
    busy.close()


def test_fuzzed_negotiations_get_a_reply_or_a_close(start_server, echo_server: Addr) -> None:
    server = start_server("--auth", "memory:u:p", "--handshake-timeout", "2")
    rng = random.Random(1928)
    valid = [
        b"\x05\x01\x02",
        b"\x01\x01u\x01p",
        b"\x05\x01\x00" + rawsocks.address_bytes(*echo_server),
    ]
    for i in range(1500):
        wire = b"".join(valid)
        style = i % 3
        if style == 0:
            wire = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        elif style == 1:
            wire = wire[: rng.randrange(len(wire))]
        else:
            # Corrupt one byte before the request's ATYP, never the address:
            # a corrupted address could send the proxy off loopback.  (Only an
            # intact greeting and password get a request executed at all.)
            head, address = wire[: -len(valid[2]) + 3], valid[2][3:]
            pos = rng.randrange(len(head))
            wire = head[:pos] + bytes([rng.randrange(256)]) + head[pos + 1 :] + address
        sock = socket.create_connection(server.address, timeout=10)
        sock.sendall(wire)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        sock.close()
        # Whatever came back is a prefix of a legal exchange: a method
        # selection, perhaps an auth status, perhaps a full reply.
        if received:
            assert received[:1] == b"\x05", (wire, received)
            if len(received) > 4:
                assert len(received) - 4 in (10, 22) or received[4:5] != b"", (wire, received)
    # And it still serves.
    sock, code = rawsocks.connect(server.address, *echo_server, credentials=(b"u", b"p"))
    assert code == 0
    echo_round_trip(sock, b"still alive")


def test_out_of_descriptors_backs_off_and_recovers(start_server, echo_server: Addr) -> None:
    limit = 48

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    server = start_server("--handshake-timeout", "5", preexec_fn=lower_limit)
    tunnels = []
    for _ in range(limit):
        try:
            sock, code = rawsocks.connect(server.address, *echo_server, timeout=3)
        except (ConnectionError, OSError, AssertionError):
            continue
        if code == 0:
            tunnels.append(sock)
        else:
            sock.close()
    assert 5 < len(tunnels) < limit, len(tunnels)
    # Exhausted: new clients are turned away, and the server does not spin.
    cpu_before = server.cpu_seconds()
    for _ in range(5):
        with socket.create_connection(server.address, timeout=3) as extra:
            extra.sendall(b"\x05\x01\x00")
            try:
                extra.recv(10)
            except (ConnectionResetError, TimeoutError):
                pass
    time.sleep(2)
    assert server.cpu_seconds() - cpu_before < 1.0, "the accept loop spun"
    # Sessions already open keep working.
    for sock in tunnels:
        sock.sendall(b"alive")
        assert rawsocks.recv_exact(sock, 5) == b"alive"
    for sock in tunnels:
        sock.close()

    # And once descriptors free up, new clients are served.
    def served() -> bool:
        try:
            sock, code = rawsocks.connect(server.address, *echo_server, timeout=3)
        except (ConnectionError, OSError, AssertionError):
            return False
        sock.close()
        return code == 0

    wait_until(served, 15, "service to resume")


def test_bad_option_is_one_line_without_traceback() -> None:
    from .conftest import TWISTD

    for args in (
        ["--idle-timeout", "soon"],
        ["--port", "bogus:1"],
        ["--allow-client", "300.1.1.1"],
    ):
        result = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "socks5", *args], capture_output=True, timeout=30
        )
        assert result.returncode != 0
        output = (result.stdout + result.stderr).decode().strip()
        assert "Traceback" not in output
        assert output.count("\n") == 0, output
        assert output.startswith("twistd socks5: error:"), output


def test_port_in_use_is_one_line_without_traceback(tmp_path) -> None:
    from .conftest import TWISTD

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "log"
        result = subprocess.run(
            [
                *TWISTD,
                "-n",
                "--pidfile=",
                f"--logfile={log}",
                "socks5",
                "--port",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            capture_output=True,
            timeout=30,
        )
    assert result.returncode != 0
    text = log.read_text()
    assert "Traceback" not in text
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use" in text


@RELAYS
def test_slow_destination_pauses_the_client(start_server, relay: str) -> None:
    """Upload to a destination that does not read: the proxy stops reading the client."""
    server = start_relay(start_server, relay)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sock, code = rawsocks.connect(server.address, *listener.getsockname())
    assert code == 0
    destination, _ = listener.accept()
    listener.close()
    total = 256 * 1024 * 1024
    block = os.urandom(1 << 16)
    sent = hashlib.sha256()

    def upload() -> None:
        for i in range(total // len(block)):
            chunk = block[i % 7 :] + block[: i % 7]
            sock.sendall(chunk)
            sent.update(chunk)
        sock.shutdown(socket.SHUT_WR)

    before = server.rss_kib()
    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    time.sleep(2)  # the destination reads nothing
    assert uploader.is_alive(), "the whole upload went somewhere though nobody read it"
    assert server.rss_kib() - before < 16 * 1024
    count, digest = read_to_end_hashed(destination)
    uploader.join(10)
    assert count == total and digest == sent.hexdigest()
