"""
The JSON-lines log of the real server: C{twistd -n --logger
socks5twist.logs.json_observer socks5}, one JSON object per line on standard
output, whatever a client sends.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from . import rawsocks
from .conftest import TWISTD, free_port, wait_until

Addr = tuple[str, int]


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    text = path.read_text()
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        lines.pop()  # a line still being written
    return [json.loads(line) for line in lines]


def test_json_log_has_one_record_per_line_with_the_session_facts(
    tmp_path: Path, echo_server: Addr
) -> None:
    port = free_port()
    out = tmp_path / "log.jsonl"
    with out.open("wb") as stdout:
        process = subprocess.Popen(
            [
                *TWISTD, "-n", "--pidfile=", "--logger=socks5twist.logs.json_observer",
                "socks5", "--port", f"tcp:{port}:interface=127.0.0.1",
                "--auth", "memory:alice:pw", "--shutdown-grace", "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(
            lambda: any(r["text"].startswith("listening on") for r in records(out)),
            20,
            "the server to listen",
        )
        address = ("127.0.0.1", port)
        sock, code = rawsocks.connect(address, *echo_server, credentials=(b"alice", b"pw"))
        assert code == 0
        sock.sendall(b"hello")
        assert rawsocks.recv_exact(sock, 5) == b"hello"
        sock.close()
        # A username that tries to end the record and forge another.
        forged = b'x"}\n{"level": "critical", "text": "forged'
        try:
            rawsocks.connect(address, *echo_server, credentials=(forged, b"no"))
            raise AssertionError("the login succeeded")
        except PermissionError:
            pass
        wait_until(
            lambda: len([r for r in records(out) if "session" in r]) >= 2, 5, "two session records"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)

    text = out.read_text()
    assert text.isascii() and "\x1b" not in text
    logged = records(out)
    assert not [r for r in logged if r["level"] in ("error", "critical")], logged
    assert not [r for r in logged if "Traceback" in r["text"]]
    connect, refused = [r["session"] for r in logged if "session" in r]
    assert connect["user"] == "alice" and connect["command"] == "CONNECT"
    assert connect["destination"] == "{}:{}".format(*echo_server)
    assert connect["up"] == 5 and connect["reply"] == "0x00" and connect["outcome"] == "closed"
    assert connect["relay"] in ("splice", "stream")
    assert refused["outcome"] == "authentication failed" and refused["user"] == "-"
    [failure] = [r for r in logged if r["text"].startswith("authentication failed for")]
    assert failure["level"] == "info"
    assert 'user=x"}\\x0a{"level":\\x20"critical",\\x20"text":\\x20"forged:' in failure["text"]
    # Each record has the same keys (no field came from the client).
    assert {tuple(sorted(r)) for r in logged if "session" not in r} == {
        ("level", "namespace", "text", "time")
    }
