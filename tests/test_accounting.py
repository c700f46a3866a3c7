"""
Accounting and quotas with the real C{twistd -n socks5}: a user with a small
quota cut off mid-transfer and refused afterwards, the used amount still
there after a restart (the same SQLite file, read with Python's C{sqlite3}
and the README's query), and a user removed from the password file whose
running session ends on SIGHUP.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import socketserver
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from socks5twist import rules
from socks5twist.limits import Quota

from . import rawsocks
from .conftest import TWISTD, free_port, wait_until
from .test_readme import blocks

QUOTA = 2 << 20  # 2 MiB a day
CHUNK = 64 << 10
PACE = 0.02  # seconds between chunks: about 3 MiB/s
SENT_AT_MOST = 16 << 20


def readme_queries() -> list[str]:
    """The README's queries for operators, one statement each."""
    _, language, text = blocks()["accounting-queries"]
    assert language == "sql"
    lines = [line for line in text.splitlines() if not line.startswith("--")]
    return [q.strip() for q in "\n".join(lines).split(";") if q.strip()]


def test_the_readme_quota_example_parses() -> None:
    _, language, text = blocks()["quota"]
    assert language == "toml"
    [limit] = rules.parse(text, "README.md").limits
    assert limit.quota == Quota(10 << 30, "month")


class _PacedSender(socketserver.BaseRequestHandler):
    """Sends CHUNK bytes every PACE seconds until the peer goes or SENT_AT_MOST is sent."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        chunk = b"q" * CHUNK
        with contextlib.suppress(OSError):
            for _ in range(SENT_AT_MOST // CHUNK):
                sock.sendall(chunk)
                time.sleep(PACE)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def paced_origin() -> Iterator[tuple[str, int]]:
    server = _Server(("127.0.0.1", 0), _PacedSender)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()


def connect_as(server: Any, target: tuple[str, int], user: tuple[bytes, bytes]) -> Any:
    """CONNECT to C{target} through C{server} as C{user} (name, password)."""
    host, port = target
    return rawsocks.connect(server.address, host, port, credentials=user)


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[int, float | None]:
    """Read until EOF; return the bytes read and when they first reached QUOTA."""
    received = 0
    reached: float | None = None
    while time.monotonic() < deadline:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        received += len(data)
        if reached is None and received >= QUOTA:
            reached = time.monotonic()
    return received, reached


def test_a_used_up_quota_cuts_the_transfer_refuses_with_x02_and_survives_a_restart(
    start_server, paced_origin, echo_server, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        'default = "allow"\n[[limit]]\nname = "small"\nusers = ["alice"]\nquota = "2MiB/day"\n'
    )
    db = tmp_path / "accounting.db"
    args = (
        "--auth",
        "memory:alice:a:bob:b",
        "--rules",
        str(rules),
        "--accounting",
        f"sqlite:{db}",
        "--allow-client",
        "127.0.0.1",
    )
    server = start_server(*args)
    # (This worktree's code runs: the line is its own.)
    wait_until(lambda: f"accounting in sqlite:{db}: 0 keys" in server.log(), 5, "accounting")
    alice, bob = (b"alice", b"a"), (b"bob", b"b")

    sock, code = connect_as(server, paced_origin, alice)
    with sock:
        assert code == 0
        received, reached = read_until_closed(sock, time.monotonic() + 20)
        ended = time.monotonic()
    assert QUOTA <= received < SENT_AT_MOST, received
    assert reached is not None and ended - reached < 2.0, ended - (reached or 0)
    why = f"quota of [[limit]] #1 (small) used: {QUOTA} B/day"
    wait_until(lambda: f"closing 1 session of user:alice: {why}" in server.log(), 5, "the line")

    sock, code = connect_as(server, echo_server, alice)
    sock.close()
    assert code == 2
    refused = r"refused CONNECT for user:alice from 127\.0\.0\.1:\d+: " + re.escape(why)
    assert re.search(refused, server.log())
    sock, code = connect_as(server, echo_server, bob)
    sock.close()
    assert code == 0

    server.stop()  # graceful: what was counted is written
    this_month, top_today, alices_days = readme_queries()
    with sqlite3.connect(db) as operator:
        month = operator.execute(this_month).fetchall()
        today = operator.execute(top_today).fetchall()
        days = operator.execute(alices_days).fetchall()
    assert [row[0] for row in today] == ["user:alice", "user:bob"]
    _, up, down, sessions = today[0]
    assert (up, sessions) == (0, 1)
    assert QUOTA <= down <= received + 4 * CHUNK, (down, received)
    assert month[0] == ("user:alice", round(down / (1 << 30), 3), 1)
    assert [(up, down, sessions) for _, up, down, sessions in days] == [today[0][1:]]

    again = start_server(*args)
    sock, code = connect_as(again, echo_server, alice)
    sock.close()
    assert code == 2, "the used amount was forgotten across the restart"


def test_a_user_removed_from_the_password_file_is_closed_on_sighup(
    start_server, echo_server, tmp_path: Path
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("alice:a\nbob:b\n")
    server = start_server("--auth", f"file:{passwd}")
    alice, _ = connect_as(server, echo_server, (b"alice", b"a"))
    bob, _ = connect_as(server, echo_server, (b"bob", b"b"))
    with alice, bob:
        alice.sendall(b"ping")
        assert rawsocks.recv_exact(alice, 4) == b"ping"
        passwd.write_text("bob:b\n")
        server.process.send_signal(signal.SIGHUP)
        alice.settimeout(5)
        assert alice.recv(100) == b""  # the end of alice's stream
        wait_until(
            lambda: (
                "closing 1 session of user:alice: no longer a user of the password files"
                in server.log()
            ),
            5,
            "the line",
        )
        bob.sendall(b"pong")
        assert rawsocks.recv_exact(bob, 4) == b"pong"  # bob goes on
    assert "closing 1 session of user:bob" not in server.log()


def test_a_store_that_cannot_be_used_stops_the_start_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-database.db"
    bad.write_bytes(b"this is not SQLite " * 10)
    port = f"tcp:{free_port()}:interface=127.0.0.1"
    result = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "socks5", "--port", port, "--accounting", f"sqlite:{bad}"],
        capture_output=True,
        timeout=30,
        text=True,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    why = f"cannot use sqlite:{bad}: file is not a database"
    assert f"twistd socks5: error: --accounting: {why}" in output
    assert "Traceback" not in output
