"""
Operator features against the real server: rules with curl, names resolving
into denied networks, SIGHUP reloads under a running transfer, limits,
outgoing addresses, metrics scraped over HTTP, and SIGTERM's grace period.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from . import rawsocks
from .conftest import TWISTD, SocksServer, free_port, require_tool, wait_until

Addr = tuple[str, int]


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require_tool("curl"), "--silent", "--show-error", "--max-time", "20", *args],
        capture_output=True,
        timeout=60,
    )


def write_rules(path: Path, echo_port: int, origin_port: int) -> None:
    path.write_text(
        f"""
default = "allow"

[[rule]]
name = "the origin, on IPv4 only"
action = "allow"
destinations = ["127.0.0.1/32"]
ports = [{origin_port}]

[[rule]]
name = "the echo service"
action = "allow"
destinations = ["127.0.0.1/32"]
ports = [{echo_port}]

[[rule]]
name = "nothing else on loopback"
action = "deny"
destinations = ["127.0.0.0/8", "::1/128"]
"""
    )


def test_rules_with_curl(start_server, tmp_path: Path, origin: Addr, echo_server: Addr) -> None:
    rules = tmp_path / "rules.toml"
    write_rules(rules, echo_server[1], origin[1])
    server = start_server("--rules", str(rules))
    proxy = f"{server.address[0]}:{server.address[1]}"
    # Allowed: the origin, by address and by a name resolving to both ::1
    # (denied) and 127.0.0.1 (allowed): only the allowed address is used.
    ok = curl("--socks5-hostname", proxy, f"http://localhost:{origin[1]}/", "-o", "/dev/null")
    assert ok.returncode == 0, ok.stderr
    # Denied: another loopback port, by name and by address.
    other = free_port()
    for flag, host in (("--socks5-hostname", "localhost"), ("--socks5", "127.0.0.1")):
        denied = curl(flag, proxy, f"http://{host}:{other}/")
        assert denied.returncode == 97, denied
        assert b"(2)" in denied.stderr or b"not allowed by ruleset" in denied.stderr, denied.stderr
    log = wait_until(
        lambda: (
            server.log() if server.log().count("by rule #3 (nothing else on loopback)") >= 2 else ""
        ),
        5,
        "two denial lines",
    )
    assert f"-> 127.0.0.1:{origin[1]}" in log


def test_reload_changes_answers_without_dropping_a_transfer(
    start_server, tmp_path: Path, origin: Addr, echo_server: Addr
) -> None:
    rules = tmp_path / "rules.toml"
    write_rules(rules, echo_server[1], origin[1])
    server = start_server("--rules", str(rules))
    tunnel, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    tunnel.sendall(b"before")
    assert rawsocks.recv_exact(tunnel, 6) == b"before"
    # Deny the echo service from now on.
    rules.write_text(
        'default = "allow"\n[[rule]]\naction = "deny"\ndestinations = ["127.0.0.0/8"]\n'
    )
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in server.log(), 5, "the reload")
    tunnel.sendall(b"after")
    assert rawsocks.recv_exact(tunnel, 5) == b"after"
    assert rawsocks.connect(server.address, *echo_server)[1] == 2
    # A broken file leaves those rules in force, with one clear line.
    rules.write_text(
        'default = "allow"\n[[rule]]\naction = "deny"\ndestinations = ["127.0.0.1/8"]\n'
    )
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "NOT reloaded" in server.log(), 5, "the failed reload")
    [line] = [x for x in server.log().splitlines() if "NOT reloaded" in x]
    assert "line 4" in line and "host bits" in line
    assert rawsocks.connect(server.address, *echo_server)[1] == 2
    tunnel.sendall(b"still")
    assert rawsocks.recv_exact(tunnel, 5) == b"still"


def start_up_error(*args: str) -> str:
    """The output of C{twistd socks5 ARGS} that must refuse to start: one line."""
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "socks5", *args], capture_output=True, timeout=30
    )
    output = (result.stdout + result.stderr).decode().strip()
    assert result.returncode != 0
    assert output.count("\n") == 0 and "Traceback" not in output, output
    return output


def test_bad_rules_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('default = "allow"\n\n[[rule]]\naction = "allow"\nports = ["99999"]\n')
    output = start_up_error("--rules", str(rules))
    assert f"{rules}, line 5" in output and "ports" in output


def test_auth_skipped_for_the_office_network(start_server, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('default = "allow"\n[[auth]]\nclients = ["127.0.0.2/32"]\nmethod = "none"\n')
    server = start_server("--auth", "memory:alice:pw", "--rules", str(rules))
    office = socket.create_connection(server.address, timeout=5, source_address=("127.0.0.2", 0))
    office.sendall(b"\x05\x01\x00")
    assert rawsocks.recv_exact(office, 2) == b"\x05\x00"
    remote = socket.create_connection(server.address, timeout=5)
    remote.sendall(b"\x05\x02\x00\x02")
    assert rawsocks.recv_exact(remote, 2) == b"\x05\x02"


def test_limits_per_client_and_per_user(start_server, echo_server: Addr) -> None:
    server = start_server(
        "--auth", "memory:alice:pw", "--max-sessions-per-client", "2",
        "--max-sessions-per-user", "3",
    )  # fmt: skip
    creds = (b"alice", b"pw")
    held = [connect_from("127.0.0.1", server, echo_server, creds) for _ in range(2)]
    assert [code for _, code in held] == [0, 0]
    # A third session from the same IP is closed as it is accepted (reset;
    # on a loaded machine, connect() itself may already report the reset).
    try:
        third = socket.create_connection(server.address, timeout=5)
        third.sendall(b"\x05\x01\x02")
        assert third.recv(10) == b"", "the third session from one IP was not closed"
    except ConnectionResetError:
        pass
    # From another IP alice may hold one more session, and no more.
    held.append(connect_from("127.0.0.4", server, echo_server, creds))
    assert held[-1][1] == 0
    held.append(connect_from("127.0.0.5", server, echo_server, creds))
    assert held[-1][1] == 2
    log = server.log()
    assert "--max-sessions-per-client" in log and "--max-sessions-per-user" in log
    for sock, _ in held:
        sock.close()


def connect_from(
    source: str, server: SocksServer, echo: Addr, creds: tuple[bytes, bytes]
) -> tuple[socket.socket, int]:
    """Authenticate from C{source} and CONNECT to C{echo}; the socket and the reply code."""
    user, password = creds
    sock = socket.create_connection(server.address, timeout=5, source_address=(source, 0))
    auth = b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password
    sock.sendall(b"\x05\x01\x02" + auth)
    assert rawsocks.recv_exact(sock, 4) == b"\x05\x02\x01\x00"
    sock.sendall(b"\x05\x01\x00" + rawsocks.address_bytes(*echo))
    return sock, rawsocks.read_reply(sock)[0]


def test_outgoing_address(start_server, echo_server: Addr) -> None:
    server = start_server("--outgoing-address", "127.0.0.3")
    sock = rawsocks.open_socket(server.address)
    sock.sendall(b"\x05\x01\x00\x05\x01\x00" + rawsocks.address_bytes(*echo_server))
    assert rawsocks.recv_exact(sock, 2) == b"\x05\x00"
    code, host, _, _ = rawsocks.read_reply(sock)
    assert (code, host) == (0, "127.0.0.3")


def test_metrics_match_the_sessions_made(start_server, echo_server: Addr, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'default = "allow"\n[[rule]]\nname = "no port 9"\naction = "deny"\nports = [9]\n'
    )
    metrics_port = free_port()
    server = start_server(
        "--auth", "memory:alice:pw", "--rules", str(rules),
        "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1",
    )  # fmt: skip
    creds = (b"alice", b"pw")
    for _ in range(3):
        sock, code = rawsocks.connect(server.address, *echo_server, credentials=creds)
        assert code == 0
        sock.sendall(b"0123456789")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        assert reply.startswith(b"0123456789SHA256:") and len(reply) == 10 + 71
        sock.close()
    sock, code = rawsocks.connect(server.address, "127.0.0.1", free_port(), credentials=creds)
    assert code == 5
    sock, code = rawsocks.connect(server.address, "127.0.0.1", 9, credentials=creds)
    assert code == 2
    try:
        rawsocks.connect(server.address, *echo_server, credentials=(b"alice", b"wrong"))
    except PermissionError:
        pass
    held, code = rawsocks.connect(server.address, *echo_server, credentials=creds)
    held.sendall(b"abc")
    rawsocks.recv_exact(held, 3)
    wait_until(lambda: len(server.session_lines()) >= 6, 5, "six sessions to end")

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("socks5_sessions_ended_total", command="connect", reply="0x00") == 3
    assert value("socks5_sessions_ended_total", command="connect", reply="0x05") == 1
    assert value("socks5_sessions_ended_total", command="connect", reply="0x02") == 1
    assert value("socks5_sessions_started_total", command="connect") == 6
    assert value("socks5_sessions_active", command="connect") == 1
    assert value("socks5_auth_failures_total") == 1
    assert value("socks5_rule_denials_total", rule="#1 (no port 9)") == 1
    assert value("socks5_bytes_total", direction="up") == 33
    assert value("socks5_bytes_total", direction="down") == 3 * 81 + 3
    assert value("socks5_handshake_seconds_count") == 6
    assert "alice" not in text and "127.0.0.1" not in text
    # A scrape writes nothing to the server's log (no web access line).
    before = server.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        assert r.status == 200
    time.sleep(0.3)
    assert server.log() == before
    assert "GET /metrics" not in before and '"GET ' not in before, before
    held.close()


def test_sigterm_lets_a_transfer_finish_within_the_grace(start_server, echo_server: Addr) -> None:
    server = start_server("--shutdown-grace", "5")
    tunnel, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopped accepting" in server.log(), 5, "the server to stop accepting")
    try:
        socket.create_connection(server.address, timeout=2).close()
        raise AssertionError("still accepting after SIGTERM")
    except ConnectionRefusedError:
        pass
    for i in range(5):  # the transfer goes on
        tunnel.sendall(b"chunk %d" % i)
        assert rawsocks.recv_exact(tunnel, 7) == b"chunk %d" % i
        time.sleep(0.2)
    tunnel.close()
    server.process.wait(5)
    assert time.monotonic() - started < 4.5, (
        "the server waited for the grace after the last session"
    )
    assert "all sessions ended" in server.log()


def closed_by_server(sock: socket.socket) -> bool:
    """
    The server closed this connection with a FIN: a client reading sees the
    end of its stream (a reset would raise ConnectionResetError here).
    """
    return sock.recv(10) == b""


def busy_and_quiet_tunnels(server, echo_server: Addr) -> list[socket.socket]:
    """Two tunnels: one that has made round trips enough to move to the relay thread, one not."""
    busy, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    for i in range(8):
        busy.sendall(b"trip %d" % i)
        assert rawsocks.recv_exact(busy, 6) == b"trip %d" % i
    quiet, code = rawsocks.connect(server.address, *echo_server)
    assert code == 0
    return [busy, quiet]


def test_grace_expiry_and_a_second_sigterm_close_sessions_with_a_fin(
    start_server, echo_server: Addr
) -> None:
    server = start_server("--shutdown-grace", "1")
    tunnels = busy_and_quiet_tunnels(server, echo_server)
    server.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert all(closed_by_server(tunnel) for tunnel in tunnels)
    assert 0.5 < time.monotonic() - started < 4
    server.process.wait(5)
    assert "closing 2 sessions still open" in server.log()
    assert "resetting" not in server.log()
    assert len(server.session_lines()) == 2, server.log()

    second = start_server("--shutdown-grace", "60")
    tunnels = busy_and_quiet_tunnels(second, echo_server)
    second.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopped accepting" in second.log(), 5, "the server to stop accepting")
    second.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert all(closed_by_server(tunnel) for tunnel in tunnels)
    second.process.wait(5)
    assert time.monotonic() - started < 3
    assert len(second.session_lines()) == 2, second.log()


def test_access_log_shared_by_workers_rotated_by_sighup(
    start_server, echo_server: Addr, tmp_path: Path
) -> None:
    access = tmp_path / "access.log"
    server = start_server("--workers", "2", "--access-log", str(access))
    wait_until(lambda: server.log().count("] listening on ") >= 2, 15, "both processes to listen")

    def sessions(n: int, payload: bytes) -> None:
        for _ in range(n):
            tunnel, code = rawsocks.connect(server.address, *echo_server)
            assert code == 0
            tunnel.sendall(payload)
            assert rawsocks.recv_exact(tunnel, len(payload)) == payload
            tunnel.close()

    line = re.compile(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} session 127\.0\.0\.1:\d+ user=- CONNECT "
        rf"127\.0\.0\.1:{echo_server[1]} -> 127\.0\.0\.1:{echo_server[1]} .* up=\d+ down=\d+ "
    )
    sessions(40, b"first")

    def lines(path: Path, count: int) -> list[str]:
        found = path.read_text().splitlines() if path.exists() else []
        return found if len(found) >= count else []

    first = wait_until(lambda: lines(access, 40), 10, "40 lines in the access log")
    assert len(first) == 40 and all(line.match(x) for x in first), first
    assert all(" up=5 " in x for x in first)
    # The lines go to the access log only.
    assert server.session_lines() == []
    # Rotation: move the file away, SIGHUP, and new lines go to a new file.
    access.rename(tmp_path / "access.log.1")
    server.process.send_signal(signal.SIGHUP)
    time.sleep(1)  # the master and each worker reopen
    sessions(10, b"second!")
    second = wait_until(lambda: lines(access, 10), 10, "10 lines in the new access log")
    assert len(second) == 10 and all(" up=7 " in x for x in second), second
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 40


def test_unwritable_access_log_stops_start_up_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "no-such-directory" / "access.log"
    output = start_up_error("--access-log", str(path))
    assert f"--access-log {path}: No such file or directory" in output


def test_access_log_lines_pending_at_stop_are_written(
    start_server, echo_server: Addr, tmp_path: Path
) -> None:
    access = tmp_path / "access.log"
    server = start_server("--access-log", str(access), "--shutdown-grace", "0")
    held = []
    for _ in range(3):
        tunnel, code = rawsocks.connect(server.address, *echo_server)
        assert code == 0
        held.append(tunnel)
    for _ in range(5):
        tunnel, code = rawsocks.connect(server.address, *echo_server)
        assert code == 0
        tunnel.close()
    # Stop at once: the last lines wait up to 0.1 s for their batch, and the
    # held sessions are closed by the stop itself.
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(15)  # (twistd reports the SIGTERM as its exit status)
    lines = access.read_text().splitlines()
    assert len(lines) == 8, lines
    assert sum("(server shutting down)" in line for line in lines) >= 3, lines
    assert server.session_lines() == []
