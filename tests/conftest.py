"""
Fixtures for the integration tests: the real C{twistd -n socks5} in a
subprocess on a free loopback port, local origin servers, and the rule for
third-party clients (required in CI, skipped with a reason elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = bool(os.environ.get("CI"))
# The twistd of the interpreter running the tests (not whatever is on PATH).
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]


def require_tool(name: str) -> str:
    """The path of a client program; fails in CI when it is missing, skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: see .ci/run)"
        if IN_CI:
            pytest.fail(f"{message}; interop tests may not be skipped in CI")
        pytest.skip(message)
    return path


def require_module(name: str) -> Any:
    """Import a client library; fails in CI when it is missing, skips elsewhere."""
    try:
        return __import__(name)
    except ImportError:
        if IN_CI:
            pytest.fail(f"Python package {name} is missing; interop tests may not be skipped in CI")
        pytest.skip(f"Python package {name} is not installed (pip install -e '.[test]')")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll C{predicate} until it is true; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process C{pid} holds (to find them in /proc/net)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


class SocksServer:
    """A C{twistd -n socks5} process that this test started, and only that one."""

    def __init__(
        self,
        log_path: Path,
        args: list[str],
        connect_to: tuple[Any, ...],
        preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self.args = args
        self.address = connect_to
        command = [*TWISTD, "-n", "--pidfile=", f"--logfile={log_path}", "socks5", *args]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
            env=env,
        )
        self._wait_ready()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self) -> None:
        # The server logs "listening on" once every port is bound; probing
        # the port instead would add sessions to the log.
        def listening() -> bool:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise AssertionError(f"twistd socks5 exited: {output}\n{self.log()}")
            return "] listening on " in self.log()

        wait_until(listening, 20, "the server to listen")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def session_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if "] session " in line]

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., SocksServer]]:
    """
    Start C{twistd -n socks5 ARGS} on a free loopback port (unless ARGS name
    a port), in C{env} if given (else this process's environment).
    """
    started: list[SocksServer] = []

    def start(
        *args: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        connect_to: tuple[Any, ...] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> SocksServer:
        chosen = connect_to is None and port is None
        for attempt in range(3):
            argv = list(args)
            target = connect_to
            if target is None:
                number = port or free_port(host)
                if host == "::1":
                    argv = ["--port", f"tcp6:{number}:interface=\\:\\:1", *argv]
                else:
                    argv = ["--port", f"tcp:{number}:interface={host}", *argv]
                target = (host, number)
            log_path = tmp_path / f"twistd-{len(started)}-{attempt}.log"
            try:
                server = SocksServer(log_path, argv, target, preexec_fn, env)
            except AssertionError as e:
                # A free port can be taken by another process between
                # free_port() and twistd's bind: pick another one.
                if chosen and "Address already in use" in str(e) and attempt < 2:
                    continue
                raise
            started.append(server)
            return server
        raise AssertionError("unreachable")

    yield start
    for server in started:
        server.stop()
        log = server.log()
        assert "Traceback" not in log, f"the server logged a traceback:\n{log}"
        assert "Unhandled" not in log, f"the server logged an unhandled error:\n{log}"


@pytest.fixture
def socks_server(start_server: Callable[..., SocksServer]) -> SocksServer:
    """A server without authentication on 127.0.0.1."""
    return start_server()


class Blob:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sha256 = hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def blob() -> Blob:
    return Blob(os.urandom(3 * 1024 * 1024 + 17))


class _Handler(http.server.BaseHTTPRequestHandler):
    blob: bytes = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(self.blob)))
        self.end_headers()
        self.wfile.write(self.blob)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextlib.contextmanager
def http_server(host: str, data: bytes) -> Iterator[tuple[str, int]]:
    handler = type("Handler", (_Handler,), {"blob": data})
    cls = _V6Server if ":" in host else http.server.ThreadingHTTPServer
    server = cls((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield host, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def origin(blob: Blob) -> Iterator[tuple[str, int]]:
    """An HTTP server on 127.0.0.1 that serves the blob at every path."""
    with http_server("127.0.0.1", blob.data) as address:
        yield address


@pytest.fixture(scope="session")
def origin6(blob: Blob) -> Iterator[tuple[str, int]]:
    """The same on ::1."""
    with http_server("::1", blob.data) as address:
        yield address


class _DigestHandler(socketserver.BaseRequestHandler):
    """Echoes every byte back; on EOF, sends the SHA-256 of all it read and closes."""

    def handle(self) -> None:
        digest = hashlib.sha256()
        sock: socket.socket = self.request
        sock.settimeout(30)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                break
            digest.update(data)
            with contextlib.suppress(OSError):
                sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.sendall(b"SHA256:" + digest.hexdigest().encode())
            sock.shutdown(socket.SHUT_WR)


class _ThreadingTCP(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="session")
def echo_server() -> Iterator[tuple[str, int]]:
    server = _ThreadingTCP(("127.0.0.1", 0), _DigestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def kerberos_realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real MIT KDC and its realm for the whole session (L{tests.kerberos.Realm})."""
    from .kerberos import running_realm  # it imports this module's helpers

    yield from running_realm(tmp_path_factory.mktemp("kerberos"))
