"""
Third-party proxies started by the tests, on free loopback ports:
microsocks (Debian C{microsocks}) and Dante (Debian C{dante-server}, run as
root), SOCKS5 servers, and tinyproxy (Debian C{tinyproxy}), an HTTP proxy
that takes CONNECT.  Each is stopped by the PID the test started; a missing
program fails the test under CI and skips it elsewhere
(L{conftest.require_tool}).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import IN_CI, free_port, require_tool, wait_until


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@contextlib.contextmanager
def _running(command: list[str], port: int) -> Iterator[tuple[str, int]]:
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise AssertionError(f"{command[0]} exited: {output}")
            return _listening("127.0.0.1", port)

        wait_until(ready, 10, f"{command[0]} to listen")
        yield "127.0.0.1", port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdout:
            process.stdout.close()


@contextlib.contextmanager
def microsocks(
    user: str | None = None, password: str | None = None, bind: str | None = None
) -> Iterator[tuple[str, int]]:
    """microsocks on 127.0.0.1 (C{-u}/C{-P}: RFC 1929; C{-b}: its outgoing address)."""
    path = require_tool("microsocks")
    port = free_port()
    command = [path, "-i", "127.0.0.1", "-p", str(port)]
    if user is not None and password is not None:
        command += ["-u", user, "-P", password]
    if bind is not None:
        command += ["-b", bind]
    with _running(command, port) as address:
        yield address


@contextlib.contextmanager
def dante(workdir: Path, blocked_port: int | None = None) -> Iterator[tuple[str, int]]:
    """Dante's danted on 127.0.0.1, no authentication; C{blocked_port}: a socks block rule."""
    path = require_tool("danted")
    if os.geteuid() != 0:
        message = "danted needs root here"
        if IN_CI:
            pytest.fail(f"{message}; interop tests may not be skipped in CI")
        pytest.skip(message)
    port = free_port()
    block = ""
    if blocked_port is not None:
        block = f"socks block {{ from: 0.0.0.0/0 to: 127.0.0.1/32 port = {blocked_port} }}\n"
    conf = workdir / f"danted-{port}.conf"
    conf.write_text(
        f"logoutput: {workdir / f'danted-{port}.log'}\n"
        f"internal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n"
        "clientmethod: none\nsocksmethod: none\nuser.privileged: root\n"
        "user.unprivileged: nobody\n"
        "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
        f"{block}"
        "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
    )
    pidfile = workdir / f"danted-{port}.pid"
    with _running([path, "-f", str(conf), "-p", str(pidfile)], port) as address:
        yield address


@contextlib.contextmanager
def tinyproxy(
    workdir: Path,
    user: str | None = None,
    password: str | None = None,
    bind: str | None = None,
    connect_ports: tuple[int, ...] = (),
) -> Iterator[tuple[str, int]]:
    """
    tinyproxy on 127.0.0.1 in the foreground, with a configuration of its
    own: Basic authentication (C{user}, C{password}), its outgoing address
    (C{bind}), and the only ports CONNECT may reach (C{connect_ports}; none:
    any port; others are refused with 403).
    """
    path = require_tool("tinyproxy")
    port = free_port()
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 10",
        "MaxClients 50",
        "Allow 127.0.0.0/8",
        "LogLevel Info",
        f'LogFile "{workdir / f"tinyproxy-{port}.log"}"',
    ]
    if user is not None and password is not None:
        lines.append(f"BasicAuth {user} {password}")
    if bind is not None:
        lines.append(f"Bind {bind}")
    lines += [f"ConnectPort {p}" for p in connect_ports]
    conf = workdir / f"tinyproxy-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    with _running([path, "-d", "-c", str(conf)], port) as address:
        yield address
