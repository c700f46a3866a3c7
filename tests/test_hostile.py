"""
The security review's attacks against the real C{twistd -n socks5}: hostile
names, the unspecified address, forged and lost log lines, lock-outs,
Unix-socket clients under a narrowed allow-list, BIND under name rules, and
UDP datagrams to the unspecified address.  Only IP literals and names the
server must refuse before any lookup are sent: no DNS query leaves the
machine.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from . import rawsocks
from .conftest import wait_until

NO_AUTH = b"\x05\x01\x00"


def request(sock: socket.socket, name: bytes, port: int, command: int = 1) -> int:
    """Send a greeting and a request for the ATYP 3 C{name}; return the reply code."""
    sock.sendall(NO_AUTH)
    assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(
        bytes([5, command, 0, 3, len(name)]) + name + struct.pack("!H", port),
    )
    return rawsocks.read_reply(sock)[0]


def reply_for(server, name: bytes, port: int, command: int = 1) -> int:
    with rawsocks.open_socket(server.address) as sock:
        return request(sock, name, port, command)


def write_rules(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return str(path)


def test_hostile_names_never_pass_name_rules(start_server, tmp_path, echo_server) -> None:
    rules = write_rules(
        tmp_path,
        'default = "deny"\n[[rule]]\naction = "allow"\nnames = ["*.allowed.test"]\n',
    )
    server = start_server("--rules", rules)
    port = echo_server[1]
    started = time.monotonic()
    for name in (
        b"localhost\x00.allowed.test",
        b"127.0.0.1\x00.allowed.test",
        b"a" * 64 + b".allowed.test",
        b"bad\xff.allowed.test",
        "x\u2028y.allowed.test".encode(),
    ):
        assert reply_for(server, name, port) == 4, name  # host unreachable, at once
    assert time.monotonic() - started < 8, "an invalid name waited for --connect-timeout"
    log = server.log()
    assert "Unhandled" not in log and "Traceback" not in log


def test_unicode_spellings_meet_a_deny_rule(start_server, tmp_path, echo_server) -> None:
    rules = write_rules(
        tmp_path, 'default = "allow"\n[[rule]]\naction = "deny"\nnames = ["localhost"]\n'
    )
    server = start_server("--rules", rules)
    for spelling in ("ＬＯＣＡＬＨＯＳＴ", "local\u200bhost", "localhost。", "LocalHost."):
        assert reply_for(server, spelling.encode(), echo_server[1]) == 2, spelling


def test_the_unspecified_address_never_reaches_loopback(start_server, tmp_path, echo_server):
    rules = write_rules(
        tmp_path,
        'default = "allow"\n[[rule]]\naction = "deny"\n'
        'destinations = ["169.254.169.254/32", "127.0.0.0/8", "::1/128"]\n',
    )
    server = start_server("--rules", rules)
    port = echo_server[1]
    for name in (b"0", b"0.0.0.0", b"::", b"[::]", b"0x0", b"::ffff:0.0.0.0"):
        assert reply_for(server, name, port) == 2, name
    for host in ("0.0.0.0", "::", "::ffff:0.0.0.0", "64:ff9b::7f00:1"):
        with rawsocks.open_socket(server.address) as sock:
            sock.sendall(NO_AUTH)
            assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
            sock.sendall(b"\x05\x01\x00" + rawsocks.address_bytes(host, port))
            code = rawsocks.read_reply(sock)[0]
        assert code == 2, host
    assert "unspecified address" in server.log()


def test_names_cannot_forge_or_lose_access_log_lines(start_server, tmp_path) -> None:
    access_log = tmp_path / "access.log"
    server = start_server("--access-log", str(access_log))
    forged = b"x\n2026-12-01T20:00:00+0000 session 10.6.6.6:1 user=root CONNECT f.example:443"
    assert reply_for(server, forged, 443) == 4
    assert reply_for(server, b"bad\xff.test", 80) == 4
    lines = wait_until(
        lambda: [ln for ln in access_log.read_text().splitlines() if ln] or None,
        5,
        "the access log",
    )
    wait_until(lambda: len(access_log.read_text().splitlines()) >= 2, 5, "two lines")
    lines = access_log.read_text().splitlines()
    assert len(lines) == 2, lines
    assert all(" session 127.0.0.1:" in line for line in lines), lines
    assert all(line.isascii() and line.isprintable() for line in lines), lines
    assert "x\\x0a2026-12-01" in lines[0]


def test_a_name_that_is_not_utf8_still_leaves_a_session_line(start_server) -> None:
    server = start_server()
    assert reply_for(server, b"bad\xff.test", 80) == 4
    [line] = wait_until(server.session_lines, 5, "the session line")
    assert "bad\\xff.test" in line
    log = server.log()
    assert "\x1b" not in log and all(c.isprintable() or c == "\n" for c in log)


def test_failed_logins_name_the_escaped_username(start_server) -> None:
    server = start_server("--auth", "memory:alice:secret")
    with rawsocks.open_socket(server.address) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert rawsocks.recv_exact(sock, 2) == b"\x05\x02"
        user = b"mallory\r\n\x1b[2Jroot"
        sock.sendall(b"\x01" + bytes([len(user)]) + user + b"\x06hunter")
        assert rawsocks.recv_exact(sock, 2) == b"\x01\x01"
    wait_until(lambda: "authentication failed" in server.log(), 5, "the failure line")
    [line] = [ln for ln in server.log().splitlines() if "authentication failed for" in ln]
    assert "user=mallory\\x0d\\x0a\\x1b[2Jroot" in line
    assert "hunter" not in server.log()


def test_one_client_cannot_lock_out_the_others(start_server) -> None:
    server = start_server("--max-sessions-per-client", "2", "--max-clients", "20")
    silent = []
    try:
        for _ in range(30):
            try:
                silent.append(socket.create_connection(server.address, timeout=5))
            except ConnectionResetError:
                # Refused: reset as it was accepted, which a loaded machine
                # may report before connect() itself has returned.
                pass
        # Another client (127.0.0.2 stands in for another host) is served.
        other = socket.create_connection(server.address, timeout=5, source_address=("127.0.0.2", 0))
        with other:
            other.sendall(NO_AUTH)
            assert rawsocks.recv_exact(other, 2) == b"\x05\x00"
        wait_until(lambda: "--max-sessions-per-client" in server.log(), 5, "the refusal line")
        refusals = [ln for ln in server.log().splitlines() if "--max-sessions-per-client" in ln]
        assert len(refusals) == 1, "logged once per burst, not once per connection"
    finally:
        for sock in silent:
            sock.close()


def test_unix_socket_clients_follow_a_narrowed_allow_list(start_server, tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    server = start_server(
        "--port", f"unix:{path}", "--allow-client", "10.0.0.0/8", connect_to=(path,)
    )
    with rawsocks.open_socket(server.address) as sock:
        sock.sendall(NO_AUTH)
        assert rawsocks.recv_exact(sock, 2) == b"\x05\xff"


def test_udp_datagrams_to_the_unspecified_address_are_dropped(start_server) -> None:
    server = start_server()
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.settimeout(0.5)
    port = target.getsockname()[1]
    with rawsocks.open_socket(server.address) as control, target:
        control.sendall(NO_AUTH)
        assert rawsocks.recv_exact(control, 2) == b"\x05\x00"
        control.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
        code, relay_host, relay_port, _ = rawsocks.read_reply(control)
        assert code == 0
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with client:
            client.bind(("127.0.0.1", 0))
            for header in (
                b"\x00\x00\x00\x01\x00\x00\x00\x00" + struct.pack("!H", port),
                b"\x00\x00\x00\x03\x010" + struct.pack("!H", port),
                b"\x00\x00\x00\x03\x070.0.0.0" + struct.pack("!H", port),
            ):
                client.sendto(header + b"leak", (relay_host, relay_port))
            # A datagram that is allowed arrives, so the others had their chance.
            client.sendto(
                b"\x00\x00\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", port) + b"ok",
                (relay_host, relay_port),
            )
            assert target.recvfrom(100)[0] == b"ok"
            try:
                extra = target.recvfrom(100)[0]
            except TimeoutError:
                extra = None
            assert extra is None, extra
    [line] = wait_until(server.session_lines, 5, "the session line")
    assert "denied:3" in line


def test_bind_under_a_name_allow_list_admits_the_named_peer(start_server, tmp_path) -> None:
    rules = write_rules(
        tmp_path, 'default = "deny"\n[[rule]]\naction = "allow"\nnames = ["localhost"]\n'
    )
    server = start_server("--rules", rules)
    with rawsocks.open_socket(server.address) as sock:
        sock.sendall(NO_AUTH)
        assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x02\x00\x03\x09localhost\x00\x00")
        code, host, port, _ = rawsocks.read_reply(sock)
        assert code == 0
        with socket.create_connection((host, port), timeout=5) as peer:
            code, *_ = rawsocks.read_reply(sock)
            assert code == 0
            peer.sendall(b"from the peer")
            assert rawsocks.recv_exact(sock, 13) == b"from the peer"
