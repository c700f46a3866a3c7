"""
C{--auth file:PATH} with files made by the real C{htpasswd} and C{mkpasswd},
used by real clients through the real C{twistd -n socks5}.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from . import rawsocks
from .conftest import TWISTD, Blob, free_port, require_tool, wait_until


def htpasswd(path: Path, *args: str) -> None:
    """Add or replace an account with the real htpasswd (batch mode: -b)."""
    create = [] if path.exists() else ["-c"]
    subprocess.run(
        [require_tool("htpasswd"), *create, "-b", *args[:-2], str(path), *args[-2:]],
        check=True,
        capture_output=True,
        timeout=30,
    )


def mkpasswd(password: str) -> str:
    result = subprocess.run(
        [require_tool("mkpasswd"), "-m", "sha512crypt", password],
        check=True,
        capture_output=True,
        timeout=30,
        text=True,
    )
    return result.stdout.strip()


def curl(
    proxy: tuple[str, int], user: str, password: str, url: str
) -> subprocess.CompletedProcess[bytes]:
    host, port = proxy
    return subprocess.run(
        [
            require_tool("curl"),
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--socks5-hostname",
            f"{host}:{port}",
            "--proxy-user",
            f"{user}:{password}",
            url,
        ],
        capture_output=True,
        timeout=60,
    )


def auth_status(
    server: tuple[str, int], user: bytes, password: bytes, source: str | None = None
) -> bytes:
    """The RFC 1929 status the server answers to these credentials (from C{source})."""
    if source is None:
        sock = rawsocks.open_socket(server)
    else:
        sock = socket.create_connection(server, timeout=10, source_address=(source, 0))
    with sock:
        sock.sendall(b"\x05\x01\x02")
        assert rawsocks.recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        return rawsocks.recv_exact(sock, 2)


def test_htpasswd_and_mkpasswd_hashes_let_curl_through(
    start_server, origin, blob: Blob, tmp_path: Path
) -> None:
    passwords = tmp_path / "passwd"
    htpasswd(passwords, "-B", "alice", "bcrypt:pw")
    htpasswd(passwords, "-5", "bob", "sha512 pw")
    htpasswd(passwords, "-2", "erin", "sha256 pw")
    with passwords.open("a") as f:
        f.write(f"# made by mkpasswd\ncarol:{mkpasswd('crypt pw')}\ndave:plain:pw\n")
    content = passwords.read_text()
    assert "$2y$" in content and "$6$" in content and "$5$" in content
    server = start_server("--auth", f"file:{passwords}")
    url = f"http://{origin[0]}:{origin[1]}/"
    for user, password in (
        ("alice", "bcrypt:pw"),
        ("bob", "sha512 pw"),
        ("erin", "sha256 pw"),
        ("carol", "crypt pw"),
        ("dave", "plain:pw"),
    ):
        good = curl(server.address, user, password, url)
        assert good.returncode == 0, (user, good.stderr)
        assert hashlib.sha256(good.stdout).hexdigest() == blob.sha256
        bad = curl(server.address, user, password + "x", url)
        assert bad.returncode == 97, (user, bad)  # curl: proxy handshake failed
    # RFC 1929: a non-zero status, then the server closes.
    assert auth_status(server.address, b"alice", b"wrong") == b"\x01\x01"
    assert auth_status(server.address, b"nobody", b"bcrypt:pw") == b"\x01\x01"
    assert auth_status(server.address, b"alice", b"bcrypt:pw") == b"\x01\x00"
    for secret in ("bcrypt:pw", "sha512 pw", "crypt pw", "plain:pw"):
        assert secret not in server.log()


def start_with(passwords: Path) -> subprocess.CompletedProcess[str]:
    """Run C{twistd socks5 --auth file:PASSWORDS}, expected to stop at start-up."""
    return subprocess.run(
        [
            *TWISTD,
            "-n",
            "--pidfile=",
            "socks5",
            "--port",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--auth",
            f"file:{passwords}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_file_stops_the_start_naming_the_line(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("alice:fine\n# ok\nbob:\n")
    result = start_with(passwords)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"twistd socks5: error: --auth file: {passwords}, line 3: empty password" in output
    assert "fine" not in output
    assert "Traceback" not in output


def test_apache_md5_is_refused_at_start_up(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    htpasswd(passwords, "-m", "alice", "md5 pw")  # htpasswd's default: $apr1$
    result = start_with(passwords)
    assert result.returncode != 0
    assert "line 1: the password is an Apache MD5 hash" in result.stderr
    assert "htpasswd -B" in result.stderr


def test_sighup_picks_up_a_new_user_and_a_broken_file_keeps_the_old_ones(
    start_server, tmp_path: Path
) -> None:
    passwords = tmp_path / "passwd"
    htpasswd(passwords, "-B", "alice", "a pw")
    server = start_server("--auth", f"file:{passwords}")
    assert auth_status(server.address, b"dave", b"d pw") == b"\x01\x01"
    htpasswd(passwords, "-B", "dave", "d pw")
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "passwords reloaded" in server.log(), 10, "the reload")
    assert auth_status(server.address, b"dave", b"d pw") == b"\x01\x00"
    assert auth_status(server.address, b"alice", b"a pw") == b"\x01\x00"

    with passwords.open("a") as f:
        f.write("eve\n")  # no ':' on line 3
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "passwords NOT reloaded" in server.log(), 10, "the failed reload")
    assert f"{passwords}, line 3" in server.log()
    assert auth_status(server.address, b"dave", b"d pw") == b"\x01\x00"
    assert auth_status(server.address, b"alice", b"a pw") == b"\x01\x00"
    assert server.process.poll() is None


def test_big_file_and_failed_logins_do_not_stall_other_greetings(
    start_server, tmp_path: Path
) -> None:
    passwords = tmp_path / "passwd"
    htpasswd(passwords, "-B", "alice", "a pw")
    alice = passwords.read_bytes()
    bcrypt_hash = alice.split(b":", 1)[1].strip()
    with passwords.open("wb") as f:
        f.write(alice)
        f.writelines(b"user%d:%s\n" % (i, bcrypt_hash) for i in range(300_000))
    server = start_server("--auth", f"file:{passwords}")

    stop = threading.Event()
    failures: list[bytes] = []

    def fail_logins() -> None:
        while not stop.is_set():
            try:
                failures.append(auth_status(server.address, b"user7", b"wrong"))
            except OSError:
                pass

    floods = [threading.Thread(target=fail_logins, daemon=True) for _ in range(8)]
    for t in floods:
        t.start()
    try:
        wait_until(lambda: len(failures) >= 4, 30, "failed logins under way")
        waits = []
        # Another client (127.0.0.2 stands in for another host): the
        # flooding address has its 8 logins in progress and no more.
        for _ in range(5):
            started = time.monotonic()
            with socket.create_connection(
                server.address, timeout=10, source_address=("127.0.0.2", 0)
            ) as sock:
                sock.sendall(b"\x05\x01\x02")
                assert rawsocks.recv_exact(sock, 2) == b"\x05\x02"
            waits.append(time.monotonic() - started)
        assert auth_status(server.address, b"alice", b"a pw", "127.0.0.2") == b"\x01\x00"
    finally:
        stop.set()
        for t in floods:
            t.join(30)
    assert set(failures) == {b"\x01\x01"}
    # Generous: the greeting is answered while hashes run, not after them all.
    print(f"{len(failures)} failed logins; greetings answered in {waits}")
    assert max(waits) < 5, waits


def test_sighup_reloads_the_file_in_every_worker(start_server, tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("alice:a pw\n")
    server = start_server("--auth", f"file:{passwords}", "--workers", "2")
    wait_until(lambda: "(inherited)" in server.log(), 20, "the worker to listen")
    passwords.write_text("alice:a pw\ndave:d pw\n")

    def both_reloaded() -> bool:
        # A worker counts as ready when it says it listens, a moment before
        # its SIGHUP handler is in place: signal again until both answer.
        server.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        return server.log().count("passwords reloaded") >= 2 and "worker[" in "".join(
            line for line in server.log().splitlines() if "passwords reloaded" in line
        )

    wait_until(both_reloaded, 15, "both processes to reload")
    # Whichever process takes each connection, dave is known.
    for _ in range(8):
        assert auth_status(server.address, b"dave", b"d pw") == b"\x01\x00"
