"""
A real C{redis-server} for the tests (Debian package C{redis-server}, see
C{.ci/run}): started in the foreground on a free loopback port, without
persistence, stopped by its PID.  A test that needs it fails when C{CI} is
set and the program is missing, and is skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["RedisServer", "redis_server_program"]


class Unavailable(Exception):
    """redis-server (or the redis package) is missing: why, in one line."""


def redis_server_program() -> str:
    """The path of redis-server, or L{Unavailable}."""
    path = shutil.which("redis-server")
    if path is None:
        raise Unavailable("redis-server is not installed (Debian: redis-server, see .ci/run)")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise Unavailable("the redis package is missing (pip install -e '.[test]')") from None
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server this test started (and only that one), on 127.0.0.1."""

    def __init__(self, *extra: str) -> None:
        self.program = redis_server_program()
        self.port = _free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="redis-test-", suffix=".log")
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it answers (bounded)."""
        assert self.process is None
        self.process = subprocess.Popen(
            [
                self.program,
                "--save",
                "",
                "--appendonly",
                "no",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "no",
                *self.extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    answer = s.recv(100)
                if answer.startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(self._log.name, errors="replace") as f:
                    raise AssertionError(f"redis-server did not start:\n{f.read()}")
            time.sleep(0.02)

    def client(self, **options: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)

    def freeze(self) -> None:
        """SIGSTOP it: connections are accepted (by the kernel), nothing is answered."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT it: it answers again, its data as it was."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop it (by its PID) and wait for it to end (bounded)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a frozen one too
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def close(self) -> None:
        self.stop()
        self._log.close()
